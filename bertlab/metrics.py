"""Entity and token metrics for sequence labelling, numerically identical to seqeval.

Two ways to read entities out of a tag sequence:

- ``mode="strict"`` (seqeval ``mode="strict"``): an entity is exactly what the tagging scheme
  (IOB2, IOBES or BILOU) allows; a lone ``I-X`` after ``O`` is not an entity in IOB2, and in IOBES a
  ``B-X`` with no closing ``E-X`` is dropped. Tags whose prefix the scheme does not allow (``E-X`` in
  IOB2) raise ``ValueError``, as seqeval does.
- ``mode="conlleval"`` (seqeval's default, the CoNLL-2000 ``conlleval`` script): tolerant; a lone
  ``I-X`` starts an entity and an entity ends wherever the type changes.

``entity_report`` returns seqeval's ``classification_report(..., output_dict=True)`` layout.
A worked example that differs between the two modes is in docs/evaluation.md.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SCHEMES = ("IOB2", "IOBES", "BILOU")
MODES = ("strict", "conlleval")

# Strict schemes, transcribed from seqeval/scheme.py. Each pattern is (previous prefixes, current
# prefixes, type condition); "*" is any prefix, and the condition compares the two tokens' types.
_ANY = "*"
_SCHEME_RULES = {
    "IOB2": dict(
        allowed="IOB",
        start=[(_ANY, "B", "any")],
        inside=[("B", "I", "same"), ("I", "I", "same")],
        end=[("I", "O", "any"), ("I", "I", "diff"), ("I", "B", "any"),
             ("B", "O", "any"), ("B", "I", "diff"), ("B", "B", "any")],
    ),
    "IOBES": dict(
        allowed="IOBES",
        start=[(_ANY, "B", "any"), (_ANY, "S", "any")],
        inside=[("B", "I", "same"), ("B", "E", "same"), ("I", "I", "same"), ("I", "E", "same")],
        end=[("S", _ANY, "any"), ("E", _ANY, "any")],
    ),
    "BILOU": dict(
        allowed="BILOU",
        start=[(_ANY, "B", "any"), (_ANY, "U", "any")],
        inside=[("B", "I", "same"), ("B", "L", "same"), ("I", "I", "same"), ("I", "L", "same")],
        end=[("U", _ANY, "any"), ("L", _ANY, "any")],
    ),
}
_PREFIXES = "IOBESUL"  # every prefix seqeval knows; others are a KeyError there, a ValueError here


def _matches(patterns, prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    for prev_prefix, cur_prefix, cond in patterns:
        if prev_prefix != _ANY and prev[0] != prev_prefix:
            continue
        if cur_prefix != _ANY and cur[0] != cur_prefix:
            continue
        if cond == "any" or (cond == "same") == (prev[1] == cur[1]):
            return True
    return False


def _strict_token(tag: str, scheme: str, where: str) -> tuple[str, str]:
    """(prefix, type) as seqeval.scheme.Token reads it: type = tag[1:].strip('-') or '_'."""
    if not tag or tag[0] not in _PREFIXES or tag[0] not in _SCHEME_RULES[scheme]["allowed"]:
        raise ValueError(f"invalid tag {tag!r} {where} for scheme {scheme}: allowed prefixes are "
                         f"{', '.join(_SCHEME_RULES[scheme]['allowed'])}")
    return tag[0], tag[1:].strip("-") or "_"


def strict_entities(tags: Sequence[str], scheme: str = "IOB2") -> list[tuple[str, int, int]]:
    """Entities of one sentence under a strict scheme: a list of ``(type, start, end)``, ``end``
    exclusive, in order. Same algorithm as seqeval's ``Tokens.entities`` (a start token, then the
    longest run of inside tokens, kept only if the token after the run closes it)."""
    if scheme not in _SCHEME_RULES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    rules = _SCHEME_RULES[scheme]
    outside = ("O", "_")
    tokens = [_strict_token(t, scheme, f"at position {i}") for i, t in enumerate(tags)] + [outside]
    entities = []
    i, prev = 0, outside
    while i < len(tokens):
        token = tokens[i]
        if _matches(rules["start"], prev, token):
            end, inner = i + 1, token
            # the appended "O" is never an inside token, so this loop stops inside `tokens`
            while _matches(rules["inside"], inner, tokens[end]):
                inner = tokens[end]
                end += 1
            if _matches(rules["end"], tokens[end - 1], tokens[end]):
                entities.append((token[1], i, end))
            i = end
        else:
            i += 1
        prev = tokens[i - 1]
    return entities


def _conlleval_split(tag: str) -> tuple[str, str]:
    """(prefix letter, type) as seqeval's get_entities reads it: type = tag[1:] after one '-'."""
    if not tag:
        raise ValueError("empty tag string; expected 'O' or '<prefix>-<type>'")
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def conlleval_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of a tag sequence the conlleval way (seqeval's default ``get_entities``): a list
    of ``(type, start, end)``, ``end`` exclusive. Accepts IOB1/IOB2/IOBES tags; never raises on
    an invalid transition (``O I-X`` starts an entity, ``B-X I-Y`` is two entities)."""
    entities = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag, type_ = _conlleval_split(chunk)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def _check_pair(true_tags, pred_tags) -> None:
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"true_tags has {len(true_tags)} sequences but pred_tags has {len(pred_tags)}")
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if isinstance(t, str) or isinstance(p, str):
            raise TypeError(f"sequence {i} is a string; expected a list of tag sequences (list of lists)")
        if len(t) != len(p):
            raise ValueError(f"sequence {i}: {len(t)} true tags but {len(p)} predicted tags")


def corpus_entities(sequences: Sequence[Sequence[str]], scheme: str = "IOB2",
                    mode: str = "strict") -> set[tuple[str, int, int, int]]:
    """All entities of a list of sentences as a set of ``(type, sentence, start, end)``, ``end``
    exclusive and local to the sentence.

    In conlleval mode the sentences are joined with an ``O`` between them, exactly as seqeval does;
    that ``O`` closes every real entity, so each entity lies in one sentence (only tags with an unknown
    prefix and no type, such as a bare ``U``, could run on, and keep seqeval's numbering)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "strict":
        return {(typ, s, start, end) for s, seq in enumerate(sequences)
                for typ, start, end in strict_entities(seq, scheme)}
    flat, offsets = [], []
    for seq in sequences:
        offsets.append(len(flat))
        flat.extend(seq)
        flat.append("O")
    out = set()
    for typ, start, end in conlleval_entities(flat):
        s = int(np.searchsorted(offsets, start, side="right")) - 1
        out.add((typ, s, start - offsets[s], end - offsets[s]))
    return out


# ---------------------------------------------------------------------------------------------
# entity-level report


class Report(dict):
    """A classification report: a plain dict (seqeval's / sklearn's ``output_dict`` layout) that
    prints as the familiar text table."""

    digits = 4

    def __str__(self) -> str:
        return format_report(self, digits=self.digits)


def format_report(report: dict, digits: int = 4) -> str:
    """The text table of a report dict, laid out like seqeval's ``classification_report``."""
    summary = ("accuracy", "micro avg", "macro avg", "weighted avg")
    width = max([len(n) for n in report] + [len("weighted avg"), digits])
    head = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in ("precision", "recall", "f1-score", "support"))
    lines = [head, ""]
    blank_done = False
    for name, row in report.items():
        if name in summary and not blank_done:
            lines.append("")
            blank_done = True
        if isinstance(row, dict):
            lines.append(f"{name:>{width}s} " + "".join(
                f" {row[k]:>9.{digits}f}" for k in ("precision", "recall", "f1-score")) + f" {row['support']:>9}")
        else:  # sklearn's "accuracy" entry: a single number
            lines.append(f"{name:>{width}s} " + " " * 20 + f" {row:>9.{digits}f}")
    return "\n".join(lines) + "\n"


def _zero_value(zero_division) -> float:
    if zero_division not in ("warn", 0, 1):
        raise ValueError(f"zero_division must be 'warn', 0 or 1, not {zero_division!r}")
    return 1.0 if zero_division == 1 else 0.0


def _divide(num: np.ndarray, den: np.ndarray, zero_value: float) -> np.ndarray:
    out = num / np.where(den == 0, 1, den)
    out[den == 0] = zero_value
    return out


def _prf(tp, n_pred, n_true, zero_value):
    """Precision, recall and F1 arrays in seqeval's (sklearn 0.2x's) arithmetic, so results are
    bit-identical: F1 = 2·P·R / (P + R), 0 when P + R = 0."""
    p = _divide(tp, n_pred, zero_value)
    r = _divide(tp, n_true, zero_value)
    den = p + r
    den[den == 0.0] = 1
    return p, r, 2.0 * p * r / den


def scores_from_counts(types: Sequence[str], tp, n_pred, n_true, zero_division="warn") -> Report:
    """An entity report from per-type counts (true positives, predicted, gold), with micro, macro
    and support-weighted averages computed exactly as seqeval computes them."""
    zv = _zero_value(zero_division)
    tp, n_pred, n_true = (np.asarray(a, dtype=np.int64) for a in (tp, n_pred, n_true))
    p, r, f = _prf(tp, n_pred, n_true, zv)
    report = Report()
    for i, typ in enumerate(types):
        report[typ] = {"precision": float(p[i]), "recall": float(r[i]), "f1-score": float(f[i]),
                       "support": int(n_true[i])}
    mp, mr, mf = _prf(tp.sum(keepdims=True), n_pred.sum(keepdims=True), n_true.sum(keepdims=True), zv)
    report["micro avg"] = {"precision": float(mp[0]), "recall": float(mr[0]), "f1-score": float(mf[0]),
                           "support": int(n_true.sum())}
    if len(types) == 0:
        nan = float("nan")  # seqeval averages an empty array here (numpy's nan)
        report["macro avg"] = {"precision": nan, "recall": nan, "f1-score": nan, "support": 0}
    else:
        report["macro avg"] = {"precision": float(np.average(p)), "recall": float(np.average(r)),
                               "f1-score": float(np.average(f)), "support": int(n_true.sum())}
    if n_true.sum() == 0:
        # seqeval's rule when no gold entity exists: P and F1 are the zero_division value only if
        # nothing was predicted either, R is always the zero_division value
        none_pred = n_pred.sum() == 0
        report["weighted avg"] = {"precision": zv if none_pred else 0.0, "recall": zv,
                                  "f1-score": zv if none_pred else 0.0, "support": 0}
    else:
        report["weighted avg"] = {k: float(np.average(v, weights=n_true))
                                  for k, v in (("precision", p), ("recall", r), ("f1-score", f))}
        report["weighted avg"]["support"] = int(n_true.sum())
    return report


def entity_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                  scheme: str = "IOB2", mode: str = "strict", zero_division="warn",
                  digits: int = 4) -> Report:
    """Entity-level precision, recall, F1 and support per type, plus micro/macro/weighted averages.

    ``true_tags``, ``pred_tags``: lists of tag sequences (one list of strings per sentence).
    ``mode="strict"`` equals ``seqeval.metrics.classification_report(y_true, y_pred,
    mode="strict", scheme=<scheme>, output_dict=True)``; ``mode="conlleval"`` equals the call
    without ``mode`` (``scheme`` is then unused). Types found only in the predictions appear with
    support 0. ``zero_division``: value of an undefined ratio, ``"warn"`` (acts as 0, no warning is
    printed) / 0 / 1, as in seqeval. Returns a :class:`Report` (a dict, printable as a table with
    ``digits`` decimals).
    """
    _check_pair(true_tags, pred_tags)
    gold = corpus_entities(true_tags, scheme, mode)
    pred = corpus_entities(pred_tags, scheme, mode)
    n_true, n_pred, tp = Counter(e[0] for e in gold), Counter(e[0] for e in pred), Counter(e[0] for e in gold & pred)
    types = sorted(set(n_true) | set(n_pred))
    report = scores_from_counts(types, [tp[t] for t in types], [n_pred[t] for t in types],
                                [n_true[t] for t in types], zero_division)
    report.digits = digits
    return report


