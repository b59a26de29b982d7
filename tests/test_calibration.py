"""The calibrated decoder against references: seqeval's strict entities, and a brute-force
float64 re-implementation of the fit (full argmax + seqeval for every candidate offset)."""
import numpy as np
import pytest
from seqeval.metrics import f1_score
from seqeval.scheme import IOB2

from bertlab.calibration import BiasCalibrator, entity_columns, entity_keys
from bertlab.metrics import strict_entities

LABELS = ["O", "B-A", "I-A", "B-B", "I-B", "B-C", "I-C"]


def random_tags(rng, n_sentences, labels=LABELS):
    return [[labels[i] for i in rng.integers(0, len(labels), size=rng.integers(1, 9))]
            for _ in range(n_sentences)]


def seqeval_f1(gold, pred) -> float:
    return f1_score(gold, pred, mode="strict", scheme=IOB2, zero_division=0)


@pytest.mark.parametrize("seed", range(5))
def test_entity_keys_are_seqevals_strict_entities(seed):
    rng = np.random.default_rng(seed)
    tags = random_tags(rng, 40)  # random tags: orphan I-, type switches, B after B
    types, type_of, kind_of = entity_columns(LABELS)
    ids = np.array([LABELS.index(t) for s in tags for t in s])
    starts = np.zeros(len(ids), dtype=bool)
    starts[np.cumsum([0] + [len(s) for s in tags[:-1]])] = True
    keys = entity_keys(ids, starts, type_of, kind_of)
    expected, offset = [], 0
    n, n_types = len(ids), len(types)
    for s in tags:
        for typ, start, end in strict_entities(s):
            expected.append(((offset + start) * n + offset + end - 1) * n_types + types.index(typ))
        offset += len(s)
    assert sorted(keys.tolist()) == sorted(expected)
    assert len(expected) > 0


def brute_force_fit(logits, gold, labels, grid, rounds):
    """The documented procedure, spelled out: every candidate decoded by a full float64 argmax and
    scored by seqeval; ties to the offset closest to the current one, then the smaller."""
    types, type_of, _ = entity_columns(labels)
    bias = np.zeros(len(types))

    def f1_with(b):
        col = np.array([0.0 if type_of[c] < 0 else b[type_of[c]] for c in range(len(labels))])
        pred = [[labels[i] for i in (np.asarray(l, np.float64) + col).argmax(1)] for l in logits]
        return seqeval_f1(gold, pred)

    best = f1_with(bias)
    for _ in range(rounds):
        for t in range(len(types)):
            scores = []
            for g in grid:
                trial = bias.copy()
                trial[t] = g
                scores.append(f1_with(trial))
            top = max(scores)
            pick = min((i for i, s in enumerate(scores) if s == top), key=lambda i: (abs(grid[i] - bias[t]), grid[i]))
            if scores[pick] >= best:
                bias[t], best = grid[pick], scores[pick]
    return bias, best


def assert_fit_equals_brute_force(logits, gold, grid, rounds=2) -> BiasCalibrator:
    """The fitted offsets are exactly the brute-force ones and its dev F1 the same; returns the fit."""
    cal = BiasCalibrator(LABELS, grid=grid, rounds=rounds).fit(logits, gold)
    bias, best = brute_force_fit(logits, gold, LABELS, grid, rounds)
    np.testing.assert_array_equal(cal.bias, bias)
    assert cal.dev_f1 == pytest.approx(best, abs=1e-12)
    return cal


@pytest.mark.parametrize("seed", range(4))
def test_fit_equals_brute_force_on_random_logits(seed):
    rng = np.random.default_rng(100 + seed)
    gold = random_tags(rng, 25, labels=["O", "O", "O", "B-A", "I-A", "B-B", "I-B", "B-C", "I-C"])
    # logits that know something: the gold column gets a boost, O gets a prior shift
    logits = []
    for s in gold:
        z = rng.normal(size=(len(s), len(LABELS))).astype(np.float32)
        for i, t in enumerate(s):
            z[i, LABELS.index(t)] += 1.5
        z[:, 0] += rng.uniform(0, 3)
        logits.append(z)
    grid = np.round(np.arange(-2, 4.01, 0.5), 2)
    cal = assert_fit_equals_brute_force(logits, gold, grid)
    pred = cal.predict(logits)
    assert seqeval_f1(gold, pred) == pytest.approx(cal.dev_f1, abs=1e-12)
    # coordinate ascent from b = 0 never ends below argmax on the data it was fitted on
    argmax = [[LABELS[i] for i in l.argmax(1)] for l in logits]
    assert cal.dev_f1 >= seqeval_f1(gold, argmax) == pytest.approx(cal.argmax_f1)


