"""The post-hoc logit-adjusted decoder: argmax of z - τ log π, τ chosen on dev.

References: the prediction against a brute-force argmax of the adjusted scores; the choice of τ
against seqeval's strict micro F1 (``seqeval.metrics.f1_score``) of every τ of the grid.
"""
import numpy as np
import pytest
from seqeval.metrics import f1_score
from seqeval.scheme import IOB2

from bertlab.logit_adjustment import TAU_GRID, LogitAdjustedDecoder

LABELS = ["O", "B-A", "I-A", "B-B", "I-B"]
COUNTS = [900, 40, 30, 8, 0]  # I-B never occurs in training: it counts as the rarest label (8)


def random_sentences(seed, n=30, bias=(0.0, -2.0, -2.5, -3.5, -3.5)):
    """Word logits [n_words, 5] per sentence that favour O, and gold tags drawn from them."""
    g = np.random.default_rng(seed)
    logits, gold = [], []
    for _ in range(n):
        z = g.normal(size=(int(g.integers(1, 9)), len(LABELS))) * 2 + np.asarray(bias)
        truth = (z + g.normal(size=z.shape) * 2 - 1.5 * np.asarray(bias)).argmax(1)  # the entities are under-scored
        logits.append(z)
        gold.append([LABELS[i] for i in truth])
    return logits, gold


def test_prediction_is_the_argmax_of_the_adjusted_scores():
    logits, _ = random_sentences(0)
    dec = LogitAdjustedDecoder(LABELS, COUNTS)
    log_pi = np.log(np.array([900, 40, 30, 8, 8]) / 986)
    for tau in (0.0, 0.5, 1.0, 1.7):
        dec.tau = tau
        expected = [[LABELS[int(np.argmax(row - tau * log_pi))] for row in z] for z in logits]
        assert dec.predict(logits) == expected
    dec.tau = 0.0
    assert dec.predict(logits) == [[LABELS[i] for i in z.argmax(1)] for z in logits]


@pytest.mark.parametrize("seed", range(4))
def test_tau_is_the_grid_value_with_the_best_dev_micro_f1(seed):
    logits, gold = random_sentences(seed)
    dec = LogitAdjustedDecoder(LABELS, COUNTS).fit(logits, gold)
    reference = []
    for tau in TAU_GRID:
        dec_tau = LogitAdjustedDecoder(LABELS, COUNTS)
        dec_tau.tau = tau
        reference.append(f1_score(gold, dec_tau.predict(logits), mode="strict", scheme=IOB2, zero_division=0))
    np.testing.assert_allclose(dec.scores, reference, rtol=1e-12)
    best = max(reference)
    assert dec.tau == min(t for t, f in zip(TAU_GRID, reference) if f == best)  # ties: the smaller τ
    assert dec.dev_f1 == pytest.approx(best) and dec.argmax_f1 == pytest.approx(reference[0])
    assert dec.dev_f1 >= dec.argmax_f1  # τ = 0 is on the grid: never worse than argmax on dev


def test_a_model_that_under_predicts_rare_labels_is_corrected():
    # every entity word's logit trails O by 1 nat: argmax finds nothing, τ log(π_O / π_B-A) > 1 fixes it
    logits = [np.array([[2.0, 1.0, -5, -5, -5], [2.0, -5, 1.0, -5, -5], [3.0, -5, -5, -5, -5]])]
    gold = [["B-A", "I-A", "O"]]
    dec = LogitAdjustedDecoder(LABELS, COUNTS).fit(logits, gold)
    assert dec.argmax_f1 == 0.0 and dec.dev_f1 == 1.0 and 0 < dec.tau <= 0.5
    assert dec.predict(logits) == gold


def test_a_label_without_training_tokens_gets_the_rarest_prior():
    dec = LogitAdjustedDecoder(LABELS, COUNTS)
    assert dec.log_priors[4] == dec.log_priors[3] and np.isfinite(dec.log_priors).all()
    assert np.exp(dec.log_priors).sum() == pytest.approx(1.0)


def test_save_and_load_round_trip(tmp_path):
    logits, gold = random_sentences(1)
    dec = LogitAdjustedDecoder(LABELS, COUNTS).fit(logits, gold)
    dec.save(tmp_path / "logit_adjustment.json")
    back = LogitAdjustedDecoder.load(tmp_path / "logit_adjustment.json")
    assert back.tau == dec.tau and back.labels == LABELS and back.dev_f1 == dec.dev_f1
    assert back.predict(logits) == dec.predict(logits)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: cannot read the logit adjustment") as e:
        LogitAdjustedDecoder.load(tmp_path / "bad.json")
    assert "\n" not in str(e.value)


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="4 entries for 5 labels"):
        LogitAdjustedDecoder(LABELS, [1, 2, 3, 4])
    dec = LogitAdjustedDecoder(LABELS, COUNTS)
    with pytest.raises(ValueError, match=r"expected \[n_words, 5\]"):
        dec.fit([np.zeros((2, 4))], [["O", "O"]])
    with pytest.raises(ValueError, match="not labels of the model"):
        dec.fit([np.zeros((1, 5))], [["B-X"]])
    with pytest.raises(ValueError, match="grid"):
        LogitAdjustedDecoder(LABELS, COUNTS, grid=[-1.0, 0.0])