def entity_counts(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                  scheme: str = "IOB2", mode: str = "strict") -> np.ndarray:
    """Per-sequence entity counts, an int array ``[n_sequences, 3]`` of (tp, fp, fn).

    Summed over rows they give the micro-averaged counts of ``entity_report``; group the rows by
    document to bootstrap over documents (see ``bertlab.stats.bootstrap_ci``)."""
    _check_pair(true_tags, pred_tags)
    gold = corpus_entities(true_tags, scheme, mode)
    pred = corpus_entities(pred_tags, scheme, mode)
    counts = np.zeros((len(true_tags), 3), dtype=np.int64)
    for col, entities in ((0, gold & pred), (1, pred - gold), (2, gold - pred)):
        for e in entities:
            counts[e[1], col] += 1
    return counts


def overlap_matches(gold: Sequence[tuple[str, int, int]], pred: Sequence[tuple[str, int, int]]) -> int:
    """The number of pairs in a largest one-to-one matching of predicted to gold entities of one
    sequence that have the **same type and overlap** by at least one word (lenient, i2b2-style
    "inexact" matching). ``gold``, ``pred``: ``(type, start, end)`` with ``end`` exclusive.

    Entities of one side of one sequence never overlap each other, so per type both sides are
    disjoint intervals in order, and matching them greedily from the left is a largest matching
    (a matched pair ends no later than any pair it could block; tests/test_metrics.py checks it
    against brute force over every matching)."""
    total = 0
    for typ in {e[0] for e in gold} & {e[0] for e in pred}:
        g = sorted((a, b) for t, a, b in gold if t == typ)
        p = sorted((a, b) for t, a, b in pred if t == typ)
        i = j = 0
        while i < len(p) and j < len(g):
            if p[i][0] < g[j][1] and g[j][0] < p[i][1]:  # overlap
                total += 1
                i += 1
                j += 1
            elif p[i][1] <= g[j][1]:  # p ends first: it can meet no later gold that g cannot
                i += 1
            else:
                j += 1
    return total


