"""Batches: padding (collate), ATL length-bucketed batches, and BTL (binary token labels).

ATL ("all token labels") is ordinary training: each batch keeps all its labels and is scored once.

BTL (binary token labels) turns each batch into K copies, one per entity type c, in which only c
is kept against ``O``. With the canonical label list ``["O", "B-Dose", "I-Dose", "B-Drug", "I-Drug"]``
the targets ``[O, B-Drug, I-Drug, O, B-Dose] = [0, 3, 4, 0, 1]`` give

    mode           copy "Dose"                              copy "Drug"
    other_to_o     [0, 0, 0, 0, 1]    (default)             [0, 3, 4, 0, 0]
    ignore         [0, -100, -100, 0, 1]                    [0, 3, 4, 0, -100]
    binary         [0, 0, 0, 0, 1] over columns [0, 1, 2]   [0, 1, 2, 0, 0] over columns [0, 3, 4]

and the batch's loss combines the K copy losses (mean or sum). ``btl_naive_loss`` runs the model
once per copy, as the paper does (K forwards, each with its own dropout masks); ``btl_fused_loss``
runs it once and scores all K copies on the same logits. Without dropout they are equal, loss and
gradients; with dropout they differ only through the masks. docs/btl.md explains all of it.

Sentence-level resampling (``[sampler] name = "resample"``, Wang & Wang 2022) is ATL over a
training set in which each sentence appears ``sentence_repeats(tags, method)`` times, more often
the more (and the rarer) entity tokens it holds; docs/losses.md, "Sentence-level resampling".
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from bertlab.losses import IGNORE_INDEX, TokenLoss

BTL_MODES = ("other_to_o", "ignore", "binary")


# ---------------------------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------------------------

def _field(item, name: str):
    """item.name for Window-like objects, item[name] for dicts; None when absent."""
    if isinstance(item, dict):
        return item.get(name)
    return getattr(item, name, None)


# On CUDA, batches are padded to a multiple of this by default (``pad_multiple``). Measured on an
# H200 (docs/performance.md, "bf16 and CUDA"): under bf16 autocast the first step at each new batch
# width costs 0.1-0.4 s (fp32 steps: nothing extra), and MACCROBAT's unpadded batches come in 72
# widths; 8 leaves 12. Once every width has been seen, padded and unpadded steps cost the same.
CUDA_PAD_MULTIPLE = 8


def pad_multiple(device: torch.device | str, setting: int = 0) -> int:
    """The multiple that batch widths are padded to: ``setting`` when it is > 0, else the device's
    choice, ``CUDA_PAD_MULTIPLE`` on CUDA and 1 (the longest row, no extra padding) elsewhere."""
    if setting < 0:
        raise ValueError(f"pad_to_multiple_of must be >= 0 (0 = the device's choice), got {setting}")
    if setting:
        return setting
    return CUDA_PAD_MULTIPLE if torch.device(device).type == "cuda" else 1


def padded_width(width: int, multiple: int) -> int:
    """``width`` rounded up to a multiple of ``multiple`` (the width ``collate`` pads a batch to)."""
    return -(-width // multiple) * multiple


def collate(items: Sequence, pad_token_id: int = 0, pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Pad a list of windows to the longest one: the batch dict of docs/architecture.md.

    items: ``Window`` objects or dicts with ``input_ids``, ``labels`` (optional: missing or None
    gives all -100) and ``token_type_ids`` (optional: zeros). Returns int64 tensors ``input_ids``,
    ``attention_mask`` (1 = real token), ``token_type_ids`` and ``labels`` (-100 = ignored, padding
    included), all ``[B, T]`` with T the longest row (dynamic padding) rounded up to a multiple of
    ``pad_to_multiple_of`` (transformers' ``DataCollatorForTokenClassification`` option).
    """
    if len(items) == 0:
        raise ValueError("collate: got an empty list of items")
    if pad_to_multiple_of < 1:
        raise ValueError(f"collate: pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    rows = [torch.as_tensor(_field(it, "input_ids"), dtype=torch.long).reshape(-1) for it in items]
    batch_size, width = len(rows), max(len(r) for r in rows)
    width = padded_width(width, pad_to_multiple_of)
    out = {
        "input_ids": torch.full((batch_size, width), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((batch_size, width), dtype=torch.long),
        "token_type_ids": torch.zeros((batch_size, width), dtype=torch.long),
        "labels": torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long),
    }
    for b, (item, ids) in enumerate(zip(items, rows)):
        n = len(ids)
        out["input_ids"][b, :n] = ids
        out["attention_mask"][b, :n] = 1
        for key in ("token_type_ids", "labels"):
            value = _field(item, key)
            if value is not None:
                value = torch.as_tensor(value, dtype=torch.long).reshape(-1)
                if len(value) != n:
                    raise ValueError(f"collate: item {b} has {n} input_ids but {len(value)} {key}")
                out[key][b, :n] = value
    return out


# ---------------------------------------------------------------------------------------------
# ATL batches: shuffled, length-bucketed
# ---------------------------------------------------------------------------------------------

def length_bucketed_batches(lengths: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                            bucket_size_multiplier: int = 50, drop_last: bool = False) -> list[list[int]]:
    """Batches of item indices whose rows have similar lengths, so dynamic padding wastes little.

    With shuffle: shuffle all indices (seeded), cut them into buckets of
    ``batch_size * bucket_size_multiplier``, sort each bucket by length, cut it into batches, and
    shuffle the order of the batches. Batches are random across the data set but homogeneous in
    length. Deterministic given ``seed``; pass e.g. ``seed + epoch`` for a new order every epoch.
    Without shuffle: plain order, ``[0..batch_size), [batch_size..2*batch_size), ...``.

    drop_last drops the one incomplete batch (buckets are whole multiples of batch_size, so only
    the last bucket can end with one). Returns a list of lists of indices into ``lengths``.
    """
    if batch_size < 1 or bucket_size_multiplier < 1:
        raise ValueError(f"batch_size ({batch_size}) and bucket_size_multiplier "
                         f"({bucket_size_multiplier}) must be >= 1")
    n = len(lengths)
    if not shuffle:
        batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    else:
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        lengths_arr = np.asarray(lengths)
        bucket = batch_size * bucket_size_multiplier
        batches = []
        for start in range(0, n, bucket):
            chunk = order[start:start + bucket]
            chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
            batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if shuffle:
        batches = [batches[i] for i in np.random.default_rng(seed).permutation(len(batches))]
    return batches


def token_budget_batches(lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                         bucket_size: int = 10_000) -> list[list[int]]:
    """Batches whose padded size ``len(batch) * max length in batch`` stays <= ``max_tokens``.

    Same bucketing as ``length_bucketed_batches`` (shuffle, sort inside buckets of ``bucket_size``
    items, shuffle batches), but the batch size varies: many short rows or few long ones. A row
    longer than max_tokens gets a batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    rng = np.random.default_rng(seed)
    n = len(lengths)
    order = rng.permutation(n) if shuffle else np.arange(n)
    lengths_arr = np.asarray(lengths)
    batches = []
    for start in range(0, n, bucket_size):
        chunk = order[start:start + bucket_size]
        if shuffle:
            chunk = chunk[np.argsort(lengths_arr[chunk], kind="stable")]
        current, longest = [], 0
        for i in chunk.tolist():
            new_longest = max(longest, int(lengths_arr[i]))
            if current and (len(current) + 1) * new_longest > max_tokens:
                batches.append(current)
                current, new_longest = [], int(lengths_arr[i])
            current.append(i)
            longest = new_longest
        if current:
            batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_stats(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> dict:
    """How many token slots dynamic padding wastes for these batches.

    Each batch is padded to its longest row, so it costs ``len(batch) * max(lengths)`` slots.
    Returns ``{"real_tokens", "padded_tokens" (all slots), "padding_tokens" (wasted slots),
    "padding_fraction" (padding_tokens / padded_tokens, 0..1), "num_batches"}``.
    """
    real = padded = 0
    for batch in batches:
        row_lengths = [int(lengths[i]) for i in batch]
        real += sum(row_lengths)
        padded += len(row_lengths) * max(row_lengths, default=0)
    return {"real_tokens": real, "padded_tokens": padded, "padding_tokens": padded - real,
            "padding_fraction": (padded - real) / padded if padded else 0.0, "num_batches": len(batches)}


# ---------------------------------------------------------------------------------------------
# BTL: which labels belong to which entity type
# ---------------------------------------------------------------------------------------------

def entity_types(label_list: Sequence[str]) -> list[str]:
    """Entity types in order of first appearance: ``["O", "B-A", "I-A", "B-B"] -> ["A", "B"]``.

    Labels are ``"O"`` or ``"<prefix>-<type>"`` (IOB2's B-/I-, also E-/S- etc.); a type may have
    only some prefixes (e.g. only ``B-``).
    """
    return list(_label_info(tuple(label_list))[1])


@functools.lru_cache(maxsize=64)
def _label_info(label_list: tuple[str, ...]) -> tuple[int, tuple[str, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(id of O, entity types, type index of each label id (-1 for O), label ids of each type).

    Cached: the training loop asks for it every batch with the same label list.
    """
    if "O" not in label_list:
        raise ValueError(f"BTL needs an 'O' label in the label list, got {list(label_list)[:5]}...")
    types: list[str] = []
    type_of = []
    for label in label_list:
        if label == "O":
            type_of.append(-1)
            continue
        if "-" not in label:
            raise ValueError(f"label {label!r} is neither 'O' nor '<prefix>-<type>' (e.g. 'B-Drug')")
        t = label.split("-", 1)[1]
        if t not in types:
            types.append(t)
        type_of.append(types.index(t))
    ids_of_type = tuple(tuple(i for i, t in enumerate(type_of) if t == c) for c in range(len(types)))
    return label_list.index("O"), tuple(types), tuple(type_of), ids_of_type


def _outside_id(label_list: Sequence[str]) -> int:
    return _label_info(tuple(label_list))[0]


def _type_of_label(label_list: Sequence[str]) -> torch.Tensor:
    """[C] int64: the entity-type index of each label id, -1 for O."""
    return torch.tensor(_label_info(tuple(label_list))[2])


def _type_index(class_index: int | str, label_list: Sequence[str]) -> int:
    types = _label_info(tuple(label_list))[1]
    if isinstance(class_index, str):
        if class_index not in types:
            raise ValueError(f"entity type {class_index!r} is not in the label list (types: {list(types)})")
        return types.index(class_index)
    if not 0 <= class_index < len(types):
        raise ValueError(f"class_index={class_index} out of range: the label list has {len(types)} types")
    return int(class_index)


def btl_columns(class_index: int | str, label_list: Sequence[str]) -> list[int]:
    """Label ids of a "binary" copy's softmax: ``[O] + the labels of type c`` in label-list order.

    class_index: the type's index in ``entity_types(label_list)`` or its name. For
    ``["O", "B-A", "I-A", "B-B", "I-B"]`` and type 1 ("B") this is ``[0, 3, 4]``; a type that has
    only ``B-`` gives two columns.
    """
    o_id, _, _, ids_of_type = _label_info(tuple(label_list))
    return [o_id, *ids_of_type[_type_index(class_index, label_list)]]


def btl_targets(labels: torch.Tensor, class_index: int | str, label_list: Sequence[str],
                mode: str = "other_to_o", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The targets of the BTL copy that keeps entity type c against O. Same shape as ``labels``.

    labels: ``[B, T]`` or ``[N]`` label ids, a tensor or a list (``ignore_index`` stays ignored); the
    result is a tensor. Labels of type c and O
    are kept; labels of every other type become, by mode:
      "other_to_o"  O (the paper's copies; the default)
      "ignore"      ignore_index (the copy says nothing about those tokens)
      "binary"      O, and all ids are remapped to positions in ``btl_columns(c, label_list)``
                    (0 = O, 1 = B-c, 2 = I-c): score them against ``logits[..., btl_columns(...)]``.
    """
    if mode not in BTL_MODES:
        raise ValueError(f"BTL mode={mode!r}, expected one of {BTL_MODES}")
    labels = torch.as_tensor(labels)
    c = _type_index(class_index, label_list)
    type_of = _type_of_label(label_list).to(labels.device)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    label_type = type_of[safe]
    other = valid & (label_type >= 0) & (label_type != c)
    o_id = _outside_id(label_list)
    if mode == "ignore":
        return torch.where(other, torch.full_like(labels, ignore_index), labels)
    targets = torch.where(other, torch.full_like(labels, o_id), labels)
    if mode == "binary":
        position = torch.zeros(len(label_list), dtype=labels.dtype, device=labels.device)
        columns = btl_columns(c, label_list)
        position[torch.tensor(columns, device=labels.device)] = torch.arange(len(columns), device=labels.device,
                                                                           dtype=labels.dtype)
        targets = torch.where(valid, position[torch.where(valid, targets, torch.zeros_like(targets))], labels)
    return targets


def _copy_types(labels: torch.Tensor, label_list: Sequence[str], classes, ignore_index: int) -> list[int]:
    """Type indices that get a copy: "present" (types with a token in the batch) or "all"."""
    num_types = len(entity_types(label_list))
    if classes == "all":
        return list(range(num_types))
    if classes != "present":
        raise ValueError(f"BTL classes={classes!r}, expected 'present' or 'all'")
    ids = torch.unique(labels[labels != ignore_index]).cpu()
    type_of = _type_of_label(label_list)
    return sorted({int(t) for t in type_of[ids].tolist() if t >= 0})


def _combine(copy_losses: torch.Tensor, combine: str) -> torch.Tensor:
    if combine == "mean":
        return copy_losses.mean()
    if combine == "sum":
        return copy_losses.sum()
    raise ValueError(f"BTL combine={combine!r}, expected 'mean' or 'sum'")


def binary_token_label_batches(batch: dict, label_list: Sequence[str], mode: str = "other_to_o",
                               classes: str = "present") -> list[tuple[str, dict, list[int] | None]]:
    """The K copies of a batch, literally: ``[(type name, batch with BTL labels, columns), ...]``.

    ``columns`` is ``btl_columns(c)`` in "binary" mode (slice the logits with it) and None otherwise.
    A batch without any entity (classes="present") gives one copy, the batch itself, named "" and
    scored over all columns: every BTL copy of it would be the same all-O batch.
    """
    if mode not in BTL_MODES:
        raise ValueError(f"BTL mode={mode!r}, expected one of {BTL_MODES}")
    types = entity_types(label_list)
    copies = []
    for c in _copy_types(batch["labels"], label_list, classes, IGNORE_INDEX):
        copy = dict(batch, labels=btl_targets(batch["labels"], c, label_list, mode))
        copies.append((types[c], copy, btl_columns(c, label_list) if mode == "binary" else None))
    return copies or [("", batch, None)]


# ---------------------------------------------------------------------------------------------
# BTL losses: naive (K forward passes) and fused (one forward pass)
# ---------------------------------------------------------------------------------------------

def btl_naive_loss(model: torch.nn.Module, batch: dict, label_list: Sequence[str], loss: TokenLoss,
                   mode: str = "other_to_o", classes: str = "present",
                   combine: str = "mean") -> tuple[torch.Tensor, dict]:
    """BTL as the paper does it: build the K copies and run the model on each (K forwards, ~K× cost).

    batch: the dict from ``collate``; loss: a ``TokenLoss`` (``losses.build_loss``, or a subclass
    with its own ``per_token``). Each copy is scored by ``loss.per_token`` (in "binary" mode on
    the copy's columns {O, B-c, I-c}, named by ``columns``) and reduced over that copy's tokens
    with ``loss.reduce``; copies combine by "mean" or "sum".

    Each forward draws its own dropout masks, so in train mode the copies see different networks;
    that, and only that, makes it differ from ``btl_fused_loss``.
    Returns ``(loss, info)`` with info ``{"classes": [type per copy], "copy_losses": [K] detached}``.
    """
    names, losses = [], []
    for name, copy, columns in binary_token_label_batches(batch, label_list, mode, classes):
        logits = model(copy["input_ids"], copy["attention_mask"], copy.get("token_type_ids"))
        logits, targets = logits.reshape(-1, logits.shape[-1]), copy["labels"].reshape(-1)
        cols = None
        if columns is not None:
            cols = torch.tensor(columns, device=logits.device)
            logits = logits[:, cols]
        token_loss, token_weight = loss.per_token(logits, targets, cols)
        losses.append(loss.reduce(token_loss, token_weight, targets))
        names.append(name)
    copy_losses = torch.stack(losses)
    return _combine(copy_losses, combine), {"classes": names, "copy_losses": copy_losses.detach()}


def btl_fused_loss(logits: torch.Tensor, labels: torch.Tensor, label_list: Sequence[str], loss: TokenLoss,
                   mode: str = "other_to_o", classes: str = "present",
                   combine: str = "mean") -> tuple[torch.Tensor, dict]:
    """BTL from one forward pass: the K copy losses are all computed from the same logits.

    logits ``[B, T, C]`` (or ``[N, C]``), labels ``[B, T]`` (or ``[N]``); other arguments and the
    result as in ``btl_naive_loss``, which it equals (loss and gradients) when the model is
    deterministic (eval mode or dropout 0). In train mode all copies share one dropout mask.

    All copies are scored with one or two ``loss.per_token`` calls: in "other_to_o"/"ignore" a
    token's target in any copy is either its own label, O, or ignored, so two per-token loss
    vectors (own label, O) from one call give the whole ``[K, N]`` loss matrix by selection; in
    "binary" the logits are gathered to ``[K, N, 3]`` (each copy's columns, passed as ``columns``)
    and scored at once. The extra cost over ATL is O(N·C + K·N), independent of the model.
    """
    if mode not in BTL_MODES:
        raise ValueError(f"BTL mode={mode!r}, expected one of {BTL_MODES}")
    num_classes = logits.shape[-1]
    if num_classes != len(label_list):
        raise ValueError(f"btl_fused_loss: logits have {num_classes} classes, the label list {len(label_list)}")
    logits, labels = logits.reshape(-1, num_classes), labels.reshape(-1)
    types = entity_types(label_list)
    copy_types = _copy_types(labels, label_list, classes, IGNORE_INDEX)
    if not copy_types:  # no entity in the batch: its only copy is the batch itself (see binary_token_label_batches)
        token_loss, token_weight = loss.per_token(logits, labels)
        value = loss.reduce(token_loss, token_weight, labels)
        return value, {"classes": [""], "copy_losses": value.detach().reshape(1)}
    if mode == "binary":
        copy_losses = _fused_binary(logits, labels, copy_types, label_list, loss)
    else:
        copy_losses = _fused_full_softmax(logits, labels, copy_types, label_list, loss, mode)
    return _combine(copy_losses, combine), {"classes": [types[c] for c in copy_types],
                                            "copy_losses": copy_losses.detach()}


def _fused_full_softmax(logits, labels, copy_types, label_list, loss: TokenLoss, mode) -> torch.Tensor:
    """[K] copy losses for "other_to_o" / "ignore": select from the own-label and O losses."""
    ignore = loss.ignore_index
    valid = labels != ignore
    o_id = _outside_id(label_list)
    as_outside = torch.where(valid, torch.full_like(labels, o_id), labels)
    # row 0: every token scored against its own label; row 1: against O (one call for both)
    token_loss, token_weight = loss.per_token(logits, torch.stack([labels, as_outside]))
    label_type = _type_of_label(label_list).to(labels.device)[torch.where(valid, labels, torch.zeros_like(labels))]
    copy_types_t = torch.tensor(copy_types, device=labels.device)
    keeps_own = valid & ((label_type == -1) | (label_type == copy_types_t[:, None]))     # [K, N]: O or type c
    if mode == "other_to_o":
        copy_loss = torch.where(keeps_own, token_loss[0], token_loss[1])
        copy_weight = torch.where(keeps_own, token_weight[0], token_weight[1])
        copy_targets = torch.where(keeps_own, labels, as_outside)
    else:
        zero = torch.zeros((), dtype=token_loss.dtype, device=token_loss.device)
        copy_loss = torch.where(keeps_own, token_loss[0], zero)
        copy_weight = torch.where(keeps_own, token_weight[0], zero)
        copy_targets = torch.where(keeps_own, labels, torch.full_like(labels, ignore))
    return loss.reduce(copy_loss, copy_weight, copy_targets)


def _fused_binary(logits, labels, copy_types, label_list, loss: TokenLoss) -> torch.Tensor:
    """[K] copy losses for "binary": each copy's softmax over its own columns {O, B-c, I-c}."""
    ignore = loss.ignore_index
    device = logits.device
    columns = [btl_columns(c, label_list) for c in copy_types]
    width = max(len(cols) for cols in columns)  # 3 for IOB2; 2 for a type with only B-
    # small index tables, built on the CPU and moved once (no per-copy kernel launches)
    index = torch.tensor([cols + [cols[0]] * (width - len(cols)) for cols in columns])       # [K, W]
    is_pad = torch.tensor([[j >= len(cols) for j in range(width)] for cols in columns])
    # position of each label id among each copy's columns; other types' labels -> 0 (O)
    position = torch.zeros(len(columns), len(label_list), dtype=torch.long)                     # [K, C]
    for k, cols in enumerate(columns):
        position[k, cols] = torch.arange(len(cols))
    index, is_pad, position = index.to(device), is_pad.to(device), position.to(device)
    valid = labels != ignore
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    targets = torch.where(valid, position[:, safe], torch.full_like(position[:, safe], ignore))  # [K, N]
    # padded columns get -inf: probability 0, so a 2-column copy is an exact 2-way softmax
    copy_logits = logits[:, index].permute(1, 0, 2).contiguous()                                   # [K, N, W]
    copy_logits = copy_logits.masked_fill(is_pad[:, None, :], float("-inf"))
    token_loss, token_weight = loss.per_token(copy_logits, targets, index)
    return loss.reduce(token_loss, token_weight, targets)


# ---------------------------------------------------------------------------------------------
# sentence-level resampling (Wang & Wang 2022)
# ---------------------------------------------------------------------------------------------

RESAMPLING_METHODS = ("sC", "sCR", "sCRD", "nsCRD")


def entity_type_rarity(tag_sequences: Sequence[Sequence[str]]) -> dict[str, float]:
    """``r_i = -log2 f_i`` per entity type, ``f_i`` = the fraction of all training tokens (``O``
    included) that carry a tag of type i (its ``B-`` and ``I-`` tokens alike). Types in order of
    first appearance; tags are IOB2 strings (``"O"``, ``"B-Drug"``, ...)."""
    counts: dict[str, int] = {}
    total = 0
    for tags in tag_sequences:
        total += len(tags)
        for tag in tags:
            if tag != "O":
                typ = tag.split("-", 1)[1]
                counts[typ] = counts.get(typ, 0) + 1
    return {typ: -math.log2(n / total) for typ, n in counts.items()}


def resampling_scores(tag_sequences: Sequence[Sequence[str]], method: str) -> list[float]:
    """Each training sentence's resampling score f(s) (Wang & Wang 2022, NAACL), from its tags.

    With c_i(s) the tokens of entity type i in sentence s, r_i = ``entity_type_rarity`` and l_s
    the sentence's length in words:

        sC      f(s) = 1 + Σ_i c_i
        sCR     f(s) = sqrt(1 + Σ_i r_i c_i)
        sCRD    f(s) = (1 + Σ_i r_i c_i) / sqrt(l_s)
        nsCRD   f(s) = (1 + Σ_i r_i sqrt(c_i)) / sqrt(l_s)

    The sentence is then used ``ceil(f(s))`` times (``sentence_repeats``); a sentence without an
    entity is used once, whatever its score. These are the formulas of the authors' released code
    (``NER_Adaptive_Resampling.resamp``), which is where the choices the method names leave open
    are settled: c_i counts entity *tokens* (B- and I-), not mentions; f_i is over all tokens of
    the training set; the logarithm is base 2; the 1 is added before the root / division.
    """
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"resampling method={method!r}, expected one of {RESAMPLING_METHODS}")
    rarity = entity_type_rarity(tag_sequences)
    scores = []
    for tags in tag_sequences:
        c: dict[str, int] = {}
        for tag in tags:
            if tag != "O":
                typ = tag.split("-", 1)[1]
                c[typ] = c.get(typ, 0) + 1
        if method == "sC":
            score = 1 + sum(c.values())
        elif method == "sCR":
            score = math.sqrt(1 + sum(rarity[t] * n for t, n in c.items()))
        elif method == "sCRD":
            score = (1 + sum(rarity[t] * n for t, n in c.items())) / math.sqrt(max(len(tags), 1))
        else:
            score = (1 + sum(rarity[t] * math.sqrt(n) for t, n in c.items())) / math.sqrt(max(len(tags), 1))
        scores.append(float(score))
    return scores


def sentence_repeats(tag_sequences: Sequence[Sequence[str]], method: str) -> list[int]:
    """How many times each training sentence is used per epoch: ``ceil(f(s))`` for a sentence
    with an entity (``resampling_scores``), 1 for one without. Deterministic: a function of the
    tags alone (the seed only orders the copies among the epoch's batches). The score is rounded
    to 9 decimals before the ceiling, so a float error (3.0000000000000004) cannot add a copy."""
    scores = resampling_scores(tag_sequences, method)
    return [math.ceil(round(score, 9)) if any(t != "O" for t in tags) else 1
            for tags, score in zip(tag_sequences, scores)]
