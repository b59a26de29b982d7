"""BIO-constrained decoding: the best IOB2-valid tag sequence under any decoder's per-word scores.

Argmax, KNN and the calibrated decoder choose each word's label alone, so they can emit sequences
that IOB2 forbids (``O I-X``, ``B-X I-Y``, a sentence that opens with ``I-X``); strict scoring
drops such an orphan ``I-X`` (docs/evaluation.md, "Strict versus conlleval"). A decode name with
the suffix ``+bio`` (``argmax+bio``, ``knn+bio``, ``calibrated+bio``) keeps the decoder's
per-word scores ``s_t(c)`` and picks the sequence of largest total score among the valid ones:

    y* = argmax_{y valid IOB2}  Σ_t s_t(y_t)

IOB2's grammar is a first-order one, so a Viterbi pass finds y* exactly: ``O`` and ``B-X`` may
follow anything; ``I-X`` may follow only ``B-X`` or ``I-X`` (same type) and never opens a sentence.
A forbidden transition scores -inf. The scores per decoder (``bertlab.inference.decoder_scores``):

- ``argmax+bio``: the logits z. The log-softmax differs from z by one constant per word, which
  every path pays once, so both pick the same path: y* is also the valid sequence of highest
  product of per-word softmax probabilities;
- ``calibrated+bio``: z + b, the logits with the calibrated decoder's offsets (fitted for argmax,
  not refitted for the constraint, so ``calibrated+bio`` - ``calibrated`` measures the constraint
  alone);
- ``knn+bio``: log(k · share + 1), the log of the add-one (Laplace) smoothed neighbour votes. The
  raw log share is -inf for a label no neighbour voted for, and a word whose only voted label is
  forbidden would leave no finite path; add-one keeps every label possible while a label with
  more votes always scores more.

**A sentence whose decoder tags are already valid keeps them.** Those tags maximise every term of
the sum, so they are an optimal valid path; keeping them means ``+bio`` changes only sentences the
unconstrained decoder got invalid, and keeps that decoder's own tie rule (the lower label id).
Elsewhere ties go to the lexicographically smallest label-id sequence, first word first (the
first word's lowest-id best label, then the next's, ...), which is argmax's rule extended to
sequences: a backward pass computes each (word, label)'s best completion, a forward pass picks.
``tests/test_constrained.py`` checks the path against a brute force over all tag sequences.
"""
from __future__ import annotations

import numpy as np

BIO = "+bio"                                        # the suffix of a constrained decode's name
CONSTRAINABLE = ("argmax", "knn", "calibrated")     # decoders with per-word scores to constrain


def base_decode(decode: str) -> str:
    """The decoder a decode name reads the model with: ``"knn+bio"`` -> ``"knn"``."""
    return decode.removesuffix(BIO)


def is_constrained(decode: str) -> bool:
    """Whether the decode name asks for the IOB2-constrained Viterbi (``"argmax+bio"``)."""
    return decode.endswith(BIO)


def allowed_transitions(labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """IOB2's grammar over a label list: ``(start [C], allowed [C, C])`` booleans, ``start[c]``
    whether a sentence may open with label c, ``allowed[a, b]`` whether b may follow a. ``O`` and
    ``B-X`` are allowed everywhere; ``I-X`` only after ``B-X`` or ``I-X`` of the same type."""
    kinds = []
    for label in labels:
        prefix, _, typ = label.partition("-")
        if label != "O" and (prefix not in ("B", "I") or not typ):
            raise ValueError(f"label {label!r} is not IOB2 (expected 'O', 'B-<type>' or 'I-<type>')")
        kinds.append(("O", None) if label == "O" else (prefix, typ))
    inside = np.array([k == "I" for k, _ in kinds])
    types = np.array([t or "" for _, t in kinds], dtype=object)
    same_type = (types[:, None] == types[None, :]) & (types[:, None] != "")
    allowed = ~inside[None, :] | same_type            # I-X after a label of type X (B-X or I-X)
    return ~inside, allowed


def viterbi(scores: np.ndarray, start: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The label ids ``[T]`` of the highest-scoring allowed path through ``scores [T, C]``
    (float64), ties to the lexicographically smallest id sequence. ``start [C]`` and
    ``allowed [C, C]`` as from ``allowed_transitions``. Empty scores give an empty path."""
    scores = np.asarray(scores, dtype=np.float64)
    T, C = scores.shape
    if T == 0:
        return np.zeros(0, dtype=np.int64)
    if not start.any():
        raise ValueError("no label may open a sentence (every label is I-X): no valid IOB2 path")
    trans = np.where(allowed, 0.0, -np.inf)           # [previous, next]
    # after[t, c]: the best score of words t+1 .. T-1 when word t is labelled c
    after = np.zeros((T, C))
    for t in range(T - 2, -1, -1):
        after[t] = (trans + (scores[t + 1] + after[t + 1])[None, :]).max(axis=1)
    path = np.empty(T, dtype=np.int64)
    # np.argmax takes the first of equal values: the lowest id among the best, word by word
    path[0] = np.argmax(np.where(start, scores[0] + after[0], -np.inf))
    for t in range(1, T):
        path[t] = np.argmax(trans[path[t - 1]] + (scores[t] + after[t]))
    return path


def is_valid(ids: np.ndarray, start: np.ndarray, allowed: np.ndarray) -> bool:
    """Whether a label-id sequence obeys ``start`` and ``allowed`` (an empty one does)."""
    ids = np.asarray(ids, dtype=np.int64)
    return len(ids) == 0 or bool(start[ids[0]] and allowed[ids[:-1], ids[1:]].all())


def constrain(scores: list[np.ndarray], tags: list[list[str]], labels: list[str]) -> list[list[str]]:
    """IOB2-valid tags per sentence: the decoder's own ``tags`` where they are valid, else the
    Viterbi path over its ``scores`` (per sentence ``[n_words, C]``, columns in ``labels`` order)."""
    start, allowed = allowed_transitions(labels)
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for s, t in zip(scores, tags, strict=True):
        if is_valid(np.array([index[x] for x in t], dtype=np.int64), start, allowed):
            out.append(list(t))
        else:
            out.append([labels[i] for i in viterbi(s, start, allowed)])
    return out
