"""bertlab.metrics against seqeval (entity level) and scikit-learn (token level)."""
import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics.sequence_labeling import get_entities as seqeval_get_entities
from seqeval.scheme import BILOU, IOB2, IOBES, Entities
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.metrics import classification_report as sklearn_report
from sklearn.metrics import confusion_matrix as sklearn_confusion

from bertlab import metrics
from bertlab.metrics import confusion_matrix, entity_counts, entity_report, token_report, unweighted_accuracy

BUNDLED = Path(__file__).resolve().parents[1] / "bertlab" / "datasets" / "data"  # shipped corpora
SEQEVAL_SCHEMES = {"IOB2": IOB2, "IOBES": IOBES, "BILOU": BILOU}
PREFIXES = {"IOB2": "BIO", "IOBES": "BIOES", "BILOU": "BILOU"}


def reference(y_true, y_pred, scheme, mode, zero_division="warn"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval/sklearn warn on undefined ratios and odd tags
        if mode == "strict":
            return seqeval_report(y_true, y_pred, mode="strict", scheme=SEQEVAL_SCHEMES[scheme],
                                  output_dict=True, zero_division=zero_division)
        return seqeval_report(y_true, y_pred, output_dict=True, zero_division=zero_division)


def assert_same_report(ours, ref):
    assert list(ours) == list(ref), (list(ours), list(ref))
    for name, row in ref.items():
        for key, value in row.items():
            mine = ours[name][key]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(mine), (name, key)
            else:
                # the same arithmetic in the same order: bit-identical, not merely close
                assert mine == value, (name, key, mine, value)


def random_corpus(rng: random.Random, prefixes: str, types=("A", "B", "Cx"), extra=()):
    """A corpus of random, mostly invalid, tag sequences: every transition occurs."""
    tags = ["O"] + [f"{p}-{t}" for p in prefixes.replace("O", "") for t in types] + list(extra)
    weights = [3.0] + [1.0] * (len(tags) - 1)
    n_sent = rng.randint(1, 6)
    corpus = [rng.choices(tags, weights, k=rng.randint(0, 12)) for _ in range(n_sent)]
    return corpus, tags, weights


def perturb(rng: random.Random, corpus, tags, weights, rate):
    return [[rng.choices(tags, weights)[0] if rng.random() < rate else t for t in seq] for seq in corpus]


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES", "BILOU"])
def test_strict_mode_equals_seqeval_on_random_sequences(scheme):
    rng = random.Random(hash(scheme) % 1000)
    for case in range(400):
        y_true, tags, weights = random_corpus(rng, PREFIXES[scheme])
        y_pred = perturb(rng, y_true, tags, weights, rate=rng.choice([0.0, 0.2, 0.6, 1.0]))
        zero_division = rng.choice(["warn", 0, 1])
        assert_same_report(entity_report(y_true, y_pred, scheme=scheme, mode="strict", zero_division=zero_division),
                           reference(y_true, y_pred, scheme, "strict", zero_division))


@pytest.mark.parametrize("prefixes", ["BIO", "BIOES"])
def test_conlleval_mode_equals_seqeval_on_random_sequences(prefixes):
    rng = random.Random(len(prefixes))
    # tags seqeval only warns about (no type, unknown prefix) must not change the agreement
    extra = ("B", "I", "U-A", "U", "L-Cx")
    for case in range(400):
        y_true, tags, weights = random_corpus(rng, prefixes, extra=extra)
        y_pred = perturb(rng, y_true, tags, weights, rate=rng.choice([0.0, 0.2, 0.6, 1.0]))
        zero_division = rng.choice(["warn", 0, 1])
        assert_same_report(entity_report(y_true, y_pred, mode="conlleval", zero_division=zero_division),
                           reference(y_true, y_pred, None, "conlleval", zero_division))


def test_conlleval_entities_equal_seqeval_get_entities():
    rng = random.Random(7)
    tags = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B", "I", "B", "U"]
    for _ in range(2000):
        seq = rng.choices(tags, k=rng.randint(0, 15))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = [(t, s, e + 1) for t, s, e in seqeval_get_entities(seq)]
        assert metrics.conlleval_entities(seq) == ref


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES", "BILOU"])
def test_strict_entities_equal_seqeval_tokens(scheme):
    rng = random.Random(11)
    tags = ["O"] + [f"{p}-{t}" for p in PREFIXES[scheme].replace("O", "") for t in "XY"]
    for _ in range(2000):
        seq = rng.choices(tags, k=rng.randint(0, 15))
        ref = [(e.tag, e.start, e.end) for e in Entities([seq], SEQEVAL_SCHEMES[scheme]).entities[0]]
        assert metrics.strict_entities(seq, scheme) == ref


@pytest.mark.parametrize("scheme,bad", [("IOB2", "E-X"), ("IOB2", "S-X"), ("IOBES", "L-X"), ("BILOU", "E-X")])
def test_strict_mode_rejects_prefixes_the_scheme_does_not_allow(scheme, bad):
    y = [["O", "B-X", bad, "O"]]
    with pytest.raises(ValueError):
        reference(y, y, scheme, "strict")
    with pytest.raises(ValueError, match="invalid tag"):
        entity_report(y, y, scheme=scheme)


def test_predicted_only_types_get_support_zero_and_empty_corpora():
    y_true, y_pred = [["O", "O"]], [["B-New", "O"]]
    for zd in ("warn", 0, 1):
        for mode in ("strict", "conlleval"):
            report = entity_report(y_true, y_pred, mode=mode, zero_division=zd)
            assert report["New"]["support"] == 0
            assert_same_report(report, reference(y_true, y_pred, "IOB2", mode, zd))
    # no entity anywhere: macro average of nothing is nan, as in seqeval
    empty = entity_report([["O"]], [["O"]])
    assert_same_report(empty, reference([["O"]], [["O"]], "IOB2", "strict"))
    assert math.isnan(empty["macro avg"]["f1-score"])


def read_conll_tags(path: Path, column: int = -1):
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(line.split("\t")[column])
    if current:
        sentences.append(current)
    return sentences


@pytest.mark.parametrize("corpus", ["ncbi_disease", "bionlp13cg"])
def test_real_corpus_tags_with_perturbed_predictions(corpus):
    y_true = read_conll_tags(BUNDLED / corpus / "devel.tsv")
    assert sum(map(len, y_true)) > 20000
    labels = sorted({t for seq in y_true for t in seq})
    rng = random.Random(3)
    # perturbations a tagger makes: a wrong label, a boundary shifted, an I- without its B-
    y_pred = []
    for seq in y_true:
        pred = list(seq)
        for i in range(len(pred)):
            u = rng.random()
            if u < 0.05:
                pred[i] = rng.choice(labels)
            elif u < 0.08 and pred[i].startswith("B-"):
                pred[i] = "I-" + pred[i][2:]
            elif u < 0.10 and i + 1 < len(pred):
                pred[i], pred[i + 1] = pred[i + 1], pred[i]
        y_pred.append(pred)
    for mode in ("strict", "conlleval"):
        ours = entity_report(y_true, y_pred, mode=mode)
        assert_same_report(ours, reference(y_true, y_pred, "IOB2", mode))
        assert 0.5 < ours["micro avg"]["f1-score"] < 0.99
    assert entity_report(y_true, y_pred, mode="strict")["micro avg"]["f1-score"] != \
        entity_report(y_true, y_pred, mode="conlleval")["micro avg"]["f1-score"]


# The CoNLL-2000 documentation example as published with the numbers conlleval prints for it
# (README of kaniblu/conlleval, a line-for-line port of conlleval.perl):
#   processed 28 tokens with 15 phrases; found: 16 phrases; correct: 14.
#   accuracy:  82.14%; precision:  87.50%; recall:  93.33%; FB1:  90.32
#                  NP: precision: 100.00%; recall: 100.00%; FB1: 100.00  9
#                  PP: precision:  66.67%; recall: 100.00%; FB1:  80.00  3
#                  VP: precision:  75.00%; recall:  75.00%; FB1:  75.00  4
CONLLEVAL_EXAMPLE = """\
Rockwell NNP B-NP I-NP
International NNP I-NP I-NP
Corp. NNP I-NP I-NP
's POS B-NP B-NP
Tulsa NNP I-NP I-NP
unit NN I-NP I-NP
said VBD B-VP B-VP
it PRP B-NP B-NP
signed VBD B-VP B-VP
a DT B-NP B-NP
tentative JJ I-NP I-NP
agreement NN I-NP I-NP
extending VBG B-VP B-VP
its PRP$ B-NP B-NP
contract NN I-NP I-NP
with IN B-PP B-PP
Boeing NNP B-NP I-NP
Co. NNP I-NP I-NP
to TO B-VP B-PP
provide VB I-VP I-VP
structural JJ B-NP I-NP
parts NNS I-NP I-NP
for IN B-PP B-PP
Boeing NNP B-NP I-NP
's POS B-NP B-NP
747 CD I-NP I-NP
jetliners NNS I-NP I-NP
. . O O"""


def test_conlleval_published_example():
    rows = [line.split() for line in CONLLEVAL_EXAMPLE.splitlines()]
    y_true, y_pred = [[r[2] for r in rows]], [[r[3] for r in rows]]
    report = entity_report(y_true, y_pred, mode="conlleval")
    published = {"micro avg": (87.50, 93.33, 90.32, 15), "NP": (100.00, 100.00, 100.00, 9),
                 "PP": (66.67, 100.00, 80.00, 2), "VP": (75.00, 75.00, 75.00, 4)}
    for name, (p, r, f, support) in published.items():
        row = report[name]
        assert (round(100 * row["precision"], 2), round(100 * row["recall"], 2),
                round(100 * row["f1-score"], 2)) == (p, r, f), name
        assert row["support"] == support
    assert list(report) == ["NP", "PP", "VP", "micro avg", "macro avg", "weighted avg"]
    found = sum(round(report[t]["recall"] * report[t]["support"] / report[t]["precision"]) for t in ("NP", "PP", "VP"))
    assert found == 16  # conlleval's "found: 16 phrases" (NP 9, PP 3, VP 4)
    assert round(100 * token_report(y_true, y_pred)["accuracy"], 2) == 82.14
    # strict IOB2 drops the predicted chunks that start with I-NP: the modes really differ here
    strict = entity_report(y_true, y_pred, mode="strict")
    assert strict["NP"]["precision"] == 1.0 and strict["NP"]["recall"] == 5 / 9


def test_report_prints_as_a_table():
    text = str(entity_report([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]]))
    assert "precision" in text and "weighted avg" in text and "PER" in text and "1.0000" in text


