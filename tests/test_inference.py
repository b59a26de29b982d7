"""Inference against references: one forward per window (word logits), brute force (Viterbi over
all tag sequences, nearest neighbours in float64), and seqeval (strict and conlleval scoring)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bertlab.datasets import Corpus, Document, Sentence
from bertlab.inference import (check_window, decode_argmax, decode_knn, decode_viterbi, evaluate,
                               fit_knn_on_train, mean_probabilities, word_logits)

LABELS = ["O", "B-Drug", "I-Drug", "B-Sign", "I-Sign"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from bertlab.tokenization import Tokenizer
    return Tokenizer.from_pretrained(minilm_path)


def tiny_model(head="softmax"):
    from bertlab.checkpoint import build_model
    from bertlab.models.heads import TokenClassifier
    torch.manual_seed(0)
    model = build_model("minilm", LABELS, **TINY)
    if head == "crf":
        model = TokenClassifier(model.encoder, LABELS, head="crf")
        with torch.no_grad():
            model.crf.transitions.normal_()
            model.crf.start_transitions.normal_()
            model.crf.end_transitions.normal_()
    return model.eval()


LONG = ("the patient had severe chest pain and fever after aspirin was given daily for a "
        "persistent headache with nausea").split()
SHORT = "aspirin for pain".split()


def test_word_logits_read_each_word_once_from_its_owning_window(tokenizer):
    model = tiny_model()
    max_length, stride = 10, 3
    out = word_logits(model, tokenizer, [LONG, SHORT, []], max_length=max_length, stride=stride, batch_size=3)
    assert [o.shape for o in out] == [(len(LONG), 5), (len(SHORT), 5), (0, 5)]
    windows = tokenizer.encode_words(LONG, max_length=max_length, stride=stride)
    assert len(windows) > 2  # the sentence really is split into overlapping windows
    expected = np.full((len(LONG), 5), np.nan, dtype=np.float32)
    owners = np.zeros(len(LONG), dtype=int)
    with torch.no_grad():
        for w in windows:  # one window at a time: no padding, no batching
            logits = model(torch.tensor([w.input_ids]), torch.ones(1, len(w), dtype=torch.long),
                           torch.tensor([w.token_type_ids]))[0].numpy()
            for t, owned in enumerate(w.owned):
                if owned:
                    expected[w.word_ids[t]] = logits[t]
                    owners[w.word_ids[t]] += 1
    assert (owners == 1).all()  # every word read exactly once
    np.testing.assert_allclose(out[0], expected, atol=1e-5, rtol=1e-5)
    # the model's mode is restored
    model.train()
    word_logits(model, tokenizer, [SHORT], max_length=max_length, stride=stride)
    assert model.training


def word_logits_before_41(model, tokenizer, sentences, max_length, stride, batch_size):
    """``word_logits`` as it was before issue #41 (every window held): all windows of all sentences
    sorted by length (``sorted``, stable), ``batch_size`` at a time, merged by ``word_predictions``."""
    from bertlab.batching import collate
    from bertlab.tokenization import word_predictions
    windows = tokenizer.batch_encode(sentences, None, max_length, stride)
    flat = [w for ws in windows for w in ws]
    order = sorted(range(len(flat)), key=lambda j: len(flat[j]))
    out = [None] * len(flat)
    with torch.no_grad():
        for lo in range(0, len(order), batch_size):
            chunk = order[lo:lo + batch_size]
            batch = collate([flat[j] for j in chunk], pad_token_id=tokenizer.pad_token_id)
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
            for row, j in enumerate(chunk):
                out[j] = logits[row, :len(flat[j])]
    result, k = [], 0
    for words, ws in zip(sentences, windows):
        result.append(word_predictions(ws, out[k:k + len(ws)]) if words else np.zeros((0, len(LABELS)), np.float32))
        k += len(ws)
    return result


def test_word_logits_equal_the_pre_41_loop_to_the_bit(tokenizer):
    """#41 item 12: ``word_logits`` runs through ``iter_word_logits`` (the batch-by-batch engine of
    ``bertlab predict``); its logits equal those of the loop it replaced, bit for bit: the same
    batches (ties in length kept in input order), the same rows."""
    model = tiny_model()
    rng = np.random.default_rng(0)
    sentences = [list(rng.choice(LONG, int(rng.integers(0, 25)))) for _ in range(25)] + [LONG * 2, []]
    for batch_size in (3, 7):
        got = word_logits(model, tokenizer, sentences, max_length=12, stride=3, batch_size=batch_size)
        expected = word_logits_before_41(model, tokenizer, sentences, 12, 3, batch_size)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype and g.shape == e.shape and np.array_equal(g, e, equal_nan=True)


@pytest.mark.parametrize("multiple", [0, 8, 32])
def test_word_logits_padded_to_a_multiple_equal_the_unpadded_ones(tokenizer, multiple):
    # padding is masked: the logits change only by float rounding (fp32 against float64 unpadded)
    model = tiny_model()
    sentences = [LONG, SHORT, LONG[:7], []]
    out = word_logits(model, tokenizer, sentences, max_length=24, stride=4, batch_size=2,
                      pad_to_multiple_of=multiple)
    reference = word_logits(model.double(), tokenizer, sentences, max_length=24, stride=4, batch_size=1)
    for a, b in zip(out, reference):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, sizes", [
    ("minilm", dict(TINY)),
    ("distilbert", dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64)),
])
def test_check_window_refuses_exactly_the_widths_the_model_cannot_run(arch, sizes):
    """The reference is the model itself: a batch as wide as the widest padded window either runs
    or fails in the model, and check_window refuses exactly the cases that fail (with a message
    instead of an index error deep in the embeddings)."""
    from bertlab.checkpoint import build_model
    positions = 20
    model = build_model(arch, LABELS, **{**sizes, "max_position_embeddings": positions}).eval()
    refused = 0
    for max_length in range(positions - 6, positions + 3):
        for multiple in (1, 3, 4, 7, 8):
            ids = torch.full((1, -(-max_length // multiple) * multiple), 5)
            try:
                with torch.no_grad():
                    model(ids, torch.ones_like(ids), torch.zeros_like(ids))
            except (IndexError, RuntimeError):
                refused += 1
                with pytest.raises(ValueError, match=r"more than the model's 20 positions \(max_position_embeddings\)"):
                    check_window(model, max_length, multiple)
            else:
                check_window(model, max_length, multiple)
    assert 0 < refused < 45  # both outcomes occur


def test_word_logits_refuse_windows_longer_than_the_positions(tokenizer):
    with pytest.raises(ValueError, match="max_length = 80 is more than the model's 64 positions"):
        word_logits(tiny_model(), tokenizer, [SHORT], max_length=80)
    with pytest.raises(ValueError, match="pad_to_multiple_of = 48 pads windows of max_length = 60 subwords to 96"):
        word_logits(tiny_model(), tokenizer, [SHORT], max_length=60, pad_to_multiple_of=48)


def test_decode_argmax_and_strict_versus_conlleval_scoring_match_seqeval():
    """Per-word argmax can produce an orphan I- tag; strict IOB2 scoring ignores it, the conlleval
    reading counts it as an entity. Both equal seqeval's."""
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2
    gold = [["B-Drug", "O", "B-Sign", "I-Sign"], ["O", "B-Sign"], ["B-Drug", "I-Drug"]]
    pred = [["B-Drug", "O", "O", "I-Sign"], ["O", "B-Sign"], ["I-Drug", "I-Drug"]]
    logits = [np.eye(5, dtype=np.float32)[[LABELS.index(t) for t in p]] for p in pred]
    assert decode_argmax(logits, LABELS) == pred
    sentences = [Sentence(tokens=[f"w{i}" for i in range(len(g))], tags=g, doc_id=d)
                 for g, d in zip(gold, ["a", "a", "b"])]
    corpus = Corpus("toy", "test", [Document("a", sentences[:2]), Document("b", sentences[2:])])

    class Labelled:  # evaluate only needs .labels when the logits are given
        labels = LABELS

    result = evaluate(Labelled(), None, corpus, decode="argmax", logits=logits)
    assert result["micro_f1"] == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))
    assert result["micro_f1_conlleval"] == pytest.approx(f1_score(gold, pred))
    assert result["micro_f1"] != result["micro_f1_conlleval"]  # the orphan tags make a difference
    assert [(p["doc_id"], p["sentence"]) for p in result["predictions"]] == [("a", 0), ("a", 1), ("b", 0)]
    assert [p["pred"] for p in result["predictions"]] == pred
    assert set(result["entity_report"]) >= {"Drug", "Sign", "micro avg", "macro avg", "weighted avg"}