def lenient_counts(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                   scheme: str = "IOB2", mode: str = "strict") -> np.ndarray:
    """Per-sequence lenient entity counts ``[n_sequences, 3]`` of (tp, fp, fn): tp the pairs of
    ``overlap_matches`` (same type, at least one shared word, each entity used once), fp the
    predicted entities left unmatched, fn the gold ones. Entities are read out as ``mode`` says
    (strict IOB2 by default). Precision tp / (tp + fp) and recall tp / (tp + fn) are the i2b2-style
    "inexact" scores; ``micro_f1`` of the summed rows is the lenient micro F1."""
    _check_pair(true_tags, pred_tags)
    read = (lambda seq: strict_entities(seq, scheme)) if mode == "strict" else conlleval_entities
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    counts = np.zeros((len(true_tags), 3), dtype=np.int64)
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        gold, pred = read(t), read(p)
        tp = overlap_matches(gold, pred)
        counts[i] = (tp, len(pred) - tp, len(gold) - tp)
    return counts


def invalid_transitions(tags: Sequence[str]) -> int:
    """How many tags of one IOB2 sequence break the scheme: an ``I-X`` that does not follow
    ``B-X`` or ``I-X`` (a sentence start counts as ``O``). Strict scoring drops such a tag's
    entity silently, conlleval starts an entity at it; the count shows how often a decoder emits
    what its tagging scheme forbids."""
    bad, prev = 0, "O"
    for tag in tags:
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            bad += 1
        prev = tag
    return bad


