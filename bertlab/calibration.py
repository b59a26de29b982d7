"""The calibrated decoder: per-entity-type logit offsets fitted on dev, then argmax.

Why. A BTL model in ``other_to_o`` mode is trained on K binary copies per batch, and in K - 1 of
them an entity token's target is ``O``. With shared logits, the mean of the K copy losses is cross
entropy against a soft target with mass (K - 1)/K on ``O``, so at the optimum

    log p(B-t) - log p(O) ≈ -log(K - 1)

and plain argmax predicts ``O`` for every token: "BTL + argmax = 0" is guaranteed by the objective,
not a finding (docs/btl.md). The logits still rank tokens well. A per-type offset b_t added to the
B-t and I-t columns undoes the prior shift (logit adjustment, Menon et al. 2021):

    pred(word) = argmax_c  z_c + b_type(c)          (b_O = 0)

How it is fitted (on dev only, never on test). Coordinate ascent on strict IOB2 entity micro F1:
start from b = 0 (plain argmax); for each type in label order, try every offset of ``grid`` with
the other types' offsets fixed, keep the one with the highest dev micro F1 (ties: the offset
closest to the current one, then the smaller); repeat for ``rounds`` sweeps. Each step can only
raise dev micro F1, so the calibrated decoder is never worse than argmax *on dev*. ATL models are
calibrated the same way, so every sampler is compared under every decoder.

    cal = BiasCalibrator(labels).fit(dev_logits, dev_tags)   # lists of [n_words, C] / tag lists
    tags = cal.predict(test_logits)

Selecting on held-out offsets (``[eval] calibration_fit = "crossfit"``). Dev also chooses the
epoch (and with it the checkpoint) of the calibrated decoder. Offsets fitted on all of dev and
scored on all of dev give an in-sample score, which favours the epoch whose offsets overfit dev
most. ``CrossFitCalibrator`` splits the dev documents in two halves (``document_halves``: the
documents alternate, in corpus order), fits offsets on each, and decodes every sentence with the
*other* half's offsets, so no dev document's gold tags enter the offsets it is scored with. Test
is decoded with offsets fitted on all of dev (a ``BiasCalibrator``, saved as calibration.json):
that fit uses twice the data of either half, and the dev score was meant to choose the epoch, not
the offsets. ``"dev"`` (the default) keeps the in-sample score the committed studies selected with.

    cross = CrossFitCalibrator(labels).fit(dev_logits, dev_tags, [s.doc_id for s in dev_sentences])
    dev_tags_out_of_sample = cross.predict(dev_logits)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bertlab.files import write_text

CALIBRATION_FILE = "calibration.json"
DEFAULT_GRID = tuple(np.round(np.arange(-4.0, 10.0001, 0.25), 2).tolist())  # 57 offsets


def entity_columns(labels: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(types, type_of, kind_of)`` of an IOB2 label list: the entity types in first-seen order,
    and per label column its type index (-1 for ``O``) and kind (0 = O, 1 = B, 2 = I)."""
    types: list[str] = []
    type_of = np.full(len(labels), -1, dtype=np.int64)
    kind_of = np.zeros(len(labels), dtype=np.int64)
    for c, label in enumerate(labels):
        if label == "O":
            continue
        prefix, _, typ = label.partition("-")
        if prefix not in ("B", "I") or not typ:
            raise ValueError(f"label {label!r} is not IOB2 (expected 'O', 'B-<type>' or 'I-<type>')")
        if typ not in types:
            types.append(typ)
        type_of[c] = types.index(typ)
        kind_of[c] = 1 if prefix == "B" else 2
    return types, type_of, kind_of


