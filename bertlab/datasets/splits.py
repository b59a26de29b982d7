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


# ---- cross-validation folds -------------------------------------------------------------------

DEV_FRACTION = 0.1  # the share of a fold's non-test documents that becomes its dev set


def document_mentions(documents) -> dict[str, dict[str, int]]:
    """``{doc_id: {type: mentions}}`` (strict IOB2 mentions) of ``Document`` objects; a mapping of
    that shape is returned as it is. What the folds are stratified by."""
    if isinstance(documents, dict):
        return {d: dict(c) for d, c in documents.items()}
    from bertlab.metrics import strict_entities
    out: dict[str, dict[str, int]] = {}
    for doc in documents:
        if doc.doc_id in out:
            raise ValueError(f"document id {doc.doc_id!r} occurs twice; folds need distinct documents")
        counts = out[doc.doc_id] = {}
        for s in doc.sentences:
            for typ, _, _ in strict_entities(s.tags):
                counts[typ] = counts.get(typ, 0) + 1
    return out


def stratified_groups(mentions: dict[str, dict[str, int]], sizes, seed: int = 0) -> list[list[str]]:
    """Deal the documents of ``mentions`` (``{doc_id: {type: count}}``) into groups of exactly
    ``sizes`` documents so that every type's mentions spread over the groups in proportion to
    their sizes, rare types first. Each group's ids are returned sorted.

    The greedy rule (a form of iterative stratification, Sechidis et al. 2011): the documents are
    shuffled with ``random.Random(seed)`` (over their sorted ids, so the input order does not
    matter), then stably sorted by the corpus frequency of their rarest type (documents without a
    mention last); each goes to the group, among those not yet full, that lacks its rarest type
    (then its next rarest, and so on), then that holds the smallest share (mentions / group size)
    of those types, then the least filled, then the lower index. The rarest type of the corpus
    thus reaches min(its documents, groups) groups; for the others it is a heuristic: on 200
    random small corpora it reached the brute-force optimum of "types missing from a fold they
    could be in" in 186, never more than 2 off, and on MACCROBAT every type is in
    min(its documents, K) folds for K = 3, 5, 10 (tests/test_datasets.py)."""
    sizes = [int(s) for s in sizes]
    ids = sorted(mentions)
    if any(s < 0 for s in sizes) or sum(sizes) != len(ids):
        raise ValueError(f"group sizes {sizes} must be >= 0 and sum to the {len(ids)} documents")
    total: dict[str, int] = {}
    for counts in mentions.values():
        for t, n in counts.items():
            total[t] = total.get(t, 0) + n
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)

    def by_rarity(doc: str) -> list[str]:
        return sorted((t for t, n in mentions[doc].items() if n > 0), key=lambda t: (total[t], t))

    rare = {d: by_rarity(d) for d in ids}
    shuffled.sort(key=lambda d: total[rare[d][0]] if rare[d] else float("inf"))
    placed = [dict() for _ in sizes]
    filled = [0] * len(sizes)
    groups: list[list[str]] = [[] for _ in sizes]
    for doc in shuffled:
        open_ = [g for g in range(len(sizes)) if filled[g] < sizes[g]]
        g = min(open_, key=lambda g: (tuple(placed[g].get(t, 0) > 0 for t in rare[doc]),
                                      tuple(placed[g].get(t, 0) / sizes[g] for t in rare[doc]),
                                      filled[g] / sizes[g], g))
        groups[g].append(doc)
        filled[g] += 1
        for t, n in mentions[doc].items():
            placed[g][t] = placed[g].get(t, 0) + n
    return [sorted(g) for g in groups]


def cross_validation_folds(documents, folds: int, seed: int = 0) -> list[list[str]]:
    """The documents (``Document`` objects, or ``{doc_id: {type: mentions}}``) dealt into ``folds``
    folds of equal size (the first ``len % folds`` one document larger), stratified by entity type
    (``stratified_groups``): deterministic given the document ids, their mentions and ``seed``."""
    mentions = document_mentions(documents)
    n = len(mentions)
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if folds > n:
        raise ValueError(f"folds = {folds} but there are only {n} documents; every fold needs one")
    sizes = [n // folds + (k < n % folds) for k in range(folds)]
    return stratified_groups(mentions, sizes, seed)


def cross_validation_split(documents, folds: int, fold: int, seed: int = 0,
                           dev_fraction: float = DEV_FRACTION) -> dict[str, list[str]]:
    """Fold ``fold`` of ``folds``-fold cross-validation as ``{"train", "dev", "test"}`` document ids.

    test: the documents of fold ``fold`` (``cross_validation_folds(documents, folds, seed)``).
    dev: ``round(dev_fraction × the other documents)``, at least 1, drawn from the other folds by
    the same stratified rule (``stratified_groups`` with ``seed``); train: the rest. So every
    document is tested exactly once over the folds, and a fold trains on (K−1)/K of the corpus
    less a tenth for model selection (MACCROBAT, 200 documents: 5 folds give 144 / 16 / 40; 10
    folds give 162 / 18 / 20, the sizes of the corpus's own 160 / 20 / 20 split)."""
    all_folds = cross_validation_folds(documents, folds, seed)
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
        raise ValueError(f"fold must be an integer in 0..{folds - 1}, got {fold!r}")
    mentions = document_mentions(documents)
    test = all_folds[fold]
    rest = {d: mentions[d] for k, ids in enumerate(all_folds) if k != fold for d in ids}
    if len(rest) < 2:
        raise ValueError(f"folds = {folds} leaves {len(rest)} document(s) outside the test fold; a fold needs "
                         f"at least one training and one dev document")
    n_dev = min(max(1, round(dev_fraction * len(rest))), len(rest) - 1)
    dev, train = stratified_groups(rest, [n_dev, len(rest) - n_dev], seed)
    return {"train": train, "dev": dev, "test": test}