def micro_f1(counts: np.ndarray) -> float:
    """Micro F1 from summed (tp, fp, fn) counts ``[..., 3]``: 2·tp / (2·tp + fp + fn), 0 if empty."""
    tp, fp, fn = np.asarray(counts).reshape(-1, 3).sum(axis=0)
    return 0.0 if tp == 0 else float(2 * tp / (2 * tp + fp + fn))


# ---------------------------------------------------------------------------------------------
# token-level report, balanced ("unweighted") accuracy, confusion matrices


def entity_type(tag: str) -> str:
    """The type of a tag, B/I/E/S/L/U prefix dropped: ``"B-Disease" -> "Disease"``, ``"O" -> "O"``."""
    return tag if tag == "O" else tag.split("-", maxsplit=1)[-1]


def _flat_tokens(true_tags, pred_tags, collapse: bool):
    _check_pair(true_tags, pred_tags)
    y_true = [t for seq in true_tags for t in seq]
    y_pred = [t for seq in pred_tags for t in seq]
    if collapse:
        y_true, y_pred = [entity_type(t) for t in y_true], [entity_type(t) for t in y_pred]
    return y_true, y_pred


def _label_order(labels) -> list[str]:
    """``O`` first, then the rest sorted: label id 0 is always ``O`` in bertlab."""
    labels = set(labels)
    return (["O"] if "O" in labels else []) + sorted(labels - {"O"})