def test_viterbi_decode_equals_brute_force_over_all_sequences(tokenizer):
    model = tiny_model("crf")
    sentences = [SHORT, "fever".split(), "chest pain".split()]
    logits = word_logits(model, tokenizer, sentences, max_length=16, stride=4)
    paths = decode_viterbi(model, logits, batch_size=2)  # batches of different lengths: padding
    crf = model.crf
    trans, start, end = (t.detach() for t in crf._potentials(torch.float32))
    for emissions, path in zip(logits, paths):
        e = torch.from_numpy(emissions)

        def score(seq):
            s = start[seq[0]] + e[0, seq[0]] + end[seq[-1]]
            return s + sum(trans[a, b] + e[t + 1, b] for t, (a, b) in enumerate(zip(seq, seq[1:])))

        best = max(itertools.product(range(5), repeat=len(e)), key=lambda seq: float(score(seq)))
        assert path == [LABELS[i] for i in best]


def test_knn_decode_equals_brute_force_nearest_training_word(tokenizer):
    model = tiny_model()
    train = [Sentence(LONG, ["O"] * 4 + ["B-Sign", "I-Sign", "O", "B-Sign", "O", "B-Drug"] + ["O"] * 6
                      + ["B-Sign", "O", "B-Sign"], "d0"),
             Sentence(SHORT, ["B-Drug", "O", "B-Sign"], "d1")]
    assert len(train[0].tags) == len(LONG)
    knn = fit_knn_on_train(model, tokenizer, train, k=1, max_length=10, stride=3)
    queries = [["severe", "headache", "and", "aspirin"], ["pain"]]
    q = word_logits(model, tokenizer, queries, max_length=10, stride=3)
    X = np.concatenate(word_logits(model, tokenizer, train, max_length=10, stride=3)).astype(np.float64)
    y = [t for s in train for t in s.tags]
    expected = [[y[int(np.argmin(((X - row) ** 2).sum(1)))] for row in l.astype(np.float64)] for l in q]
    assert decode_knn(knn, q, LABELS) == expected
    # k = 1 on the training set itself gives back its gold tags
    own = word_logits(model, tokenizer, train, max_length=10, stride=3)
    assert decode_knn(knn, own, LABELS) == [s.tags for s in train]
    result = evaluate(model, tokenizer, train, decode="knn", knn=knn, max_length=10, stride=3)
    assert result["micro_f1"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_mean_probabilities_equal_brute_force_float64(seed):
    """Generated word logits (sentences of 0..6 words, large offsets that overflow a naive exp in
    float32): the mean softmax per label equals a word-by-word float64 loop with math.exp."""
    import math
    rng = np.random.default_rng(seed)
    logits = [(rng.normal(size=(int(n), 5)) * 8 + rng.normal() * 60).astype(np.float32)
              for n in rng.integers(0, 7, size=6)]
    logits.append(np.zeros((0, 5), np.float32))
    words = [row.astype(np.float64) for l in logits for row in l]
    expected = np.zeros(5)
    for row in words:
        z = [math.exp(v - max(row)) for v in row]
        expected += np.array(z) / sum(z)
    expected /= len(words)
    out = mean_probabilities(logits, LABELS)
    assert list(out) == LABELS
    np.testing.assert_allclose([out[l] for l in LABELS], expected, rtol=1e-12)
    assert sum(out.values()) == pytest.approx(1.0, abs=1e-12)
    assert all(math.isnan(v) for v in mean_probabilities([np.zeros((0, 5))], LABELS).values())


def test_evaluate_reports_the_same_mean_probability_for_every_decode(tokenizer):
    """The mean probability is a property of the checkpoint, not of the decoder."""
    model = tiny_model()
    train = [Sentence(LONG, ["O"] * (len(LONG) - 1) + ["B-Sign"], "d0"), Sentence(SHORT, ["B-Drug", "O", "O"], "d1")]
    logits = word_logits(model, tokenizer, train, max_length=10, stride=3)
    knn = fit_knn_on_train(model, tokenizer, train, k=1, max_length=10, stride=3)
    by_decode = [evaluate(model, tokenizer, train, decode=d, knn=knn, logits=logits)["mean_probability"]
                 for d in ("argmax", "knn")]
    assert by_decode[0] == by_decode[1] == mean_probabilities(logits, LABELS)


def test_evaluate_rejects_unknown_decode_and_missing_knn():
    with pytest.raises(ValueError, match="decode must be one of"):
        evaluate(None, None, [], decode="beam")
    with pytest.raises(ValueError, match="needs knn="):
        evaluate(None, None, [], decode="knn")


def test_unweighted_accuracy_variants_equal_sklearn():
    import numpy as np
    from sklearn.metrics import balanced_accuracy_score, recall_score

    from bertlab.inference import unweighted_accuracy_variants
    rng = np.random.default_rng(0)
    labels = ["O", "B-A", "I-A", "B-B", "I-B"]
    gold = [[labels[i] for i in rng.integers(0, 5, size=rng.integers(1, 10))] for _ in range(30)]
    pred = [[labels[i] for i in rng.integers(0, 5, size=len(s))] for s in gold]
    got = unweighted_accuracy_variants(gold, pred)
    for unit in ("tag", "type"):
        def flat(tags):
            return [t if unit == "tag" or t == "O" else t[2:] for s in tags for t in s]
        y, p = flat(gold), flat(pred)
        assert got[f"{unit}_with_o"] == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)
        classes = sorted(set(y) - {"O"})
        assert got[f"{unit}_without_o"] == pytest.approx(
            float(np.mean(recall_score(y, p, labels=classes, average=None, zero_division=0))), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_error_equals_sklearn_reliability_bins_and_the_ece_formula(seed):
    """Bins: sklearn's calibration_curve (uniform bins) on "is the top label correct" against the top
    probability, for the non-empty bins; ECE from those bins by the formula, in float64."""
    from sklearn.calibration import calibration_curve

    from bertlab.inference import calibration_error, softmax

    rng = np.random.default_rng(seed)
    labels = ["O", "B-A", "I-A", "B-B"]
    logits = [rng.normal(0, 1 + 2 * rng.random(), (int(rng.integers(1, 9)), 4)) for _ in range(40)]
    gold = [[labels[i] for i in rng.integers(0, 4, len(l))] for l in logits]
    logits[0][0] = [40.0, 0, 0, 0]  # a confidence of 1.0: the last bin
    ours = calibration_error(logits, gold, labels, n_bins=10)
    p = softmax(np.concatenate(logits).astype(np.float64))
    conf = p.max(-1)
    correct = (p.argmax(-1) == np.array([labels.index(t) for g in gold for t in g])).astype(float)
    acc_ref, conf_ref = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    filled = [b for b in ours["bins"] if b["count"]]
    np.testing.assert_allclose([b["accuracy"] for b in filled], acc_ref, rtol=1e-12)
    np.testing.assert_allclose([b["confidence"] for b in filled], conf_ref, rtol=1e-12)
    n = np.array([b["count"] for b in filled])
    assert n.sum() == ours["words"] == len(conf)
    ece = float((n / n.sum() * np.abs(acc_ref - conf_ref)).sum())
    assert ours["ece"] == pytest.approx(ece, rel=1e-12)
    assert ours["bins"][-1]["count"] >= 1


def test_a_perfectly_calibrated_case_has_zero_ece_and_a_confident_wrong_one_has_ece_near_one():
    from bertlab.inference import calibration_error

    labels = ["O", "B-A"]
    # two words at confidence 0.75 (log 3 apart), three of four such words right: accuracy 0.75
    z = np.log(3.0)
    logits = [np.array([[z, 0.0], [z, 0.0]]), np.array([[z, 0.0], [z, 0.0]])]
    assert calibration_error(logits, [["O", "O"], ["O", "B-A"]], labels)["ece"] == pytest.approx(0.0, abs=1e-12)
    wrong = calibration_error([np.array([[50.0, 0.0]] * 3)], [["B-A"] * 3], labels)
    assert wrong["ece"] == pytest.approx(1.0, abs=1e-12)