def entity_keys(pred: np.ndarray, sentence_start: np.ndarray, type_of: np.ndarray,
                kind_of: np.ndarray) -> np.ndarray:
    """The strict IOB2 entities of a flat label-id sequence, one int64 key per entity.

    ``pred [N]`` label ids of all words of all sentences laid end to end; ``sentence_start [N]``
    True at each sentence's first word. An entity is a ``B-t`` and the run of ``I-t`` after it
    (seqeval's strict IOB2; an ``I-t`` that follows no ``B-t``/``I-t`` starts nothing). The key
    encodes (first word, last word, type), so two entity sets compare with ``np.intersect1d``.
    """
    n = len(pred)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    typ, kind = type_of[pred], kind_of[pred]
    cont = np.zeros(n, dtype=bool)
    cont[1:] = (kind[1:] == 2) & (kind[:-1] > 0) & (typ[1:] == typ[:-1]) & ~sentence_start[1:]
    first = np.flatnonzero(~cont)              # first word of each run
    last = np.append(first[1:] - 1, n - 1)     # last word of each run
    keep = kind[first] == 1                    # only runs that open with B-t are entities
    first, last = first[keep], last[keep]
    n_types = max(int(type_of.max()) + 1, 1)
    return (first.astype(np.int64) * n + last) * n_types + typ[first]


def micro_f1_of_keys(pred_keys: np.ndarray, gold_keys: np.ndarray) -> float:
    """Strict entity micro F1 from the entity keys of ``entity_keys`` (each key one typed span)."""
    denominator = len(pred_keys) + len(gold_keys)
    if denominator == 0:
        return 0.0
    return 2.0 * len(np.intersect1d(pred_keys, gold_keys, assume_unique=True)) / denominator