def random_token_corpus(rng: np.random.Generator, n_labels: int):
    labels = ["O"] + [f"{p}-T{k}" for k in range(n_labels) for p in "BI"]
    probs = rng.dirichlet(np.ones(len(labels)))
    lengths = rng.integers(1, 20, size=rng.integers(1, 30))
    y_true = [[str(t) for t in rng.choice(labels, size=n, p=probs)] for n in lengths]
    y_pred = [[t if rng.random() < 0.6 else str(rng.choice(labels)) for t in seq] for seq in y_true]
    return y_true, y_pred


def test_token_report_equals_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(150):
        y_true, y_pred = random_token_corpus(rng, int(rng.integers(1, 5)))
        collapse = bool(rng.integers(2))
        ours = token_report(y_true, y_pred, collapse=collapse)
        flat_t = [metrics.entity_type(t) if collapse else t for s in y_true for t in s]
        flat_p = [metrics.entity_type(t) if collapse else t for s in y_pred for t in s]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = sklearn_report(flat_t, flat_p, output_dict=True, zero_division=0)
        assert list(ours) == list(ref)
        for name, row in ref.items():
            if name == "accuracy":
                assert ours[name] == pytest.approx(row, abs=1e-12)
                continue
            for key, value in row.items():
                assert ours[name][key] == pytest.approx(value, abs=1e-12), (name, key)


