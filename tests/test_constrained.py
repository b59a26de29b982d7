"""BIO-constrained decoding against references: a brute force over every tag sequence (float64),
the project's IOB2 checker (``bertlab.datasets.tags.tag_problems``) and seqeval's two readings."""
import functools
import itertools

import numpy as np
import pytest

from bertlab.constrained import allowed_transitions, base_decode, constrain, is_constrained, is_valid, viterbi
from bertlab.datasets.tags import tag_problems
from bertlab.metrics import conlleval_entities, strict_entities

LABEL_SETS = {
    "one type": ["O", "B-A", "I-A"],
    "two types": ["O", "B-A", "I-A", "B-B", "I-B"],
    "odd order": ["B-A", "I-B", "O", "I-A", "B-B", "B-C"],  # O not first; C has no I-C
}


@functools.cache
def valid_sequences(labels: tuple[str, ...], T: int) -> np.ndarray:
    """``[n, T]``: every label-id sequence of length T that the IOB2 checker finds no problem
    in, in lexicographic order."""
    return np.array([ids for ids in itertools.product(range(len(labels)), repeat=T)
                     if not tag_problems([labels[i] for i in ids], "IOB2")], dtype=np.int64)


def brute_force(scores: np.ndarray, labels: list[str]) -> tuple[list[int], float, int]:
    """The first (lexicographically smallest) of the valid sequences with the highest float64
    total, that total, and how many valid sequences reach it."""
    seqs = valid_sequences(tuple(labels), len(scores))
    totals = scores[np.arange(len(scores)), seqs].sum(axis=1)
    best = int(np.argmax(totals))
    return seqs[best].tolist(), float(totals[best]), int((totals == totals[best]).sum())


@pytest.mark.parametrize("name", LABEL_SETS)
@pytest.mark.parametrize("T", range(1, 7))
def test_viterbi_equals_brute_force_on_random_scores(name, T):
    labels = LABEL_SETS[name]
    start, allowed = allowed_transitions(labels)
    rng = np.random.default_rng(T * 10 + len(labels))
    for _ in range(50):
        scores = rng.normal(scale=2.0, size=(T, len(labels)))
        path = viterbi(scores, start, allowed)
        expected, expected_score, _ = brute_force(scores, labels)
        assert path.tolist() == expected
        assert scores[np.arange(T), path].sum() == pytest.approx(expected_score, abs=1e-12)


@pytest.mark.parametrize("name", LABEL_SETS)
def test_viterbi_ties_go_to_the_lexicographically_smallest_path(name):
    """Small integer scores: many paths tie exactly (float64 sums of small integers are exact), and
    the path must be the first best one in lexicographic order, as argmax takes the lower id."""
    labels = LABEL_SETS[name]
    start, allowed = allowed_transitions(labels)
    rng = np.random.default_rng(len(labels))
    ties = 0
    for T in range(1, 7):
        for _ in range(30):
            scores = rng.integers(-1, 2, size=(T, len(labels))).astype(np.float64)
            expected, _, n_best = brute_force(scores, labels)
            path = viterbi(scores, start, allowed)
            assert path.tolist() == expected, scores
            ties += n_best > 1
    assert ties > 50  # the case is about ties: most draws have several best paths


@pytest.mark.parametrize("name", LABEL_SETS)
def test_allowed_transitions_are_the_iob2_checkers_rules(name):
    labels = LABEL_SETS[name]
    start, allowed = allowed_transitions(labels)
    for a, first in enumerate(labels):
        assert start[a] == (not tag_problems([first], "IOB2"))
        for b, second in enumerate(labels):
            # [B-x, a, b] puts a anywhere but first; only the a -> b step is judged for b
            problems = tag_problems([first, second], "IOB2")
            assert allowed[a, b] == (not any(i == 1 for i, _ in problems)), (first, second)