def dev_words(logits: list[np.ndarray], gold_tags: list[list[str]], labels: list[str], type_of: np.ndarray,
              kind_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a decoder fitted on dev scores against: ``(z [N, C] float64, sentence_start [N] bool,
    gold entity keys)`` from per-sentence word logits ``[n_words, C]`` and their IOB2 tags."""
    C = len(labels)
    for l in logits:
        if np.ndim(l) != 2 or np.shape(l)[1] != C:
            raise ValueError(f"logits: expected [n_words, {C}] arrays per sentence, got shape {np.shape(l)}")
    label2id = {l: i for i, l in enumerate(labels)}
    unknown = sorted({t for s in gold_tags for t in s if t not in label2id})
    if unknown:
        raise ValueError(f"gold tags {unknown[:5]} are not labels of the model")
    z = np.concatenate([np.asarray(l, dtype=np.float64) for l in logits], axis=0) if logits else np.zeros((0, C))
    gold_ids = np.asarray([label2id[t] for s in gold_tags for t in s], dtype=np.int64)
    if len(gold_ids) != len(z):
        raise ValueError(f"{len(z)} word logits but {len(gold_ids)} gold tags")
    starts = np.zeros(len(z), dtype=bool)
    starts[np.cumsum([0] + [len(l) for l in logits[:-1]])[[len(l) > 0 for l in logits]]] = True
    return z, starts, entity_keys(gold_ids, starts, type_of, kind_of)


def decode_argmax(scores: list[np.ndarray], labels: list[str]) -> list[list[str]]:
    """Each word's highest-scoring label, per sentence (may be invalid IOB2)."""
    return [[labels[i] for i in s.argmax(-1)] if len(s) else [] for s in scores]


def save_decoder_file(path: str | os.PathLike, fmt: str, fields: dict) -> None:
    """A fitted decoder's JSON file, ``{"format": fmt, **fields}``, written atomically."""
    write_text(path, json.dumps({"format": fmt, **fields}, indent=2) + "\n")


def read_decoder_file(path: str | os.PathLike, fmt: str) -> dict:
    """The fields of a file ``save_decoder_file`` wrote with format ``fmt``; ValueError (or OSError)
    when it is something else."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise ValueError(f"not a {fmt.split('/')[0].replace('-', ' ')} file")
    return d


class BiasCalibrator:
    """Per-entity-type offsets on the logits, fitted on dev to maximise strict entity micro F1.

    ``labels``: the model's IOB2 label list (``labels[0] == "O"`` is not required). ``grid``: the
    offsets tried for each type. ``rounds``: coordinate-ascent sweeps over the types.
    After ``fit``: ``bias`` ``[n_types]`` (one offset per type, applied to its B and I columns),
    ``dev_f1`` (micro F1 on the data it was fitted on) and ``argmax_f1`` (the same with b = 0).
    """

    def __init__(self, labels: list[str], grid=DEFAULT_GRID, rounds: int = 2):
        self.labels = list(labels)
        self.types, self.type_of, self.kind_of = entity_columns(self.labels)
        self.grid = np.asarray(grid, dtype=np.float64)
        if self.grid.ndim != 1 or len(self.grid) == 0 or not np.all(np.isfinite(self.grid)):
            raise ValueError("grid: expected a non-empty list of finite offsets")
        if rounds < 1:
            raise ValueError(f"rounds: expected >= 1, got {rounds}")
        self.rounds = int(rounds)
        self.bias = np.zeros(len(self.types), dtype=np.float64)
        self.dev_f1: float | None = None
        self.argmax_f1: float | None = None

    # -- the offsets as a per-column vector -------------------------------------------------------
    def column_bias(self, bias: np.ndarray | None = None) -> np.ndarray:
        """``[C]``: each label column's offset (0 for ``O``)."""
        bias = self.bias if bias is None else bias
        out = np.zeros(len(self.labels), dtype=np.float64)
        entity = self.type_of >= 0
        out[entity] = bias[self.type_of[entity]]
        return out

    def fit(self, logits: list[np.ndarray], gold_tags: list[list[str]]) -> "BiasCalibrator":
        """Fit the offsets on dev: ``logits`` per sentence ``[n_words, C]``, ``gold_tags`` the
        sentences' IOB2 tags. Returns self."""
        z, starts, gold = dev_words(logits, gold_tags, self.labels, self.type_of, self.kind_of)
        bias = np.zeros(len(self.types), dtype=np.float64)
        self.argmax_f1 = best = micro_f1_of_keys(self._keys(z, starts, bias), gold)
        columns = [np.flatnonzero(self.type_of == t) for t in range(len(self.types))]
        for _ in range(self.rounds):
            for t, cols in enumerate(columns):
                # every other column's adjusted score is fixed while b_t moves: read its best once
                others = z + self.column_bias(bias)
                others[:, cols] = -np.inf
                other_best, other_arg = others.max(1), others.argmax(1)
                own = z[:, cols]
                own_best, own_arg = own.max(1), cols[own.argmax(1)]
                # ties go to the lower column index, as np.argmax does over the full row; [N, len(grid)]
                moved = own_best[:, None] + self.grid[None, :]
                take = (moved > other_best[:, None]) | ((moved == other_best[:, None]) & (own_arg < other_arg)[:, None])
                # a word taken at offset b is taken at every larger one (float addition is monotone), so
                # offsets that take as many words take the same words: score each distinct set once
                n_taken = take.sum(0)
                score_of = {}
                for g, n in enumerate(n_taken.tolist()):
                    if n not in score_of:
                        pred = np.where(take[:, g], own_arg, other_arg)
                        score_of[n] = micro_f1_of_keys(entity_keys(pred, starts, self.type_of, self.kind_of), gold)
                scores = np.asarray([score_of[n] for n in n_taken.tolist()])
                candidates = np.flatnonzero(scores == scores.max())
                # ties: the offset closest to the current one, then the smaller offset
                pick = min(candidates, key=lambda i: (abs(self.grid[i] - bias[t]), self.grid[i]))
                if scores[pick] >= best:
                    bias[t], best = self.grid[pick], float(scores[pick])
        self.bias, self.dev_f1 = bias, best
        return self

    def adjust(self, logits: list[np.ndarray]) -> list[np.ndarray]:
        """The logits with the fitted offsets added (float64)."""
        cb = self.column_bias()
        return [np.asarray(l, dtype=np.float64) + cb for l in logits]

    def predict(self, logits: list[np.ndarray]) -> list[list[str]]:
        """IOB2 tags per sentence: argmax of the adjusted logits (may be invalid IOB2, like argmax)."""
        return decode_argmax(self.adjust(logits), self.labels)

    def _keys(self, z: np.ndarray, starts: np.ndarray, bias: np.ndarray) -> np.ndarray:
        pred = (z + self.column_bias(bias)).argmax(1) if len(z) else np.zeros(0, dtype=np.int64)
        return entity_keys(pred, starts, self.type_of, self.kind_of)

    # -- saving next to a model ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """``calibration.json``: labels, types, offsets, grid and the dev scores (atomically)."""
        save_decoder_file(path, "bertlab-calibration/1", {
            "labels": self.labels, "types": self.types, "bias": self.bias.tolist(), "grid": self.grid.tolist(),
            "rounds": self.rounds, "dev_f1": self.dev_f1, "argmax_f1": self.argmax_f1})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BiasCalibrator":
        try:
            d = read_decoder_file(path, "bertlab-calibration/1")
            cal = cls(d["labels"], d["grid"], d["rounds"])
            cal.bias = np.asarray(d["bias"], dtype=np.float64)
            if cal.bias.shape != (len(cal.types),):
                raise ValueError(f"{len(cal.bias)} offsets for {len(cal.types)} types")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: cannot read the calibration ({e}); re-run the training's final "
                             f"evaluation, or decode without 'calibrated'") from None
        cal.dev_f1, cal.argmax_f1 = d.get("dev_f1"), d.get("argmax_f1")
        return cal