def test_unweighted_accuracy_is_balanced_accuracy():
    rng = np.random.default_rng(1)
    for _ in range(150):
        y_true, y_pred = random_token_corpus(rng, int(rng.integers(1, 5)))
        flat_t = [t for s in y_true for t in s]
        flat_p = [t for s in y_pred for t in s]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = balanced_accuracy_score(flat_t, flat_p)
            entity_labels = sorted(set(flat_t) - {"O"})
            ref_no_o = recall_score(flat_t, flat_p, labels=entity_labels, average="macro") if entity_labels else np.nan
        assert unweighted_accuracy(y_true, y_pred) == pytest.approx(ref, abs=1e-12)
        assert unweighted_accuracy(y_true, y_pred, include_o=False) == pytest.approx(ref_no_o, abs=1e-12, nan_ok=True)


def test_token_confusion_matrix_equals_sklearn():
    rng = np.random.default_rng(2)
    for _ in range(100):
        y_true, y_pred = random_token_corpus(rng, int(rng.integers(1, 5)))
        for collapse in (False, True):
            cm = confusion_matrix(y_true, y_pred, collapse=collapse)
            flat_t = [metrics.entity_type(t) if collapse else t for s in y_true for t in s]
            flat_p = [metrics.entity_type(t) if collapse else t for s in y_pred for t in s]
            assert cm.rows[0] == "O" or "O" not in cm.rows
            np.testing.assert_array_equal(cm.matrix, sklearn_confusion(flat_t, flat_p, labels=cm.rows))