@pytest.mark.parametrize("seed", range(3))
def test_constrained_tags_are_valid_and_keep_valid_decoder_tags(seed):
    labels = LABEL_SETS["two types"]
    start, allowed = allowed_transitions(labels)
    rng = np.random.default_rng(seed)
    scores = [rng.normal(size=(rng.integers(0, 12), len(labels))) for _ in range(200)]
    tags = [[labels[i] for i in s.argmax(-1)] for s in scores]
    out = constrain(scores, tags, labels)
    changed = 0
    for s, t, o in zip(scores, tags, out):
        assert not tag_problems(o, "IOB2")
        assert strict_entities(o) == conlleval_entities(o)  # valid tags read the same both ways
        if not tag_problems(t, "IOB2"):
            assert o == t  # a valid argmax path is an optimal valid path: kept as it is
        else:
            changed += 1
            ids = viterbi(s, start, allowed)
            assert o == [labels[i] for i in ids]
            # the kept decoder tags would be no better: the Viterbi path scores at most the argmax's
            assert s[np.arange(len(s)), ids].sum() <= s.max(-1).sum() + 1e-12
    assert changed > 50


def test_when_no_transition_is_forbidden_viterbi_is_the_argmax():
    """Random scores whose argmax happens to be valid: the Viterbi alone (no keep-valid shortcut)
    returns it, so the shortcut only spares work and fixes float ties."""
    labels = LABEL_SETS["two types"]
    start, allowed = allowed_transitions(labels)
    rng = np.random.default_rng(5)
    seen = 0
    for _ in range(500):
        s = rng.normal(size=(rng.integers(1, 10), len(labels)))
        ids = s.argmax(-1)
        if is_valid(ids, start, allowed):
            seen += 1
            assert viterbi(s, start, allowed).tolist() == ids.tolist()
    assert seen > 50


def test_worked_example_an_orphan_inside_tag():
    """docs/evaluation.md's example: argmax says ``O I-A``; the constraint weighs repairing the
    first word (O -> B-A costs 2.0 - 1.9 = 0.1) against the second (I-A -> B-A costs 1.2 - 1.0
    = 0.2, I-A -> O costs 1.0) and takes the cheapest, B-A I-A."""
    labels = ["O", "B-A", "I-A"]
    scores = [np.array([[2.0, 1.9, -1.0],
                        [0.2, 1.0, 1.2]])]
    assert constrain(scores, [["O", "I-A"]], labels) == [["B-A", "I-A"]]
    scores[0][0, 1] = 1.5  # now B-A on the first word costs 0.5: the second word gives way
    assert constrain(scores, [["O", "I-A"]], labels) == [["O", "B-A"]]


def test_decode_names():
    assert base_decode("knn+bio") == "knn" and base_decode("calibrated") == "calibrated"
    assert is_constrained("argmax+bio") and not is_constrained("argmax")
    with pytest.raises(ValueError, match="'X-A' is not IOB2"):
        allowed_transitions(["O", "X-A"])
    with pytest.raises(ValueError, match="no valid IOB2 path"):
        viterbi(np.zeros((2, 1)), *allowed_transitions(["I-A"]))
    assert viterbi(np.zeros((0, 3)), *allowed_transitions(["O", "B-A", "I-A"])).tolist() == []


# ---- the +bio decodes of bertlab.inference: each decoder's scores, then the constraint ------------

def random_decoders(seed: int, labels: list[str]):
    """A model stand-in with labels, dev-like word logits, a KNN reference and a calibration."""
    from types import SimpleNamespace

    from bertlab.calibration import BiasCalibrator
    from bertlab.knn import KNNClassifier
    rng = np.random.default_rng(seed)
    C = len(labels)
    logits = [rng.normal(size=(rng.integers(0, 9), C)).astype(np.float32) for _ in range(60)]
    train = rng.normal(size=(300, C)).astype(np.float32)
    knn = KNNClassifier(k=5).fit(train, train.argmax(1))  # each training word labelled by its argmax
    calibrator = BiasCalibrator(labels)
    calibrator.bias = rng.uniform(-1, 1, size=len(calibrator.types))
    return SimpleNamespace(labels=labels), logits, knn, calibrator