# ---- cross-fitting: dev scores from offsets fitted on the other half of dev ------------------------

def document_halves(doc_ids: list[str]) -> np.ndarray:
    """Each sentence's half (0 or 1) for cross-fitting, from its document id: documents in
    first-seen order alternate between the halves (the 1st, 3rd, ... in half 0), so a document's
    sentences stay together and the halves differ by at most one document."""
    first_seen: dict[str, int] = {}
    for d in doc_ids:
        first_seen.setdefault(d, len(first_seen))
    return np.array([first_seen[d] % 2 for d in doc_ids], dtype=np.int64)


class CrossFitCalibrator:
    """Out-of-sample calibrated tags for the very sentences the offsets are fitted on.

    ``fit(logits, gold_tags, doc_ids)`` fits one ``BiasCalibrator`` per half of the documents
    (``fits[h]`` on half h, ``document_halves``); ``adjust`` / ``predict`` of the same sentences
    (same order) decode each with the offsets of the half it is *not* in. A half with no
    documents (a dev set of one document) fits offsets 0, so the other half is decoded by argmax.
    For new sentences (test) use a ``BiasCalibrator`` fitted on all of dev.
    """

    def __init__(self, labels: list[str], grid=DEFAULT_GRID, rounds: int = 2):
        self.labels, self.grid, self.rounds = list(labels), grid, rounds
        self.half: np.ndarray | None = None
        self.fits: list[BiasCalibrator] = []

    def fit(self, logits: list[np.ndarray], gold_tags: list[list[str]], doc_ids: list[str]) -> "CrossFitCalibrator":
        if not len(logits) == len(gold_tags) == len(doc_ids):
            raise ValueError(f"{len(logits)} sentences of logits, {len(gold_tags)} of gold tags and "
                             f"{len(doc_ids)} document ids: expected one of each per sentence")
        self.half = document_halves(doc_ids)
        self.fits = [BiasCalibrator(self.labels, self.grid, self.rounds).fit(
            [l for l, h in zip(logits, self.half) if h == side], [g for g, h in zip(gold_tags, self.half) if h == side])
            for side in (0, 1)]
        return self

    def adjust(self, logits: list[np.ndarray]) -> list[np.ndarray]:
        """The fitted sentences' logits (float64), each plus the other half's offsets."""
        if self.half is None:
            raise RuntimeError("CrossFitCalibrator is not fitted yet: call fit(logits, gold_tags, doc_ids) first")
        if len(logits) != len(self.half):
            raise ValueError(f"{len(logits)} sentences, but the cross-fit was fitted on {len(self.half)}: "
                             f"it decodes only the sentences it was fitted on")
        other = [self.fits[1].column_bias(), self.fits[0].column_bias()]
        return [np.asarray(l, dtype=np.float64) + other[h] for l, h in zip(logits, self.half)]

    def predict(self, logits: list[np.ndarray]) -> list[list[str]]:
        """IOB2 tags per fitted sentence: argmax of its out-of-sample adjusted logits."""
        return [[self.labels[i] for i in z.argmax(-1)] if len(z) else [] for z in self.adjust(logits)]
