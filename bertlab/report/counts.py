"""Per-document counts and the statistics computed from them: a run's prediction file as counts
per test document (``document_counts``), several runs stacked into one array (``stack_counts``),
the metrics of summed counts with a fixed class set (``scores_from_sums``), the per-document
jackknife pseudo-values and a variant's interval over seeds and documents (``variant_interval``),
and the same for runs pooled over cross-validation folds.

A study with ``[study] folds = K`` trains each (variant, seed) once per fold; every document is in
the test fold of exactly one of them. The report pools a (variant, seed)'s K test folds into one
run over all documents (the point estimates), and keeps which fold each document was tested in
(the corrected resampled t of the intervals and tests, ``stats.corrected_resampled_t``)."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from bertlab import stats
from bertlab.metrics import conlleval_entities, invalid_transitions, overlap_matches, strict_entities
from bertlab.report.rows import METRICS


def document_counts(pred_file: str | os.PathLike) -> dict:
    """Per-document counts of one prediction file (``predictions_<split>_<decode>.jsonl``).

    Returns ``{"docs": [doc ids in order], "entities": {type: int [D, 3]}`` (true positives,
    predicted, gold; strict IOB2 as seqeval's strict mode), ``"tokens": {label: int [D, 2]}``
    (correct, gold) for the unweighted accuracy, and ``"conventions": {name: int [D, k]}``: the
    other scoring conventions, summed over types — ``conlleval`` and ``lenient`` (tp, predicted,
    gold; ``metrics.conlleval_entities``, ``metrics.lenient_counts``), ``tokens`` (correct tags,
    tags), ``invalid`` (invalid IOB2 transitions the predictions make, predicted ``I-`` tags;
    ``metrics.invalid_transitions``)}``.

    Computed on the whole file at once with arrays (``_iob2_runs``) when every tag is ``O`` or
    ``B-``/``I-`` and a type and every sentence has one prediction per gold tag, as bertlab writes
    them; otherwise sentence by sentence (``document_counts_by_sentence``). Both give the same
    counts (tests/test_report.py checks it on generated files)."""
    sentences = _read_predictions(pred_file)
    fast = _document_counts_iob2(*sentences)
    return fast if fast is not None else document_counts_by_sentence(pred_file)


def _read_predictions(pred_file) -> tuple[dict, list, list, list]:
    """``(doc index by id in first-seen order, each sentence's doc index, gold tags, predicted tags)``."""
    docs: dict[str, int] = {}
    sentence_doc, gold, pred = [], [], []
    with open(pred_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            sentence_doc.append(docs.setdefault(s["doc_id"], len(docs)))
            gold.append(s["tags"] if "tags" in s else s["gold"])
            pred.append(s["pred"])
    return docs, sentence_doc, gold, pred


def _iob2_runs(ids: np.ndarray, starts: np.ndarray, kind_of: np.ndarray, type_of: np.ndarray,
               strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """The entities of tag ids laid end to end (``starts`` True at each sentence's first word), as
    ``(first word, last word)`` arrays, from each tag's kind (0 = O, 1 = B, 2 = I) and type index.
    A run is a non-O word and the ``I-`` words of its type that follow it in its sentence; strict
    IOB2 (seqeval strict) keeps the runs that open with ``B-``, conlleval every run: for plain IOB2
    tags this is ``metrics.strict_entities`` and ``metrics.conlleval_entities``."""
    kind, typ = kind_of[ids], type_of[ids]
    n = len(ids)
    cont = np.zeros(n, dtype=bool)
    cont[1:] = (kind[1:] == 2) & (kind[:-1] > 0) & (typ[1:] == typ[:-1]) & ~starts[1:]
    first = np.flatnonzero(~cont)
    last = np.append(first[1:] - 1, n - 1) if n else first
    keep = kind[first] == 1 if strict else kind[first] > 0
    return first[keep], last[keep]


def _document_counts_iob2(docs: dict, sentence_doc: list, gold: list, pred: list) -> dict | None:
    """``document_counts`` with arrays over all words of the file; None when a tag is not plain
    IOB2 (``O``, ``B-<type>``, ``I-<type>``) or a sentence's prediction and gold lengths differ."""
    lengths = np.fromiter(map(len, gold), dtype=np.int64, count=len(gold))
    if not np.array_equal(lengths, np.fromiter(map(len, pred), dtype=np.int64, count=len(pred))):
        return None
    N = int(lengths.sum())
    tags = list(dict.fromkeys(itertools.chain(itertools.chain.from_iterable(gold), itertools.chain.from_iterable(pred))))
    # strict reads a type as tag[1:].strip("-"), conlleval as what follows the first "-": equal here
    if not all(t == "O" or (isinstance(t, str) and t[:1] in ("B", "I") and t[1:2] == "-"
                            and t[1:].strip("-") == t[2:] not in ("", "_")) for t in tags):
        return None
    vocabulary = {t: i for i, t in enumerate(tags)}
    g, p = (np.fromiter(map(vocabulary.__getitem__, itertools.chain.from_iterable(side)), dtype=np.int64, count=N)
            for side in (gold, pred))
    types = sorted({t[2:] for t in tags if t != "O"})
    type_of = np.asarray([types.index(t[2:]) if t != "O" else -1 for t in tags], dtype=np.int64)
    kind_of = np.asarray([{"O": 0, "B": 1, "I": 2}[t[0]] for t in tags], dtype=np.int64)
    D, T = len(docs), max(len(types), 1)
    word_doc = np.repeat(np.asarray(sentence_doc, dtype=np.int64), lengths)
    word_sentence = np.repeat(np.arange(len(gold)), lengths)
    starts = np.zeros(N, dtype=bool)
    starts[(np.cumsum(lengths) - lengths)[lengths > 0]] = True

    def per_doc(words, classes=None, size=1):  # how many of ``words`` each document has [D, 1], or per class [D, size]
        index = word_doc[words] if classes is None else word_doc[words] * size + classes
        return np.bincount(index, minlength=D * size).reshape(D, size).astype(np.int64)

    entities = {}
    for side, ids in (("gold", g), ("pred", p)):
        for strict in (True, False):
            first, last = _iob2_runs(ids, starts, kind_of, type_of, strict)
            entities[side, strict] = first, last, type_of[ids[first]], (first * N + last) * T + type_of[ids[first]]
    # strict entities per document and type: (tp, predicted, gold)
    (gf, gl, gt, gk), (pf, pl, pt, pk) = entities["gold", True], entities["pred", True]
    matched = np.isin(pk, gk, assume_unique=True)
    by_type = np.stack([per_doc(pf[matched], classes=pt[matched], size=T), per_doc(pf, classes=pt, size=T),
                        per_doc(gf, classes=gt, size=T)], axis=-1)
    present = sorted(set(gt.tolist()) | set(pt.tolist()))
    conventions = {}
    lf, _, _, lk = entities["gold", False]
    qf, _, _, qk = entities["pred", False]
    loose_matched = np.isin(qk, lk, assume_unique=True)
    conventions["conlleval"] = np.concatenate([per_doc(qf[loose_matched]), per_doc(qf), per_doc(lf)], axis=1)
    lenient = _lenient_matches((gf, gl, gt), (pf, pl, pt), word_sentence, matched, len(gold))
    lenient_by_doc = np.bincount(np.asarray(sentence_doc, dtype=np.int64), lenient, minlength=D)
    conventions["lenient"] = np.concatenate([lenient_by_doc.astype(np.int64)[:, None], per_doc(pf), per_doc(gf)], axis=1)
    words = np.arange(N)
    zeros = np.zeros((D, 1), dtype=np.int64)
    correct = g == p
    conventions["tokens"] = np.concatenate([per_doc(words[correct]), per_doc(words), zeros], axis=1)
    pk_kind, pk_type = kind_of[p], type_of[p]
    after = np.ones(N, dtype=bool)  # the previous word is O, another type, or the sentence starts
    after[1:] = (kind_of[p[:-1]] == 0) | (type_of[p[:-1]] != pk_type[1:])
    after |= starts
    inside = pk_kind == 2
    conventions["invalid"] = np.concatenate([per_doc(words[inside & after]), per_doc(words[inside]), zeros], axis=1)
    labels = sorted({tags[i] for i in np.unique(g).tolist()})
    label_index = np.asarray([labels.index(t) if t in labels else -1 for t in tags], dtype=np.int64)
    L = max(len(labels), 1)
    tokens = np.stack([per_doc(words[correct], classes=label_index[g[correct]], size=L),
                       per_doc(words, classes=label_index[g], size=L)], axis=-1)
    return {"docs": list(docs), "entities": {types[t]: np.ascontiguousarray(by_type[:, t]) for t in present},
            "tokens": {l: np.ascontiguousarray(tokens[:, i]) for i, l in enumerate(labels)},
            "conventions": conventions}


def _lenient_matches(gold, pred, word_sentence: np.ndarray, matched: np.ndarray, n_sentences: int) -> np.ndarray:
    """Per sentence, ``metrics.overlap_matches`` of its strict gold and predicted entities
    (``(first word, last word, type)`` arrays in word order; ``matched`` flags the predicted ones
    equal to a gold one). Entities of one side never overlap, so a predicted entity equal to a
    gold one overlaps nothing else and is in every largest matching: only the sentences with an
    unmatched entity on both sides need the pairing, which is ``overlap_matches``' greedy walk
    from the left within each (sentence, type), run over all of them in one pass."""
    g_sentence, p_sentence = word_sentence[gold[0]], word_sentence[pred[0]]
    out = np.bincount(p_sentence[matched], minlength=n_sentences)
    pairing = (np.bincount(p_sentence, minlength=n_sentences) > out) & (np.bincount(g_sentence, minlength=n_sentences) > out)
    sides, n_types = [], int(max(gold[2].max(initial=0), pred[2].max(initial=0))) + 1
    for (first, last, typ), sentence in ((gold, g_sentence), (pred, p_sentence)):
        keep = pairing[sentence]
        group = sentence[keep] * n_types + typ[keep]  # one (sentence, type)
        order = np.lexsort((first[keep], group))
        sides.append((group[order].tolist(), first[keep][order].tolist(), (last[keep][order] + 1).tolist(),
                      sentence[keep][order].tolist()))
    (gg, ga, gb, _), (pg, pa, pb, ps) = sides
    out[pairing] = 0
    i = j = 0
    while i < len(pg) and j < len(gg):
        if pg[i] != gg[j]:  # different (sentence, type): move the one behind
            i, j = (i + 1, j) if pg[i] < gg[j] else (i, j + 1)
        elif pa[i] < gb[j] and ga[j] < pb[i]:  # overlap
            out[ps[i]] += 1
            i, j = i + 1, j + 1
        elif pb[i] <= gb[j]:  # the predicted entity ends first: it can meet no later gold one
            i += 1
        else:
            j += 1
    return out


@functools.lru_cache(maxsize=1 << 18)
def _sentence_entities(tags: tuple) -> tuple[frozenset, frozenset]:
    """The strict IOB2 and the conlleval entities of one tag sequence. Memoised: the gold sentences
    of a study's test set repeat in every run's prediction file (and all-O predictions everywhere)."""
    return frozenset(strict_entities(tags)), frozenset(conlleval_entities(tags))


def document_counts_by_sentence(pred_file: str | os.PathLike) -> dict:
    """``document_counts`` (same return value) one sentence at a time, from ``metrics``' entity
    readers: for tag sets outside plain IOB2, and in the tests the reference the arrays must equal."""
    docs: dict[str, int] = {}
    ent: dict[str, list] = defaultdict(list)
    tok: dict[str, list] = defaultdict(list)
    per_doc_ent, per_doc_tok = [], []
    conventions = {"conlleval": [], "lenient": [], "tokens": [], "invalid": []}
    with open(pred_file, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            d = docs.setdefault(s["doc_id"], len(docs))
            if d == len(per_doc_ent):
                per_doc_ent.append(defaultdict(lambda: [0, 0, 0]))
                per_doc_tok.append(defaultdict(lambda: [0, 0]))
                for rows in conventions.values():
                    rows.append([0, 0, 0])
            tags = s["tags"] if "tags" in s else s["gold"]
            gold, loose_gold = _sentence_entities(tuple(tags))
            pred, loose_pred = _sentence_entities(tuple(s["pred"]))
            for name, row in (("conlleval", (len(loose_gold & loose_pred), len(loose_pred), len(loose_gold))),
                              ("lenient", (overlap_matches(list(gold), list(pred)), len(pred), len(gold))),
                              ("tokens", (sum(g == p for g, p in zip(tags, s["pred"])), len(tags), 0)),
                              ("invalid", (invalid_transitions(s["pred"]),
                                           sum(p.startswith("I-") for p in s["pred"]), 0))):
                conventions[name][d] = [x + y for x, y in zip(conventions[name][d], row)]
            for t, *_ in gold & pred:
                per_doc_ent[d][t][0] += 1
            for t, *_ in pred:
                per_doc_ent[d][t][1] += 1
            for t, *_ in gold:
                per_doc_ent[d][t][2] += 1
            for g, p in zip(tags, s["pred"]):
                per_doc_tok[d][g][1] += 1
                per_doc_tok[d][g][0] += int(g == p)
    types = sorted({t for c in per_doc_ent for t in c})
    labels = sorted({l for c in per_doc_tok for l in c})
    D = len(docs)
    for t in types:
        ent[t] = np.array([per_doc_ent[d][t] if t in per_doc_ent[d] else [0, 0, 0] for d in range(D)],
                          dtype=np.int64)
    for l in labels:
        tok[l] = np.array([per_doc_tok[d][l] if l in per_doc_tok[d] else [0, 0] for d in range(D)],
                          dtype=np.int64)
    return {"docs": list(docs), "entities": dict(ent), "tokens": dict(tok),
            "conventions": {k: np.array(v, dtype=np.int64).reshape(D, 3) for k, v in conventions.items()}}


@dataclass
class CountLayout:
    """How one row of stacked counts is laid out: ``types`` entity types × (tp, predicted, gold),
    then ``tags`` gold tags × (correct, gold). ``classes`` / ``tag_classes`` are the indices of
    the **fixed class sets** the macro metrics average over: the types and tags with a gold
    mention in the full test set; ``tail_classes`` those of ``classes`` that the study declared
    its tail (``[report] tail_types``, the class set of ``f1_tail``)."""

    types: list[str]
    tags: list[str]
    classes: np.ndarray
    tag_classes: np.ndarray
    tail_classes: np.ndarray = dataclasses.field(default_factory=lambda: np.arange(0))

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x [..., K]`` -> entity counts ``[..., T, 3]`` and tag counts ``[..., L, 2]``."""
        T = len(self.types)
        return (x[..., :3 * T].reshape(*x.shape[:-1], T, 3),
                x[..., 3 * T:].reshape(*x.shape[:-1], len(self.tags), 2))


def stack_counts(counts: list[dict], docs: list[str] | None = None,
                 types: list[str] | None = None, tail=None) -> tuple[np.ndarray, CountLayout]:
    """The per-document counts of several runs (``document_counts``) as one float array
    ``[runs, D, K]`` in the order of ``docs`` (default: the first run's), with its layout.
    ``types`` (default: every type gold or predicted in some run) lets two variants share one
    layout; ``tail`` names the types of ``f1_tail``. Raises ``ValueError`` when the runs were
    scored on different documents."""
    docs = list(counts[0]["docs"]) if docs is None else list(docs)
    types = sorted({t for c in counts for t in c["entities"]}) if types is None else list(types)
    tags = sorted({l for c in counts for l in c["tokens"]})
    D = len(docs)
    rows = []
    for c in counts:
        position = {d: i for i, d in enumerate(c["docs"])}
        if sorted(position) != sorted(docs):
            raise ValueError("these runs were scored on different test documents")
        order = [position[d] for d in docs]
        ent = [c["entities"][t][order] if t in c["entities"] else np.zeros((D, 3)) for t in types]
        tok = [c["tokens"][l][order] if l in c["tokens"] else np.zeros((D, 2)) for l in tags]
        rows.append(np.concatenate([np.stack(ent, 1).reshape(D, -1), np.stack(tok, 1).reshape(D, -1)], 1))
    x = np.stack(rows).astype(np.float64)
    probe = CountLayout(types, tags, np.arange(0), np.arange(0))
    ent, tok = probe.split(x[0].sum(0))
    classes = np.flatnonzero(ent[:, 2] > 0)
    tail = set(tail or ())
    layout = CountLayout(types, tags, classes, np.flatnonzero(tok[:, 1] > 0),
                         np.asarray([i for i in classes if types[i] in tail], dtype=np.int64))
    return x, layout


def class_f1(e: np.ndarray) -> np.ndarray:
    """Per-class F1 from entity counts ``[..., 3]`` (tp, predicted, gold): 2 TP / (predicted +
    gold); NaN where the class has no gold mention (undefined there, not 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(e[..., 2] > 0, 2 * e[..., 0] / (e[..., 1] + e[..., 2]), np.nan)


def per_class_scores(x: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """Per-class F1 (``f1_macro``: 2 TP / (predicted + gold); ``f1_tail``: the same over the tail
    classes) or recall (``unweighted_accuracy``: correct / gold) of the fixed class set, from summed
    counts ``x [..., K]``; NaN for a class with no gold mention in ``x`` (the score is undefined
    there, not 0)."""
    ent, tok = layout.split(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric in ("f1_macro", "f1_tail"):
            return class_f1(ent[..., layout.classes if metric == "f1_macro" else layout.tail_classes, :])
        t = tok[..., layout.tag_classes, :]
        return np.where(t[..., 1] > 0, t[..., 0] / t[..., 1], np.nan)


def scores_from_sums(x: np.ndarray, layout: CountLayout, metric: str, full: np.ndarray | None = None) -> np.ndarray:
    """One metric from summed counts ``x [..., K]`` (leading dimensions kept).

    ``f1_micro``: 2 TP / (predicted + gold) pooled over types, 0 without a true positive (as
    seqeval). ``f1_macro`` / ``f1_tail`` / ``unweighted_accuracy``: the mean over the **fixed class
    set** (all classes with test support, or the declared tail's) of per-class F1 / recall
    (``per_class_scores``). A class with no gold mention in ``x`` (a document
    resample that left out its documents) takes its value from ``full [..., K]`` (the same runs on
    the full test set, broadcast against ``x``): that resample says nothing about the class, so it
    neither drops out of the mean (which biased resampled macro scores upward) nor counts as 0."""
    if metric == "f1_micro":
        ent, _ = layout.split(x)
        tp, pred, gold = ent[..., 0].sum(-1), ent[..., 1].sum(-1), ent[..., 2].sum(-1)
        return np.where(tp > 0, 2 * tp / np.maximum(pred + gold, 1), 0.0)
    if metric not in ("f1_macro", "f1_tail", "unweighted_accuracy"):
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(METRICS)}")
    per_class = per_class_scores(x, layout, metric)
    if per_class.shape[-1] == 0:
        return np.full(per_class.shape[:-1], np.nan)
    if full is not None:
        per_class = np.where(np.isnan(per_class), per_class_scores(full, layout, metric), per_class)
    return per_class.mean(-1)


def score_runs(x: np.ndarray, weights: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """``[B, S]``: every run of ``x [S, D, K]`` scored on each document resample, given as
    multiplicities ``weights [B, D]`` (all ones: the full test set)."""
    sums = np.einsum("bd,sdk->bsk", weights, x)
    return scores_from_sums(sums, layout, metric, full=x.sum(1)[None])


def multiplicities(idx: np.ndarray, n_docs: int) -> np.ndarray:
    """Resampled document indices ``[B, D]`` -> how often each document is drawn, ``[B, D]``."""
    return np.stack([np.bincount(row, minlength=n_docs) for row in idx]).astype(np.float64)


def pseudovalues(x: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """``[S, D]``: each run's per-document jackknife pseudo-values of ``metric``
    (``stats.jackknife_pseudovalues``) from its counts ``x [S, D, K]``: the metric on all documents
    and without each one, turned into per-document values whose mean is (nearly) the metric and
    whose spread is its document variance. The leave-one-out scores keep the fixed class set
    (``scores_from_sums``), as every resample does."""
    S, D, _ = x.shape
    full = score_runs(x, np.ones((1, D)), layout, metric)[0]  # [S]
    # the counts without document d, total minus its own: the same integers the multiplicities
    # 1 - eye(D) give, in O(D) instead of O(D^2) (counts are exact in float64 in any order)
    totals = x.sum(1)[None]  # [1, S, K]
    loo_sums = np.ascontiguousarray(totals - x.transpose(1, 0, 2))  # C order, as einsum's: same float sums after
    loo = scores_from_sums(loo_sums, layout, metric, full=totals)  # [D, S]
    return stats.jackknife_pseudovalues(full, loo.T)


def variant_interval(x: np.ndarray, layout: CountLayout, metric: str,
                     confidence_level: float = 0.95) -> tuple[float, float, float, str | None]:
    """One variant's 95% interval of its mean score over seeds and test documents: ``x [S, D, K]``
    its runs' per-document counts. ``stats.crossed_t`` on the runs' pseudo-values (seeds and
    documents both samples; with one run, documents only).

    Returns ``(estimate, low, high, why_none)``: the seed mean on the full test set and its
    interval, or NaN bounds and the reason when none exists (fewer than 2 documents, an
    undefined metric)."""
    S, D, _ = x.shape
    theta = float(score_runs(x, np.ones((1, D)), layout, metric).mean())
    if D < 2:
        return theta, math.nan, math.nan, "fewer than 2 test documents"
    if math.isnan(theta):
        return theta, math.nan, math.nan, "no class of this metric has a gold mention"
    lo, hi = stats.crossed_t(pseudovalues(x, layout, metric), estimate=theta, confidence_level=confidence_level).ci
    return theta, float(lo), float(hi), None


def cv_variant_interval(x: np.ndarray, fold_of: np.ndarray, ratio: float, layout: CountLayout, metric: str,
                        confidence_level: float = 0.95) -> tuple[float, float, float, str | None]:
    """``variant_interval`` for runs pooled over cross-validation folds: the pooled seed mean, and the
    corrected resampled t (``stats.corrected_resampled_t``) over the per-(seed, fold) scores."""
    S, D, _ = x.shape
    theta = float(score_runs(x, np.ones((1, D)), layout, metric).mean())
    if math.isnan(theta):
        return theta, math.nan, math.nan, "no class of this metric has a gold mention"
    scores = fold_scores(x, fold_of, layout, metric)
    if scores.size < 2 or math.isnan(ratio):
        return theta, math.nan, math.nan, "fewer than 2 folds" if scores.size < 2 else "no fold sizes recorded"
    ci = stats.corrected_resampled_t(scores, ratio, estimate=theta, confidence_level=confidence_level).ci
    return theta, float(ci.low), float(ci.high), None


def concat_counts(per_fold: list[dict], folds: list[int]) -> dict:
    """The ``document_counts`` of disjoint test folds as one, with ``fold_of`` (the fold of each
    document, in ``docs`` order)."""
    types = sorted({t for c in per_fold for t in c["entities"]})
    labels = sorted({l for c in per_fold for l in c["tokens"]})

    def stack(part, names, width):
        return {n: np.concatenate([c[part][n] if n in c[part] else np.zeros((len(c["docs"]), width), np.int64)
                                   for c in per_fold]) for n in names}
    return {"docs": [d for c in per_fold for d in c["docs"]], "entities": stack("entities", types, 3),
            "tokens": stack("tokens", labels, 2),
            "fold_of": np.concatenate([np.full(len(c["docs"]), k) for c, k in zip(per_fold, folds)])}


def scores_of_counts(counts: dict) -> dict:
    """A results row's test scores from (pooled) per-document counts, as the training run computes them
    (seqeval's strict entity report, zero_division 0; unweighted accuracy over the gold tags, O included)."""
    per_type = {}
    tp = pred = gold = 0
    for t, e in counts["entities"].items():
        a, p, g = (int(v) for v in e.sum(0))
        tp, pred, gold = tp + a, pred + p, gold + g
        precision, recall = (a / p if p else 0.0), (a / g if g else 0.0)
        per_type[t] = {"precision": precision, "recall": recall, "support": g,
                       "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}
    precision, recall = (tp / pred if pred else 0.0), (tp / gold if gold else 0.0)
    recalls = [int(c.sum(0)[0]) / int(c.sum(0)[1]) for c in counts["tokens"].values() if c.sum(0)[1] > 0]
    return {"per_type": per_type, "precision_micro": precision, "recall_micro": recall,
            "f1_micro": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "f1_macro": float(np.mean([v["f1"] for v in per_type.values()])) if per_type else math.nan,
            "unweighted_accuracy": float(np.mean(recalls)) if recalls else math.nan}


def stacked_folds(counts: list[dict], docs: list[str]) -> np.ndarray:
    """``[runs, D]``: the fold each document was tested in, per run, in the order of ``docs``."""
    out = []
    for c in counts:
        position = {d: i for i, d in enumerate(c["docs"])}
        out.append(np.asarray(c["fold_of"])[[position[d] for d in docs]])
    return np.stack(out)


def fold_scores(x: np.ndarray, fold_of: np.ndarray, layout: CountLayout, metric: str) -> np.ndarray:
    """``[S, K]``: each run of ``x [S, D, K]`` scored on each of its test folds (``fold_of [S, D]``);
    a class with no gold mention in a fold keeps the run's pooled score there (the fixed class set)."""
    folds = sorted(set(np.unique(fold_of).tolist()))
    out = np.zeros((x.shape[0], len(folds)))
    for s in range(x.shape[0]):
        for k, f in enumerate(folds):
            out[s, k] = scores_from_sums(x[s, fold_of[s] == f].sum(0), layout, metric, full=x[s].sum(0))
    return out


def convention_scores(counts: dict) -> dict:
    """One run's scores under each scoring convention, from its ``document_counts``: micro F1
    strict / conlleval / lenient, token accuracy, and the invalid IOB2 transitions its predictions
    make (count, and share of its predicted ``I-`` tags)."""
    def f1(x):
        tp, pred, gold = x.sum(0)
        return 2 * tp / (pred + gold) if tp > 0 else 0.0

    strict = sum(e.sum(0) for e in counts["entities"].values())
    c = counts["conventions"]
    bad, inside = c["invalid"].sum(0)[:2]
    return {"strict": float(2 * strict[0] / (strict[1] + strict[2])) if strict[0] > 0 else 0.0,
            "conlleval": float(f1(c["conlleval"])), "lenient": float(f1(c["lenient"])),
            "token_accuracy": float(c["tokens"][:, 0].sum() / max(c["tokens"][:, 1].sum(), 1)),
            "invalid": int(bad), "invalid_share": float(bad / inside) if inside else 0.0}


def per_class_table(x: np.ndarray, layout: CountLayout, min_support: int) -> dict:
    """Per-class precision, recall, F1 (seed means) with a 95% interval of F1 over seeds and
    documents, from one variant's counts ``x [S, D, K]``; and macro F1 over the classes with at
    least ``min_support`` test mentions, with its interval.

    Per-class intervals: ``stats.crossed_t`` on the class's leave-one-document-out pseudo-values
    (a document without the class's gold mentions leaves its F1 as on the full test set, as the
    fixed class set does for macro F1). The restricted macro F1 is the mean of those classes' F1,
    its pseudo-values the mean of theirs."""
    S, D, _ = x.shape
    ent, _ = layout.split(x)  # [S, D, T, 3]
    full = ent.sum(1)  # [S, T, 3]
    loo = full[:, None] - ent  # [S, D, T, 3]

    f1_full = class_f1(full)  # [S, T]
    f1_loo = np.where(np.isnan(class_f1(loo)), f1_full[:, None], class_f1(loo))  # [S, D, T]
    pseudo = stats.jackknife_pseudovalues(f1_full, np.moveaxis(f1_loo, 1, -1))  # [S, T, D]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(full[..., 1] > 0, full[..., 0] / full[..., 1], 0.0).mean(0)
        recall = np.where(full[..., 2] > 0, full[..., 0] / full[..., 2], np.nan).mean(0)
    rows = {}
    kept = []
    for c in layout.classes:
        support = int(full[0, c, 2])
        ci = stats.crossed_t(pseudo[:, c], estimate=float(f1_full[:, c].mean())).ci if D >= 2 else None
        rows[layout.types[c]] = {"support": support, "precision": float(precision[c]), "recall": float(recall[c]),
                                 "f1": float(f1_full[:, c].mean()),
                                 "ci": None if ci is None or math.isnan(ci.low) else [float(ci.low), float(ci.high)],
                                 "few": support < min_support}
        if support >= min_support:
            kept.append(c)
    macro = {"classes": len(kept), "min_support": min_support, "f1": math.nan, "ci": None}
    if kept:
        estimate = float(f1_full[:, kept].mean(1).mean())
        macro["f1"] = estimate
        if D >= 2:
            ci = stats.crossed_t(pseudo[:, kept].mean(1), estimate=estimate).ci
            macro["ci"] = None if math.isnan(ci.low) else [float(ci.low), float(ci.high)]
    return {"classes": rows, "macro_supported": macro}