def token_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                 collapse: bool = False, zero_division="warn", digits: int = 4) -> Report:
    """Token-level precision, recall, F1 and support per label, with accuracy and macro and
    weighted averages: sklearn's ``classification_report(y_true, y_pred, output_dict=True)`` on the
    flattened tags (labels sorted as sklearn sorts them). ``collapse=True`` scores entity types
    instead of tags (``B-X`` and ``I-X`` both count as ``X``)."""
    y_true, y_pred = _flat_tokens(true_tags, pred_tags, collapse)
    labels = sorted(set(y_true) | set(y_pred))
    cm = _confusion(y_true, y_pred, labels)
    zv = _zero_value(zero_division)
    tp, n_pred, n_true = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    p, r, f = _prf(tp, n_pred, n_true, zv)
    report = Report()
    for i, label in enumerate(labels):
        report[label] = {"precision": float(p[i]), "recall": float(r[i]), "f1-score": float(f[i]),
                         "support": int(n_true[i])}
    report["accuracy"] = float(tp.sum() / max(len(y_true), 1))
    total = int(n_true.sum())
    report["macro avg"] = {"precision": float(p.mean()), "recall": float(r.mean()),
                           "f1-score": float(f.mean()), "support": total}
    w = n_true / total if total else np.zeros(len(labels))
    report["weighted avg"] = {"precision": float(p @ w), "recall": float(r @ w),
                              "f1-score": float(f @ w), "support": total}
    report.digits = digits
    return report


def unweighted_accuracy(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                        include_o: bool = True, collapse: bool = False) -> float:
    """Unweighted accuracy: the mean over classes of per-class recall (balanced accuracy), each
    class counting the same however rare it is.

    Classes are the labels present in the gold tags (a label only ever predicted has no recall).
    ``include_o=True`` (default) averages over every gold label including ``O`` — sklearn's
    ``balanced_accuracy_score`` on the flattened tags; ``include_o=False`` averages over the entity
    labels only (a token of ``B-X`` predicted ``O`` still counts as a miss). ``collapse=True``
    scores entity types instead of B/I tags."""
    y_true, y_pred = _flat_tokens(true_tags, pred_tags, collapse)
    labels = sorted(set(y_true) | set(y_pred))
    cm = _confusion(y_true, y_pred, labels)
    support = cm.sum(axis=1)
    keep = (support > 0) & np.array([include_o or label != "O" for label in labels], dtype=bool)
    if not keep.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[keep] / support[keep]))