@pytest.mark.parametrize("seed", range(3))
def test_bio_decodes_constrain_each_decoders_own_scores(seed):
    from bertlab.inference import decode_argmax, decode_knn, decode_tags, knn_vote_shares
    labels = LABEL_SETS["two types"]
    model, logits, knn, cal = random_decoders(seed, labels)
    # the unconstrained decodes are what they were: KNN's tags are knn.predict's
    flat = np.concatenate([l for l in logits if len(l)])
    knn_tags = decode_knn(knn, logits, labels)
    assert [t for s in knn_tags for t in s] == [labels[i] for i in knn.predict(flat)]
    # argmax+bio: the logits, equivalently the log-softmax (a constant per word)
    log_softmax = [l - np.log(np.exp(l.astype(np.float64)).sum(-1, keepdims=True)) for l in logits]
    argmax = decode_argmax(logits, labels)
    expected = constrain([l.astype(np.float64) for l in logits], argmax, labels)
    assert decode_tags("argmax+bio", logits, model) == expected == constrain(log_softmax, argmax, labels)
    # calibrated+bio: the offset logits
    assert decode_tags("calibrated+bio", logits, model, calibrator=cal) == constrain(cal.adjust(logits),
                                                                                     cal.predict(logits), labels)
    # knn+bio: log(k * share + 1)
    shares = knn_vote_shares(knn, logits, len(labels))
    assert np.allclose(np.concatenate(shares)[:, knn.classes_], knn.predict_proba(flat))
    scores = [np.log(5 * s + 1) for s in shares]
    assert decode_tags("knn+bio", logits, model, knn=knn) == constrain(scores, knn_tags, labels)
    for decode in ("argmax+bio", "knn+bio", "calibrated+bio"):
        tags = decode_tags(decode, logits, model, knn=knn, calibrator=cal)
        assert all(not tag_problems(t, "IOB2") for t in tags)
        assert any(tag_problems(t, "IOB2") for t in decode_tags(base_decode(decode), logits, model, knn=knn,
                                                                 calibrator=cal))  # something was repaired


def test_knn_bio_when_no_neighbour_voted_for_a_valid_label():
    """The only label the neighbours vote for is forbidden (I-A opening a sentence; the reference
    has no B-A at all). Add-one smoothing leaves every label a finite score, so a valid path
    exists: two I-A words become B-A I-A (one unvoted label, the entity kept); a single one ties
    between O and B-A (both unvoted) and the lower id, O, wins."""
    from types import SimpleNamespace

    from bertlab.inference import decode_tags
    from bertlab.knn import KNNClassifier
    labels = ["O", "B-A", "I-A"]
    train = np.array([[0, 0, 10], [0, 0, 9], [0, 0, 11], [10, 0, 0]], dtype=np.float32)
    knn = KNNClassifier(k=3).fit(train, [2, 2, 2, 0])
    query = [np.array([[0, 0, 10], [0, 0, 10]], dtype=np.float32), np.array([[0, 0, 10]], dtype=np.float32)]
    model = SimpleNamespace(labels=labels)
    assert decode_tags("knn", query, model, knn=knn) == [["I-A", "I-A"], ["I-A"]]
    assert decode_tags("knn+bio", query, model, knn=knn) == [["B-A", "I-A"], ["O"]]


def test_evaluate_and_config_know_the_bio_decodes():
    from bertlab.config import DECODES, ConfigError, EvalConfig, TrainConfig, check_config
    from bertlab.inference import check_decode
    assert {"argmax+bio", "knn+bio", "calibrated+bio"} <= set(DECODES) and "viterbi+bio" not in DECODES
    with pytest.raises(ValueError, match="decode='knn\\+bio' needs knn="):
        check_decode("knn+bio")
    with pytest.raises(ValueError, match="decode='calibrated\\+bio' needs calibrator="):
        check_decode("calibrated+bio")
    with pytest.raises(ConfigError, match="\\[eval\\] decode: expected entries from .*'viterbi\\+bio'"):
        check_config(TrainConfig(eval=EvalConfig(decode=["argmax", "viterbi+bio"])), "x.toml")
