"""Tag schemes: round trips on generated sequences, validity against a brute-force definition, seqeval."""
import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from bertlab.datasets.tags import (SCHEMES, check_tags, convert_tags, repair_iob2, spans_from_tags, split_tag,
                                   tag_problems, tags_from_spans)

TYPES = ["A", "B", "Drug"]


def random_spans(rng, length):
    """Non-overlapping spans, often touching (the case IOB1 and IOB2 encode differently)."""
    spans, i = [], 0
    while i < length:
        if rng.random() < 0.4:
            stop = min(length, i + rng.randint(1, 4))
            spans.append((i, stop, rng.choice(TYPES)))
            i = stop
        else:
            i += 1
    return spans


@pytest.mark.parametrize("scheme", SCHEMES)
def test_spans_round_trip_on_random_sequences(scheme):
    rng = random.Random(1)
    for _ in range(2000):
        length = rng.randint(0, 12)
        spans = random_spans(rng, length)
        tags = tags_from_spans(spans, length, scheme)
        assert tag_problems(tags, scheme) == []
        assert spans_from_tags(tags, scheme) == spans


def test_conversions_between_all_schemes_agree():
    rng = random.Random(2)
    for _ in range(1000):
        length = rng.randint(1, 12)
        spans = random_spans(rng, length)
        encoded = {s: tags_from_spans(spans, length, s) for s in SCHEMES}
        for a in SCHEMES:
            for b in SCHEMES:
                assert convert_tags(encoded[a], a, b) == encoded[b]


def test_iob2_spans_match_seqeval():
    rng = random.Random(3)
    for _ in range(500):
        length = rng.randint(1, 15)
        tags = tags_from_spans(random_spans(rng, length), length)
        expected = [(t, s, e + 1) for t, s, e in get_entities(tags)]
        assert [(t, s, e) for s, e, t in spans_from_tags(tags)] == expected


@pytest.mark.parametrize("scheme", SCHEMES)
def test_validity_equals_round_trip_identity_on_random_tag_soup(scheme):
    # brute-force definition: a sequence is valid iff decoding and re-encoding gives it back
    prefixes = [p for p in {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES", "BILOU": "BILU"}[scheme]]
    rng = random.Random(4)
    n_invalid = 0
    for _ in range(3000):
        tags = [rng.choice(["O"] + [f"{p}-{t}" for p in prefixes for t in TYPES[:2]])
                for _ in range(rng.randint(1, 7))]
        valid = tags_from_spans(spans_from_tags(tags, scheme), len(tags), scheme) == tags
        assert (tag_problems(tags, scheme) == []) == valid, tags
        n_invalid += not valid
    assert 0 < n_invalid < 3000


def test_worked_examples():
    tags = ["O", "B-A", "I-A", "I-A", "I-A"]
    assert convert_tags(tags, "IOB2", "IOB1") == ["O", "I-A", "I-A", "I-A", "I-A"]
    assert convert_tags(tags, "IOB2", "IOBES") == ["O", "B-A", "I-A", "I-A", "E-A"]
    assert convert_tags(tags, "IOB2", "BILOU") == ["O", "B-A", "I-A", "I-A", "L-A"]
    assert convert_tags(["B-A", "B-A"], "IOB2", "IOB1") == ["I-A", "B-A"]
    assert convert_tags(["B-A", "B-A"], "IOB2", "BILOU") == ["U-A", "U-A"]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="token 1: I-A must follow B-A or I-A, not O"):
        check_tags(["O", "I-A"])
    with pytest.raises(ValueError, match="'E-A' is not valid IOB2"):
        split_tag("E-A", "IOB2")
    with pytest.raises(ValueError, match="unknown tag scheme"):
        spans_from_tags(["O"], "IO")
    with pytest.raises(ValueError, match="overlaps"):
        tags_from_spans([(0, 2, "A"), (1, 3, "B")], 3)


def test_repair_iob2_reports_every_change():
    tags, changes = repair_iob2(["O", "I-A", "I-A", "I-B", "O"])
    assert tags == ["O", "B-A", "I-A", "B-B", "O"]
    assert changes == [(1, "I-A", "B-A"), (3, "I-B", "B-B")]
    assert tag_problems(tags) == []