def _confusion(y_true: list[str], y_pred: list[str], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    t = np.fromiter((index[y] for y in y_true), dtype=np.int64, count=len(y_true))
    p = np.fromiter((index[y] for y in y_pred), dtype=np.int64, count=len(y_pred))
    return np.bincount(t * len(labels) + p, minlength=len(labels) ** 2).reshape(len(labels), len(labels))


@dataclass
class ConfusionMatrix:
    """Counts ``matrix[i, j]`` of items whose gold label is ``rows[i]`` and prediction ``cols[j]``."""

    rows: list[str]
    cols: list[str]
    matrix: np.ndarray

    def __str__(self) -> str:
        corner = "gold \\ pred"
        width = max(len(c) for c in self.cols + self.rows + [corner])
        cell = max(width, len(str(int(self.matrix.max(initial=0)))))
        lines = [f"{corner:>{width}s} " + " ".join(f"{c:>{cell}s}" for c in self.cols)]
        for name, row in zip(self.rows, self.matrix):
            lines.append(f"{name:>{width}s} " + " ".join(f"{int(v):>{cell}d}" for v in row))
        return "\n".join(lines)


def confusion_matrix(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                     level: str = "token", collapse: bool = True, scheme: str = "IOB2",
                     mode: str = "strict") -> ConfusionMatrix:
    """Confusion matrix over labels, gold in rows, prediction in columns.

    ``level="token"``: one count per token; labels are entity types (``collapse=True``, B/I merged)
    or tags, ``O`` first. ``level="entity"``: one count per entity, matched on its exact span; a
    gold entity whose span no prediction has is counted in the ``"missed"`` column, a predicted
    entity with no gold span in the ``"spurious"`` row. The diagonal is then the per-type true
    positives of ``entity_report``, a row sums to the type's support, a column (with the spurious
    row) to its predicted count. ``scheme``/``mode`` are as in ``entity_report``."""
    if level == "token":
        y_true, y_pred = _flat_tokens(true_tags, pred_tags, collapse)
        labels = _label_order(set(y_true) | set(y_pred))
        return ConfusionMatrix(labels, list(labels), _confusion(y_true, y_pred, labels))
    if level != "entity":
        raise ValueError(f"level must be 'token' or 'entity', not {level!r}")
    _check_pair(true_tags, pred_tags)
    gold = {e[1:]: e[0] for e in corpus_entities(true_tags, scheme, mode)}
    pred = {e[1:]: e[0] for e in corpus_entities(pred_tags, scheme, mode)}
    types = sorted(set(gold.values()) | set(pred.values()))
    rows, cols = types + ["spurious"], types + ["missed"]
    r_index, c_index = {t: i for i, t in enumerate(rows)}, {t: i for i, t in enumerate(cols)}
    matrix = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for span, typ in gold.items():
        matrix[r_index[typ], c_index[pred.get(span, "missed")]] += 1
    for span, typ in pred.items():
        if span not in gold:
            matrix[r_index["spurious"], c_index[typ]] += 1
    return ConfusionMatrix(rows, cols, matrix)


def plot_confusion_matrix(cm: ConfusionMatrix, normalize: bool = False, ax=None):
    """Draw a confusion matrix as a heat map with counts (or row fractions if ``normalize``);
    returns the matplotlib Axes. Needs matplotlib (``pip install bertlab[plot]``)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plot_confusion_matrix needs matplotlib: pip install 'bertlab[plot]'") from err
    values = cm.matrix.astype(float)
    if normalize:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.6 * len(cm.cols), 1 + 0.5 * len(cm.rows)))
    ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(cm.cols)), cm.cols, rotation=45, ha="right")
    ax.set_yticks(range(len(cm.rows)), cm.rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    top = values.max(initial=0)
    for (i, j), v in np.ndenumerate(values):
        text = f"{v:.2f}" if normalize else f"{int(v)}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if top and v > top / 2 else "black")
    return ax


def group_by_document(doc_ids: Sequence[str], rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sum per-sentence rows (e.g. ``entity_counts``) into per-document rows, documents in order of
    first appearance: the resampling units for a document bootstrap."""
    order: dict[str, int] = {}
    for d in doc_ids:
        order.setdefault(d, len(order))
    out = np.zeros((len(order),) + np.shape(rows)[1:], dtype=np.asarray(rows).dtype)
    np.add.at(out, np.fromiter((order[d] for d in doc_ids), dtype=np.int64, count=len(doc_ids)), rows)
    return list(order), out


__all__ = ["entity_report", "token_report", "unweighted_accuracy", "confusion_matrix",
           "plot_confusion_matrix", "ConfusionMatrix", "Report", "format_report", "entity_counts",
           "micro_f1", "group_by_document", "strict_entities", "conlleval_entities",
           "corpus_entities", "scores_from_counts", "entity_type", "SCHEMES", "MODES", "overlap_matches",
           "lenient_counts", "invalid_transitions"]
