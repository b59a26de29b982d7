"""Batches: padding (``collate``), ATL's shuffled length-bucketed batches, and each epoch's order.

A training epoch is a list of *global micro-batches* (window indices): ``epoch_batches`` shuffles
the windows with a seed derived from ``(seed, epoch)``, cuts them into buckets of similar length
and those into batches (``length_bucketed_batches``), so dynamic padding wastes little and a
resumed run rebuilds the same order. Under data parallelism each process takes its rows of each
global batch (``shard``). ``collate`` pads a batch's windows into the tensors the model reads.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bertlab.losses.functional import IGNORE_INDEX


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


def epoch_seed(seed: int, epoch: int) -> int:
    """The batch-order seed of one epoch, a hash of ``(seed, epoch)``: every epoch gets its own
    order, and a resumed run rebuilds exactly the order it was interrupted in."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global micro-batches of one epoch (window indices), shuffled and length-bucketed."""
    return length_bucketed_batches(lengths, batch_size, shuffle=True, seed=epoch_seed(seed, epoch))


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's rows of a global micro-batch: every ``world_size``-th row from ``rank``
    (rows are length-sorted inside a batch, so the shards get similar lengths)."""
    return batch[rank::world_size]
