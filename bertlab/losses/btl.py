"""BTL (binary token labels): the K copies of a batch and their losses, naive and fused.

BTL turns each batch into K copies, one per entity type c, in which only c is kept against ``O``.
With the canonical label list ``["O", "B-Dose", "I-Dose", "B-Drug", "I-Drug"]`` the targets
``[O, B-Drug, I-Drug, O, B-Dose] = [0, 3, 4, 0, 1]`` give

    mode           copy "Dose"                              copy "Drug"
    other_to_o     [0, 0, 0, 0, 1]    (default)             [0, 3, 4, 0, 0]
    ignore         [0, -100, -100, 0, 1]                    [0, 3, 4, 0, -100]
    binary         [0, 0, 0, 0, 1] over columns [0, 1, 2]   [0, 1, 2, 0, 0] over columns [0, 3, 4]

and the batch's loss combines the K copy losses (``reduce_copies``: each copy reduced over its own
tokens by the loss, then the mean or sum over copies). ``btl_naive_loss`` runs the model once per
copy, as the paper does (K forwards, each with its own dropout masks); ``btl_fused_loss`` runs it
once and scores all K copies on the same logits. Without dropout they are equal, loss and
gradients; with dropout they differ only through the masks. docs/btl.md explains all of it.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from bertlab.losses.functional import IGNORE_INDEX
from bertlab.losses.token import TokenLoss

BTL_MODES = ("other_to_o", "ignore", "binary")
BTL_COMBINE = ("mean", "sum")


# ---------------------------------------------------------------------------------------------
# which labels belong to which entity type, and each copy's targets
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
    ids = torch.unique(labels[labels != ignore_index]).cpu()  # a host sync, every BTL step
    type_of = _type_of_label(label_list)
    return sorted({int(t) for t in type_of[ids].tolist() if t >= 0})



def reduce_copies(loss: TokenLoss, token_loss: torch.Tensor, token_weight: torch.Tensor, targets: torch.Tensor,
                  combine: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """**The one place where K BTL copies become one loss**: ``(combined, copy_losses [K])``.

    token_loss, token_weight, targets: ``[K, N]``, copy k's per-token losses, "weighted_mean"
    weights and targets (``loss.per_token``). Each copy is reduced over its own tokens with the
    loss's ``reduction`` (``loss.reduce``); the K copy losses are then combined, "mean"
    (``Σ_k L_k / K``) or "sum" (``Σ_k L_k``). Training reduces by "sum" and divides the step
    by its labelled tokens instead (``bertlab.losses.objective``), so a copy's tokens count once each.
    """
    copy_losses = loss.reduce(token_loss, token_weight, targets)
    if combine == "mean":
        return copy_losses.mean(), copy_losses
    if combine == "sum":
        return copy_losses.sum(), copy_losses
    raise ValueError(f"BTL combine={combine!r}, expected one of {BTL_COMBINE}")


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
    and combined by ``reduce_copies`` ("mean" or "sum" over copies).

    Each forward draws its own dropout masks, so in train mode the copies see different networks;
    that, and only that, makes it differ from ``btl_fused_loss``.
    Returns ``(loss, info)`` with info ``{"classes": [type per copy], "copy_losses": [K] detached}``.
    """
    names, token_losses, token_weights, copy_targets = [], [], [], []
    for name, copy, columns in binary_token_label_batches(batch, label_list, mode, classes):
        logits = model(copy["input_ids"], copy["attention_mask"], copy.get("token_type_ids"))
        logits, targets = logits.reshape(-1, logits.shape[-1]), copy["labels"].reshape(-1)
        cols = None
        if columns is not None:
            cols = torch.tensor(columns, device=logits.device)
            logits = logits[:, cols]
        token_loss, token_weight = loss.per_token(logits, targets, cols)
        token_losses.append(token_loss)
        token_weights.append(token_weight)
        copy_targets.append(targets)
        names.append(name)
    value, copy_losses = reduce_copies(loss, torch.stack(token_losses), torch.stack(token_weights),
                                       torch.stack(copy_targets), combine)
    return value, {"classes": names, "copy_losses": copy_losses.detach()}


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
        scored = token_loss[None], token_weight[None], labels[None]
        names = [""]
    else:
        if mode == "binary":
            scored = _fused_binary(logits, labels, copy_types, label_list, loss)
        else:
            scored = _fused_full_softmax(logits, labels, copy_types, label_list, loss, mode)
        names = [types[c] for c in copy_types]
    value, copy_losses = reduce_copies(loss, *scored, combine)
    return value, {"classes": names, "copy_losses": copy_losses.detach()}


def _fused_full_softmax(logits, labels, copy_types, label_list, loss: TokenLoss, mode) -> tuple:
    """``(token losses, weights, targets)``, each ``[K, N]``, for "other_to_o" / "ignore": selected
    from the own-label and O losses."""
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
    return copy_loss, copy_weight, copy_targets


def _fused_binary(logits, labels, copy_types, label_list, loss: TokenLoss) -> tuple:
    """``(token losses, weights, targets)``, each ``[K, N]``, for "binary": each copy's softmax over
    its own columns {O, B-c, I-c}."""
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
    return token_loss, token_weight, targets
