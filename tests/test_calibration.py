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
    assert_fit_equals_brute_force(logits, gold, rng.permutation(grid))  # the grid's order is the user's
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


# ---- cross-fitting: the dev score that selects the epoch is out of sample ----------------------------

def dev_documents(seed, n_docs=6):
    """Sentences of ``n_docs`` documents: gold tags, logits that know something, document ids."""
    rng = np.random.default_rng(seed)
    gold = random_tags(rng, 5 * n_docs, labels=["O", "O", "O", "B-A", "I-A", "B-B", "I-B", "B-C", "I-C"])
    logits = [rng.normal(size=(len(s), len(LABELS))) for s in gold]
    for z, s in zip(logits, gold):
        z[np.arange(len(s)), [LABELS.index(t) for t in s]] += 1.5
        z[:, 0] += rng.uniform(0, 3)
    doc_ids = [f"doc{i % n_docs}" for i in range(len(gold))]  # a document's sentences need not be adjacent
    return logits, gold, doc_ids


def test_document_halves_alternate_documents_in_first_seen_order():
    from bertlab.calibration import document_halves
    assert document_halves(["a", "a", "b", "c", "b", "d", "e"]).tolist() == [0, 0, 1, 0, 1, 1, 0]
    assert document_halves([]).tolist() == []


@pytest.mark.parametrize("seed", range(2))
def test_cross_fit_offsets_are_the_brute_force_fit_of_each_half(seed):
    from bertlab.calibration import CrossFitCalibrator, document_halves
    logits, gold, doc_ids = dev_documents(400 + seed)
    grid = np.round(np.arange(-2, 4.01, 0.5), 2)
    cross = CrossFitCalibrator(LABELS, grid=grid).fit(logits, gold, doc_ids)
    half = document_halves(doc_ids)
    for side in (0, 1):
        mine = [i for i in range(len(gold)) if half[i] == side]
        bias, _ = brute_force_fit([logits[i] for i in mine], [gold[i] for i in mine], LABELS, grid, 2)
        np.testing.assert_array_equal(cross.fits[side].bias, bias)
        # the other half is decoded with these offsets, exactly as a calibrator fitted on this half
        other = [i for i in range(len(gold)) if half[i] != side]
        alone = BiasCalibrator(LABELS, grid=grid).fit([logits[i] for i in mine], [gold[i] for i in mine])
        predicted = cross.predict(logits)
        assert [predicted[i] for i in other] == alone.predict([logits[i] for i in other])
    assert not np.array_equal(cross.fits[0].bias, cross.fits[1].bias)  # the halves do fit differently


@pytest.mark.parametrize("seed", range(2))
def test_no_dev_document_is_scored_with_offsets_fitted_on_its_own_tags(seed):
    """Rewrite one document's gold tags at a time: its own cross-fitted tags never move (the
    offsets it is decoded with never saw them), while the in-sample fit's tags do for some."""
    from bertlab.calibration import CrossFitCalibrator
    logits, gold, doc_ids = dev_documents(500 + seed)
    rng = np.random.default_rng(seed)
    before = CrossFitCalibrator(LABELS).fit(logits, gold, doc_ids).predict(logits)
    in_sample_before = BiasCalibrator(LABELS).fit(logits, gold).predict(logits)
    leaks = 0
    for doc in sorted(set(doc_ids)):
        rewritten = [[LABELS[i] for i in rng.integers(len(LABELS), size=len(s))] if d == doc else s
                     for s, d in zip(gold, doc_ids)]
        after = CrossFitCalibrator(LABELS).fit(logits, rewritten, doc_ids).predict(logits)
        own = [i for i, d in enumerate(doc_ids) if d == doc]
        assert [after[i] for i in own] == [before[i] for i in own], doc
        in_sample = BiasCalibrator(LABELS).fit(logits, rewritten).predict(logits)
        leaks += [in_sample[i] for i in own] != [in_sample_before[i] for i in own]
    assert leaks > 0  # the check has teeth: an in-sample fit moves with the document's own tags


def test_a_case_where_in_sample_offsets_would_leak():
    """One entity type, single-word entities; a word's A logit sits ``shift`` below O. Document 0
    (half 0) marks every shift-3 word an entity; the half-1 documents mark shift-1 words only.
    In sample, document 0's six entities pull the offset past 3 and document 0 is decoded
    perfectly, by its own tags; cross-fitted, it is decoded with half 1's offset (between 1 and
    3) and its shift-3 words stay O, whatever its own tags say."""
    from bertlab.calibration import CrossFitCalibrator

    def sentence(shifts):
        z = np.full((len(shifts), len(LABELS)), -5.0)
        z[:, 0] = 2.0
        z[:, 1] = 2.0 - np.asarray(shifts, dtype=np.float64)
        return z
    shifts = [[3] * 6, [1, 1, 3, 3], [1, 3], [1, 1, 3]]
    gold = [["B-A"] * 6, ["B-A", "B-A", "O", "O"], ["B-A", "O"], ["B-A", "B-A", "O"]]
    logits, doc_ids = [sentence(s) for s in shifts], ["d0", "d1", "d2", "d3"]
    in_sample = BiasCalibrator(LABELS).fit(logits, gold)
    assert in_sample.bias[0] > 3 and in_sample.predict(logits)[0] == gold[0]
    cross = CrossFitCalibrator(LABELS).fit(logits, gold, doc_ids)
    assert 1 < cross.fits[1].bias[0] < 3 and cross.predict(logits)[0] == ["O"] * 6
    quiet = [["O"] * 6] + gold[1:]  # document 0's own tags no longer matter
    assert CrossFitCalibrator(LABELS).fit(logits, quiet, doc_ids).predict(logits)[0] == ["O"] * 6
    assert BiasCalibrator(LABELS).fit(logits, quiet).predict(logits)[0] == ["O"] * 6  # in sample it follows


def test_cross_fit_decodes_only_the_sentences_it_was_fitted_on():
    from bertlab.calibration import CrossFitCalibrator
    logits, gold, doc_ids = dev_documents(600)
    cross = CrossFitCalibrator(LABELS)
    with pytest.raises(RuntimeError, match="not fitted"):
        cross.predict(logits)
    cross.fit(logits, gold, doc_ids)
    with pytest.raises(ValueError, match="it decodes only the sentences it was fitted on"):
        cross.predict(logits[:-1])
    with pytest.raises(ValueError, match="expected one of each per sentence"):
        cross.fit(logits, gold, doc_ids[:-1])
    # one document: the empty half fits offsets 0, so that document is decoded by argmax
    one = CrossFitCalibrator(LABELS).fit(logits[:3], gold[:3], ["d"] * 3)
    assert one.predict(logits[:3]) == [[LABELS[i] for i in z.argmax(1)] for z in logits[:3]]


def test_calibration_fit_is_a_checked_field_and_older_configs_read_as_dev():
    from bertlab.config import ConfigError, config_from_dict
    assert config_from_dict({"eval": {"decode": ["calibrated"]}}).eval.calibration_fit == "dev"
    assert config_from_dict({"eval": {"calibration_fit": "crossfit"}}).eval.calibration_fit == "crossfit"
    with pytest.raises(ConfigError, match="calibration_fit"):
        config_from_dict({"eval": {"calibration_fit": "test"}}, "study.toml")
