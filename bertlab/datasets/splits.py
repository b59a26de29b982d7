"""Document-level train/dev/test splits for corpora without an official one, fixed by a seed.

The split is a pure function of the sorted document ids and the seed (``random.Random(seed)``, whose
Mersenne Twister and ``shuffle`` are the same on every platform and Python >= 3.2), and is written to a
JSON file shipped with the package, so every run of every experiment trains on the same documents.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from bertlab.datasets.corpus import DataError

SPLITS = ("train", "dev", "test")


def make_split(doc_ids, sizes=(160, 20, 20), seed: int = 0) -> dict[str, list[str]]:
    """Shuffle the sorted ``doc_ids`` with ``seed`` and cut them into train/dev/test.

    ``sizes`` are document counts summing to ``len(doc_ids)``, or fractions summing to 1 (dev and
    test are rounded, train takes the rest). Each split's ids are returned sorted.
    """
    ids = sorted(set(doc_ids))
    if len(ids) != len(list(doc_ids)):
        raise ValueError("doc_ids contain duplicates")
    if all(isinstance(s, float) for s in sizes):
        if abs(sum(sizes) - 1) > 1e-9:
            raise ValueError(f"fractions {sizes} must sum to 1")
        dev, test = round(sizes[1] * len(ids)), round(sizes[2] * len(ids))
        sizes = (len(ids) - dev - test, dev, test)
    if sum(sizes) != len(ids):
        raise ValueError(f"split sizes {sizes} sum to {sum(sizes)}, but there are {len(ids)} documents")
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    out, start = {}, 0
    for name, size in zip(SPLITS, sizes):
        out[name] = sorted(shuffled[start:start + size])
        start += size
    return out


def write_split(path, doc_ids, sizes=(160, 20, 20), seed: int = 0) -> dict:
    """Make a split (see :func:`make_split`) and write it as JSON with its seed and sizes."""
    split = make_split(doc_ids, sizes, seed)
    record = {"seed": seed, "sizes": [len(split[s]) for s in SPLITS], **split}
    Path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def read_split(path) -> dict:
    """A split file written by :func:`write_split`: ``{"seed", "sizes", "train", "dev", "test"}``."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read split file: {e}") from None
    missing = [k for k in ("seed", *SPLITS) if k not in record]
    if missing:
        raise DataError(f"{path}: split file lacks {missing}; expected keys seed, train, dev, test")
    overlap = set(record["train"]) & set(record["dev"]) | set(record["train"]) & set(record["test"]) \
        | set(record["dev"]) & set(record["test"])
    if overlap:
        raise DataError(f"{path}: documents in more than one split: {sorted(overlap)[:5]}")
    return record
