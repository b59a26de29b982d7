"""The post-hoc logit-adjusted decoder (Menon et al. 2021): train with plain cross entropy, then

    pred(word) = argmax_c  z_c - τ log π_c

with π the training class priors. Why: a softmax trained with CE estimates p(y | x), which carries
the training prior; dividing it out, p(y | x) / π_y ∝ p(x | y), gives the classifier that is
Bayes-optimal for the *balanced* error (every class weighted alike), and τ interpolates between
the two (τ = 0: plain argmax; τ = 1: the balanced rule). It is the decode-time twin of
``bertlab.losses.logit_adjusted_loss``, which builds the same shift into training.

How τ is chosen: on held-out dev data only, never on test. Every τ of ``TAU_GRID`` (0 to 2 in
steps of 0.05: 41 values, τ = 0 included, so the decoder is never worse than argmax *on dev*) is
scored by strict IOB2 entity micro F1 on dev; the best wins, ties to the smaller τ (the smaller
change from argmax). Menon et al. tune τ on a holdout set too; the grid goes to 2 because with
NER priors one unit of τ already moves an entity column by log(π_O / π_B-X) ≈ 4-6 nats.

The priors are the training set's label counts, the same counts the count-based losses use
(``Objective.label_counts``: first-subword labels of the training windows, repeated sentences
included under ``[sampler] name = "resample"``); a label with no training token counts as the
rarest label that occurs (``bertlab.losses.class_priors``).

    dec = LogitAdjustedDecoder(labels, counts).fit(dev_logits, dev_tags)  # lists of [n_words, C] / tags
    tags = dec.predict(test_logits)
"""
from __future__ import annotations

import os

import numpy as np

from bertlab.calibration import (decode_argmax, dev_words, entity_columns, entity_keys, micro_f1_of_keys,
                                 read_decoder_file, save_decoder_file)
from bertlab.losses import class_priors

LOGIT_ADJUSTMENT_FILE = "logit_adjustment.json"
TAU_GRID = tuple(np.round(np.arange(0.0, 2.0001, 0.05), 2).tolist())  # 41 values


class LogitAdjustedDecoder:
    """``argmax_c z_c - τ log π_c`` per word, with τ fitted on dev (strict entity micro F1).

    ``labels``: the model's IOB2 label list; ``counts``: its training label counts (or priors),
    one per label. After ``fit``: ``tau``, ``dev_f1`` (micro F1 at τ on the data it was fitted
    on), ``argmax_f1`` (the same at τ = 0) and ``scores`` (dev micro F1 per τ of the grid).
    """

    def __init__(self, labels: list[str], counts, grid=TAU_GRID):
        self.labels = list(labels)
        self.types, self.type_of, self.kind_of = entity_columns(self.labels)
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if len(counts) != len(self.labels):
            raise ValueError(f"counts: {len(counts)} entries for {len(self.labels)} labels")
        self.counts = counts
        self.log_priors = np.log(class_priors(counts).numpy())     # log π [C]
        self.grid = np.asarray(grid, dtype=np.float64)
        if self.grid.ndim != 1 or len(self.grid) == 0 or not np.all(np.isfinite(self.grid)) or (self.grid < 0).any():
            raise ValueError("grid: expected a non-empty list of finite τ >= 0")
        self.tau = 0.0
        self.dev_f1: float | None = None
        self.argmax_f1: float | None = None
        self.scores: list[float] | None = None

    def adjust(self, logits: list[np.ndarray], tau: float | None = None) -> list[np.ndarray]:
        """The adjusted scores ``z - τ log π`` per sentence (float64)."""
        shift = (self.tau if tau is None else tau) * self.log_priors
        return [np.asarray(l, dtype=np.float64) - shift for l in logits]

    def predict(self, logits: list[np.ndarray]) -> list[list[str]]:
        """IOB2 tags per sentence: the argmax of the adjusted scores (may be invalid IOB2, like argmax)."""
        return decode_argmax(self.adjust(logits), self.labels)

    def fit(self, logits: list[np.ndarray], gold_tags: list[list[str]]) -> "LogitAdjustedDecoder":
        """Choose τ on dev: ``logits`` per sentence ``[n_words, C]``, ``gold_tags`` their IOB2 tags."""
        z, starts, gold = dev_words(logits, gold_tags, self.labels, self.type_of, self.kind_of)
        scores = []
        for tau in self.grid:
            pred = (z - tau * self.log_priors).argmax(1) if len(z) else np.zeros(0, dtype=np.int64)
            scores.append(micro_f1_of_keys(entity_keys(pred, starts, self.type_of, self.kind_of), gold))
        candidates = np.flatnonzero(np.asarray(scores) == max(scores))
        best = int(candidates[np.argmin(self.grid[candidates])])  # ties: the smallest τ
        self.tau, self.dev_f1, self.scores = float(self.grid[best]), float(scores[best]), scores
        pred = z.argmax(1) if len(z) else np.zeros(0, dtype=np.int64)
        self.argmax_f1 = micro_f1_of_keys(entity_keys(pred, starts, self.type_of, self.kind_of), gold)
        return self

    # -- saving next to a model ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """``logit_adjustment.json``: labels, counts, τ, the grid and the dev scores (atomically)."""
        save_decoder_file(path, "bertlab-logit-adjustment/1", {
            "labels": self.labels, "counts": self.counts.tolist(), "tau": self.tau, "grid": self.grid.tolist(),
            "dev_f1": self.dev_f1, "argmax_f1": self.argmax_f1, "scores": self.scores})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LogitAdjustedDecoder":
        try:
            d = read_decoder_file(path, "bertlab-logit-adjustment/1")
            dec = cls(d["labels"], d["counts"], d["grid"])
            dec.tau = float(d["tau"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: cannot read the logit adjustment ({e}); re-run the training's final "
                             f"evaluation, or decode without 'logit_adjusted'") from None
        dec.dev_f1, dec.argmax_f1, dec.scores = d.get("dev_f1"), d.get("argmax_f1"), d.get("scores")
        return dec