@pytest.mark.parametrize("mode", ["strict", "conlleval"])
def test_entity_confusion_matrix_against_seqeval_counts(mode):
    rng = random.Random(5)
    for _ in range(300):
        y_true, tags, weights = random_corpus(rng, "BIO")
        y_pred = perturb(rng, y_true, tags, weights, rate=0.3)
        cm = confusion_matrix(y_true, y_pred, level="entity", mode=mode)
        ref = reference(y_true, y_pred, "IOB2", mode, zero_division=0)
        types = [k for k in ref if not k.endswith(" avg")]
        assert cm.rows == types + ["spurious"] and cm.cols == types + ["missed"]
        for i, t in enumerate(types):
            tp = cm.matrix[i, i]
            assert cm.matrix[i].sum() == ref[t]["support"]
            assert tp == round(ref[t]["recall"] * ref[t]["support"])
            n_pred = cm.matrix[:, i].sum()
            assert (ref[t]["precision"] == 0.0) if n_pred == 0 else ref[t]["precision"] == tp / n_pred
        assert cm.matrix[-1, -1] == 0
    assert "spurious" in str(cm) and "missed" in str(cm)


def test_entity_counts_sum_to_micro_counts_per_sentence():
    rng = random.Random(9)
    for _ in range(200):
        y_true, tags, weights = random_corpus(rng, "BIO")
        y_pred = perturb(rng, y_true, tags, weights, rate=0.3)
        mode = rng.choice(["strict", "conlleval"])
        counts = entity_counts(y_true, y_pred, mode=mode)
        assert counts.shape == (len(y_true), 3)
        ref = reference(y_true, y_pred, "IOB2", mode, zero_division=0)["micro avg"]
        tp, fp, fn = counts.sum(axis=0)
        assert tp + fn == ref["support"]
        assert metrics.micro_f1(counts) == pytest.approx(ref["f1-score"], abs=1e-12)
        # each sentence on its own gives its own row
        for s in range(len(y_true)):
            np.testing.assert_array_equal(entity_counts([y_true[s]], [y_pred[s]], mode=mode)[0], counts[s])


def test_group_by_document():
    docs, rows = metrics.group_by_document(["a", "b", "a"], np.array([[1, 0, 0], [0, 1, 0], [2, 0, 1]]))
    assert docs == ["a", "b"]
    np.testing.assert_array_equal(rows, [[3, 0, 1], [0, 1, 0]])