@pytest.mark.parametrize("seed", range(3))
def test_fit_equals_brute_force_on_integer_logits_with_exact_ties(seed):
    """Integer logits and whole-number offsets: an entity column often ties exactly with another
    column, and the fit must break the tie as argmax does (the lower column wins), whichever side
    of the tie the entity column is on."""
    rng = np.random.default_rng(200 + seed)
    gold = random_tags(rng, 30, labels=["O", "O", "B-A", "I-A", "B-B", "I-B", "B-C", "I-C"])
    logits = [rng.integers(-2, 3, size=(len(s), len(LABELS))).astype(np.float64) for s in gold]
    for z, s in zip(logits, gold):
        z[np.arange(len(s)), [LABELS.index(t) for t in s]] += 1
    assert_fit_equals_brute_force(logits, gold, np.arange(-3.0, 4.0))


@pytest.mark.parametrize("seed", range(2))
def test_fit_equals_brute_force_on_a_wide_f1_plateau(seed):
    """Confident logits: every offset of the grid decodes the same entities (one F1 plateau), so
    the fit must keep the offset closest to the current one (0, plain argmax), not the smallest."""
    rng = np.random.default_rng(300 + seed)
    gold = random_tags(rng, 20, labels=["O", "O", "B-A", "I-A", "B-B", "I-B", "B-C", "I-C"])
    logits = [rng.normal(size=(len(s), len(LABELS))) for s in gold]
    for z, s in zip(logits, gold):
        z[np.arange(len(s)), [LABELS.index(t) for t in s]] += 20
    cal = assert_fit_equals_brute_force(logits, gold, np.round(np.arange(-3, 4.01, 0.5), 2))
    np.testing.assert_array_equal(cal.bias, 0.0)


def btl_like_logits(gold, shift):
    """What an other_to_o BTL model learns: the right entity column is the best *entity* column,
    but every entity column sits ``shift`` (≈ log K) below O, so argmax says O everywhere."""
    out = []
    for s in gold:
        z = np.full((len(s), len(LABELS)), -1.0, dtype=np.float32)
        z[:, 0] = 2.0
        for i, t in enumerate(s):
            if t != "O":
                z[i, LABELS.index(t)] = 2.0 - shift
        out.append(z)
    return out


def test_calibration_recovers_entities_that_argmax_loses():
    dev = [["B-A", "I-A", "O", "B-B"], ["O", "B-C", "I-C", "I-C", "O"], ["B-B", "O", "B-A"]]
    test = [["O", "B-A", "O"], ["B-C", "I-C", "O", "B-B", "I-B"]]
    shift = float(np.log(12))  # K = 13 binary copies in a batch
    cal = BiasCalibrator(LABELS).fit(btl_like_logits(dev, shift), dev)
    argmax = [[LABELS[i] for i in l.argmax(1)] for l in btl_like_logits(test, shift)]
    assert all(t == "O" for s in argmax for t in s) and seqeval_f1(test, argmax) == 0.0
    pred = cal.predict(btl_like_logits(test, shift))
    assert pred == test and seqeval_f1(test, pred) == 1.0
    assert cal.argmax_f1 == 0.0 and cal.dev_f1 == 1.0
    assert np.all(cal.bias > shift - 3.0)  # an offset past the gap between O and the entity columns


def test_save_load_round_trip_and_bad_file(tmp_path):
    rng = np.random.default_rng(7)
    gold = random_tags(rng, 10)
    logits = [rng.normal(size=(len(s), len(LABELS))) for s in gold]
    cal = BiasCalibrator(LABELS).fit(logits, gold)
    cal.save(tmp_path / "calibration.json")
    back = BiasCalibrator.load(tmp_path / "calibration.json")
    np.testing.assert_array_equal(back.bias, cal.bias)
    assert back.predict(logits) == cal.predict(logits)
    (tmp_path / "bad.json").write_text("{\"format\": \"x\"}")
    with pytest.raises(ValueError, match="bad.json: cannot read the calibration"):
        BiasCalibrator.load(tmp_path / "bad.json")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not IOB2"):
        BiasCalibrator(["O", "X-A"])
    cal = BiasCalibrator(LABELS)
    with pytest.raises(ValueError, match="expected \\[n_words, 7\\]"):
        cal.fit([np.zeros((2, 3))], [["O", "O"]])
    with pytest.raises(ValueError, match="not labels of the model"):
        cal.fit([np.zeros((1, 7))], [["B-Z"]])
