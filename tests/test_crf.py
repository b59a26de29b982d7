"""The linear-chain CRF against brute-force enumeration over all C^n tag sequences (float64)."""
import itertools
import math

import pytest
import torch

from bertlab.models.crf import CRF, iob2_allowed, pack_masked

LABELS = ["O", "B-Dis", "I-Dis", "B-Drug", "I-Drug"]


def random_crf(C, seed, labels=None, constraints=True):
    g = torch.Generator().manual_seed(seed)
    crf = CRF(C, labels, constraints=constraints).double()
    with torch.no_grad():
        for p in (crf.transitions, crf.start_transitions, crf.end_transitions):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return crf


def ragged_problem(B, T, C, seed):
    """Random emissions and a left-aligned mask with lengths 1..T (one row always full)."""
    g = torch.Generator().manual_seed(seed)
    emissions = torch.randn(B, T, C, generator=g, dtype=torch.float64) * 2
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    return emissions, mask, lengths.tolist()


def brute_force_score(crf, e, path):
    """s(y) written out directly from the definition, forbidden moves included at FORBIDDEN."""
    trans, start, end = crf._potentials(torch.float64)
    s = start[path[0]] + e[0, path[0]]
    for t in range(1, len(path)):
        s = s + trans[path[t - 1], path[t]] + e[t, path[t]]
    return s + end[path[-1]]


def brute_force(crf, e, n):
    """(log Z, best path) by enumerating every sequence of length n over the row's emissions."""
    C = e.shape[-1]
    scores = {path: brute_force_score(crf, e, path).item()
              for path in itertools.product(range(C), repeat=n)}
    log_z = math.log(sum(math.exp(s) for s in scores.values()))
    best = max(scores, key=scores.get)
    return log_z, list(best)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("C,labels", [(3, None), (4, None), (5, LABELS)])
def test_log_partition_and_viterbi_match_brute_force(seed, C, labels):
    T = 5 if C <= 4 else 4  # 5^4 = 625 sequences keeps the labelled case fast
    crf = random_crf(C, seed, labels)
    emissions, mask, lengths = ragged_problem(4, T, C, seed + 100)
    log_z = crf.log_partition(emissions, mask)
    paths = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        ref_z, ref_path = brute_force(crf, emissions[b], n)
        assert log_z[b].item() == pytest.approx(ref_z, abs=1e-9)
        assert paths[b] == ref_path
        # the score of the decoded path is the brute-force score of that path
        tags = torch.tensor(paths[b] + [0] * (emissions.shape[1] - n))[None]
        s = crf.score(emissions[b:b + 1], tags, mask[b:b + 1])
        assert s.item() == pytest.approx(brute_force_score(crf, emissions[b], paths[b]).item(), abs=1e-9)


def test_probabilities_of_all_sequences_sum_to_one():
    crf = random_crf(3, 7)
    emissions, mask, _ = ragged_problem(1, 4, 3, 8)
    total = 0.0
    for path in itertools.product(range(3), repeat=4):
        nll = crf.nll(emissions, torch.tensor([path]), mask, reduction="none")
        total += math.exp(-nll.item())
    assert total == pytest.approx(1.0, abs=1e-12)


def test_nll_gradcheck_float64():
    """Gradients of the nll w.r.t. emissions and all three CRF parameters, constrained, ragged."""
    crf = random_crf(4, 3, ["O", "B-Dis", "I-Dis", "B-Drug"])
    emissions, mask, _ = ragged_problem(3, 4, 4, 11)
    tags = torch.tensor([[0, 1, 2, 0], [3, 0, 1, -100], [2, 2, -100, -100]])  # row 3: a fragment
    mask[1, 3] = False
    mask[2, 2:] = False
    names = ("transitions", "start_transitions", "end_transitions")
    params = tuple(getattr(crf, n).detach().clone().requires_grad_(True) for n in names)

    def nll(e, *p):
        return torch.func.functional_call(crf, dict(zip(names, p)), (e, tags, mask), {"reduction": "sum"})

    assert torch.autograd.gradcheck(nll, (emissions.requires_grad_(True),) + params)