def test_plot_confusion_matrix(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    cm = confusion_matrix([["B-A", "O", "B-B"]], [["B-A", "B-B", "O"]], level="entity")
    ax = metrics.plot_confusion_matrix(cm, normalize=True)
    ax.figure.savefig(tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 0


# ---- lenient (overlap) matching and invalid transitions ----------------------------------------------

def brute_force_matching(gold, pred):
    """The largest one-to-one matching of same-type overlapping entities, by trying every matching."""
    pairs = [(i, j) for i, g in enumerate(gold) for j, p in enumerate(pred)
             if g[0] == p[0] and g[1] < p[2] and p[1] < g[2]]

    def best(k, used_g, used_p):
        if k == len(pairs):
            return 0
        i, j = pairs[k]
        skip = best(k + 1, used_g, used_p)
        if i in used_g or j in used_p:
            return skip
        return max(skip, 1 + best(k + 1, used_g | {i}, used_p | {j}))

    return best(0, frozenset(), frozenset())


@pytest.mark.parametrize("mode", ["strict", "conlleval"])
def test_lenient_matching_is_the_largest_matching_by_brute_force(mode):
    rng = random.Random(31)
    read = metrics.strict_entities if mode == "strict" else metrics.conlleval_entities
    hard = 0
    for _ in range(1200):
        corpus, tags, weights = random_corpus(rng, "BIO", types=("A", "B"))
        pred = perturb(rng, corpus, tags, weights, 0.5)
        counts = metrics.lenient_counts(corpus, pred, mode=mode)
        for seq_t, seq_p, row in zip(corpus, pred, counts):
            gold, guess = read(seq_t), read(seq_p)
            tp = brute_force_matching(gold, guess)
            assert tuple(row) == (tp, len(guess) - tp, len(gold) - tp), (seq_t, seq_p)
            hard += any(sum(g[0] == p[0] and g[1] < p[2] and p[1] < g[2] for g in gold) > 1 for p in guess)
    assert hard > 15  # predictions overlapping several gold entities occurred: the greedy choice was tested


def test_lenient_counts_equal_nervaluate_type_matching_where_it_is_one_to_one():
    """nervaluate's "ent_type" scenario (SemEval-2013: overlap and the same type) on sequences where
    every entity overlaps at most one entity of the other side, so that its greedy order cannot
    matter: the same precision and recall."""
    from nervaluate import Evaluator

    rng = random.Random(32)
    checked = 0
    for _ in range(300):
        corpus, tags, weights = random_corpus(rng, "BIO", types=("A", "B"))
        pred = perturb(rng, corpus, tags, weights, 0.3)
        gold_e = [metrics.strict_entities(s) for s in corpus]
        pred_e = [metrics.strict_entities(s) for s in pred]
        overlaps = lambda a, b: a[1] < b[2] and b[1] < a[2]
        if any(sum(overlaps(p, g) for g in G) > 1 for G, P in zip(gold_e, pred_e) for p in P) or \
           any(sum(overlaps(p, g) for p in P) > 1 for G, P in zip(gold_e, pred_e) for g in G):
            continue
        to_dicts = lambda E: [[{"label": t, "start": a, "end": b - 1} for t, a, b in e] for e in E]
        results = Evaluator(to_dicts(gold_e), to_dicts(pred_e), tags=["A", "B"], loader="dict").evaluate()
        ref = results["overall"]["ent_type"]
        tp, fp, fn = metrics.lenient_counts(corpus, pred).sum(0)
        if tp + fp:
            assert tp / (tp + fp) == pytest.approx(ref.precision)
        if tp + fn:
            assert tp / (tp + fn) == pytest.approx(ref.recall)
        checked += 1
    assert checked > 100


def test_lenient_f1_on_a_worked_example():
    """Gold: Sign at words 1-3, Dose at 5. Predicted: Sign at 2-3 (overlaps), Sign at 5 (wrong type),
    Dose at 6 (no overlap). Strict: 0 of 3 predictions exact. Lenient: 1 match, P = 1/3, R = 1/2."""
    gold = [["O", "B-Sign", "I-Sign", "I-Sign", "O", "B-Dose", "O"]]
    pred = [["O", "O", "B-Sign", "I-Sign", "O", "B-Sign", "B-Dose"]]
    assert metrics.entity_counts(gold, pred)[0].tolist() == [0, 3, 2]
    assert metrics.lenient_counts(gold, pred)[0].tolist() == [1, 2, 1]
    assert metrics.micro_f1(metrics.lenient_counts(gold, pred)) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_invalid_transitions_are_the_entities_conlleval_starts_at_an_i_tag():
    """Reference: seqeval's conlleval reading starts an entity at an I-X exactly where the transition
    into it is invalid (after O, at the sentence start, or after another type)."""
    rng = random.Random(33)
    total = 0
    for _ in range(300):
        corpus, _, _ = random_corpus(rng, "BIO")
        for seq in corpus:
            starts = seqeval_get_entities(list(seq))
            expected = sum(1 for _, a, _ in starts if seq[a].startswith("I-"))
            assert metrics.invalid_transitions(seq) == expected, seq
            total += expected
    assert total > 100
    assert metrics.invalid_transitions(["I-A", "B-A", "I-A", "I-B", "O", "I-B"]) == 3