def test_nll_gradient_is_marginals_minus_gold():
    """d nll / d e[t, j] = p(y_t = j) - [y_t = j]; marginals by enumeration."""
    crf = random_crf(3, 5)
    e = torch.randn(1, 3, 3, dtype=torch.float64, requires_grad=True)
    gold = torch.tensor([[2, 0, 1]])
    crf.nll(e, gold, reduction="sum").backward()
    marg = torch.zeros(3, 3, dtype=torch.float64)
    log_z = crf.log_partition(e.detach()).item()
    for path in itertools.product(range(3), repeat=3):
        p = math.exp(brute_force_score(crf, e[0].detach(), path).item() - log_z)
        for t, j in enumerate(path):
            marg[t, j] += p
    expected = marg - torch.nn.functional.one_hot(gold[0], 3).double()
    torch.testing.assert_close(e.grad[0], expected)


def is_valid_iob2(tags):
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False  # an I- must continue a B-/I- of the same type (prev "O" has type "")
        prev = tag
    return True


def test_iob2_checker_itself():
    assert is_valid_iob2(["O", "B-Dis", "I-Dis", "O", "B-Drug"])
    assert not is_valid_iob2(["I-Dis"])
    assert not is_valid_iob2(["O", "I-Dis"])
    assert not is_valid_iob2(["B-Dis", "I-Drug"])
    assert not is_valid_iob2(["B-Drug", "I-Drug", "I-Dis"])


def test_constrained_decoding_never_invalid():
    g = torch.Generator().manual_seed(0)
    crf = CRF(len(LABELS), LABELS)  # zero transitions: the constraints alone must do the work
    unconstrained = CRF(len(LABELS))
    invalid_without = 0
    for trial in range(25):
        # emissions favour I- tags so that argmax alone would often be invalid
        e = torch.randn(16, 12, len(LABELS), generator=g) * 3
        e[..., 2] += 1.5
        e[..., 4] += 1.5
        lengths = torch.randint(1, 13, (16,), generator=g)
        mask = torch.arange(12)[None] < lengths[:, None]
        for path in crf.decode(e, mask):
            assert is_valid_iob2([LABELS[i] for i in path])
        invalid_without += sum(not is_valid_iob2([LABELS[i] for i in p]) for p in unconstrained.decode(e, mask))
    assert invalid_without > 50  # the test has teeth: unconstrained Viterbi does go wrong


def test_constrained_partition_only_counts_valid_sequences():
    crf = random_crf(3, 1, ["O", "B-X", "I-X"])
    e = torch.randn(1, 4, 3, dtype=torch.float64)
    valid = [p for p in itertools.product(range(3), repeat=4) if is_valid_iob2([crf.labels[i] for i in p])]
    ref = math.log(sum(math.exp(brute_force_score(crf, e[0], p).item()) for p in valid))
    assert crf.log_partition(e).item() == pytest.approx(ref, abs=1e-9)


def test_allowed_table():
    allowed, start = iob2_allowed(LABELS)
    assert start.tolist() == [True, True, False, True, False]
    assert not allowed[0, 2] and not allowed[1, 4] and not allowed[2, 4] and not allowed[4, 2]
    assert allowed[1, 2] and allowed[2, 2] and allowed[2, 3] and allowed[0, 1] and allowed[4, 0]


def test_fragment_starting_inside_entity_has_a_finite_proper_loss():
    crf = random_crf(3, 2, ["O", "B-X", "I-X"])
    e = torch.randn(1, 3, 3, dtype=torch.float64)
    nll = crf.nll(e, torch.tensor([[2, 2, 0]]), reduction="sum")
    assert 0 < nll.item() < 100  # not the +1e4 of a forbidden start


def test_empty_rows_and_float32():
    crf = CRF(3)
    e = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    assert crf.nll(e, torch.zeros(2, 4, dtype=torch.long), mask, reduction="none")[1].item() == 0
    assert crf.decode(e, mask)[1] == []
    with pytest.raises(ValueError, match="left-aligned"):
        crf.log_partition(e, torch.tensor([[False, True, True, False]] * 2))


def test_pack_masked():
    x = torch.arange(12).view(2, 6)
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]]).bool()
    packed, pm = pack_masked(x, mask)
    assert packed[0].tolist() == [1, 3, 4] and pm[0].tolist() == [True] * 3
    assert packed[1, 0].item() == 8 and pm[1].tolist() == [True, False, False]
    x3 = torch.randn(2, 6, 4)
    packed3, _ = pack_masked(x3, mask)
    torch.testing.assert_close(packed3[0], x3[0, [1, 3, 4]])
