"""bertlab.losses against references: torch.nn.functional, closed-form gradients, gradcheck, brute force."""
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bertlab.losses import (LossConfig, TokenLoss, build_loss, class_weights, cross_entropy, focal_loss,
                            label_counts, token_losses)

GAMMAS = [0.0, 0.5, 1.0, 2.0, 5.0]
DOC = Path(__file__).resolve().parents[1] / "docs" / "losses.md"


def random_case(seed, n=None, c=None, dtype=torch.float32, scale=3.0, ignore_fraction=0.2):
    """Random logits [N, C] and targets [N] with some -100; sizes drawn from the seed too."""
    g = torch.Generator().manual_seed(seed)
    n = n or int(torch.randint(1, 40, (1,), generator=g))
    c = c or int(torch.randint(2, 12, (1,), generator=g))
    logits = (scale * torch.randn(n, c, generator=g)).to(dtype)
    targets = torch.randint(0, c, (n,), generator=g)
    targets[torch.rand(n, generator=g) < ignore_fraction] = -100
    return logits, targets


def focal_closed_form_grad(logits, targets, gamma, alpha=None):
    """∂FL_i/∂z_j = α_t [γ (1-p_t)^{γ-1} p_t log p_t - (1-p_t)^γ] (δ_jt - p_j), 0 for ignored tokens."""
    p = logits.softmax(-1)
    valid = targets != -100
    t = targets.clamp(min=0)
    p_t = p.gather(1, t[:, None]).squeeze(1)
    a = torch.ones_like(p_t) if alpha is None else torch.as_tensor(alpha, dtype=p.dtype)[t]
    q = 1 - p_t
    first = gamma * q ** (gamma - 1) * p_t * p_t.log() if gamma > 0 else torch.zeros_like(p_t)
    bracket = a * (first - q ** gamma)
    delta = F.one_hot(t, logits.shape[1]).to(p.dtype)
    return torch.where(valid[:, None], bracket[:, None] * (delta - p), torch.zeros_like(p))


# --- cross entropy -----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_ce_matches_torch(seed):
    logits, targets = random_case(seed)
    if (targets == -100).all():
        targets[0] = 0
    for reduction in ("mean", "sum"):
        ours = cross_entropy(logits, targets, reduction=reduction)
        ref = F.cross_entropy(logits, targets, ignore_index=-100, reduction=reduction)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ours = cross_entropy(logits, targets, reduction="none")
    ref = F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_focal_gamma0_is_ce(seed):
    logits, targets = random_case(seed, ignore_fraction=0.3)
    targets[0] = 1
    torch.testing.assert_close(focal_loss(logits, targets, gamma=0.0),
                               F.cross_entropy(logits, targets, ignore_index=-100), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_weighted_ce_matches_torch(seed):
    logits, targets = random_case(seed)
    targets[0] = 0
    w = torch.rand(logits.shape[1], generator=torch.Generator().manual_seed(100 + seed)) + 0.05
    torch.testing.assert_close(cross_entropy(logits, targets, weight=w, reduction="weighted_mean"),
                               F.cross_entropy(logits, targets, weight=w), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cross_entropy(logits, targets, weight=w, reduction="sum"),
                               F.cross_entropy(logits, targets, weight=w, reduction="sum"), rtol=1e-5, atol=1e-6)
    # the default "mean" divides the same sum by the number of non-ignored tokens
    n_valid = (targets != -100).sum()
    torch.testing.assert_close(cross_entropy(logits, targets, weight=w),
                               F.cross_entropy(logits, targets, weight=w, reduction="sum") / n_valid,
                               rtol=1e-5, atol=1e-6)


def test_btc_shapes_are_flattened():
    logits, targets = random_case(3, n=24, c=5)
    ours = focal_loss(logits.reshape(4, 6, 5), targets.reshape(4, 6), gamma=2.0)
    torch.testing.assert_close(ours, focal_loss(logits, targets, gamma=2.0))
    assert cross_entropy(logits.reshape(4, 6, 5), targets.reshape(4, 6), reduction="none").shape == (4, 6)


@pytest.mark.parametrize("seed", range(4))
def test_weighted_ce_gradient_closed_form(seed):
    logits, targets = random_case(seed, dtype=torch.float64)
    w = torch.rand(logits.shape[1], dtype=torch.float64) + 0.1
    z = logits.clone().requires_grad_(True)
    cross_entropy(z, targets, weight=w, reduction="sum").backward()
    # ∂CE_i/∂z_j = w_t (p_j - δ_jt)
    p = logits.softmax(-1)
    w_t = torch.where(targets != -100, w[targets.clamp(min=0)], torch.zeros((), dtype=w.dtype))
    expected = w_t[:, None] * (p - F.one_hot(targets.clamp(min=0), logits.shape[1]))
    torch.testing.assert_close(z.grad, expected, rtol=1e-10, atol=1e-12)


# --- focal loss --------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("seed", range(4))
def test_focal_matches_formula(gamma, seed):
    logits, targets = random_case(seed, dtype=torch.float64)
    alpha = torch.rand(logits.shape[1], dtype=torch.float64)
    p_t = logits.softmax(-1).gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    direct = -alpha[targets.clamp(min=0)] * (1 - p_t) ** gamma * p_t.log()
    direct = torch.where(targets != -100, direct, torch.zeros(()))
    torch.testing.assert_close(focal_loss(logits, targets, gamma, alpha, reduction="none"), direct)
    torch.testing.assert_close(focal_loss(logits, targets, gamma, alpha, reduction="weighted_mean"),
                               direct.sum() / alpha[targets[targets != -100]].sum() if (targets != -100).any()
                               else torch.zeros((), dtype=torch.float64))
    # scalar alpha scales every token
    torch.testing.assert_close(focal_loss(logits, targets, gamma, 0.25, reduction="sum"),
                               0.25 * focal_loss(logits, targets, gamma, None, reduction="sum"))


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("seed", range(6))
def test_focal_gradient_closed_form(gamma, seed):
    logits, targets = random_case(seed, dtype=torch.float64)
    alpha = None if seed % 2 else torch.rand(logits.shape[1], dtype=torch.float64) + 0.1
    z = logits.clone().requires_grad_(True)
    focal_loss(z, targets, gamma, alpha, reduction="sum").backward()
    torch.testing.assert_close(z.grad, focal_closed_form_grad(logits, targets, gamma, alpha),
                               rtol=1e-9, atol=1e-12)
    # "mean" is the same divided by the number of non-ignored tokens
    z.grad = None
    focal_loss(z, targets, gamma, alpha, reduction="mean").backward()
    n_valid = max(int((targets != -100).sum()), 1)
    torch.testing.assert_close(z.grad, focal_closed_form_grad(logits, targets, gamma, alpha) / n_valid,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gamma,reduction", [(0.0, "mean"), (0.5, "mean"), (2.0, "weighted_mean"), (5.0, "sum")])
def test_focal_gradcheck(gamma, reduction):
    logits, targets = random_case(7, n=6, c=4, dtype=torch.float64)
    targets[0], targets[1] = 2, -100
    alpha = torch.tensor([0.3, 1.0, 2.0, 0.7], dtype=torch.float64)
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, targets, gamma, alpha, reduction=reduction), (z,))


@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_extreme_logits_are_finite(gamma):
    # rows: p_t = 1 exactly in fp32, p_t = 0, ±1e4 mixed, all equal, p_t = 1 - ~1e-9, and a tie at the top
    logits = torch.tensor([[1e4, 0.0, 0.0], [-1e4, 0.0, 0.0], [1e4, -1e4, 0.0], [0.0, 0.0, 0.0],
                           [20.0, 0.0, 0.0], [5.0, 5.0, -3.0]], requires_grad=True)
    targets = torch.tensor([0, 0, 1, 2, 0, 1])
    for alpha in (None, [0.5, 2.0, 1.0]):
        logits.grad = None
        loss = focal_loss(logits, targets, gamma, alpha, reduction="sum")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), (gamma, alpha, logits.grad)
        # p_t -> 1: the gradient vanishes for every γ (also γ < 1, where (1-p_t)^{γ-1} blows up)
        assert logits.grad[0].abs().max() == 0
        # p_t -> 0: ∂/∂z_j = -α_t (δ_jt - p_j), the p_t log p_t term vanishes
        a0 = 1.0 if alpha is None else alpha[0]
        torch.testing.assert_close(logits.grad[1], torch.tensor([-a0, 0.5 * a0, 0.5 * a0]))
    # against float64 where the closed form is still accurate
    z64 = logits.detach().double()[3:].requires_grad_(True)
    focal_loss(z64, targets[3:], gamma, reduction="sum").backward()
    torch.testing.assert_close(z64.grad, focal_closed_form_grad(z64.detach(), targets[3:], gamma))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_accurate_when_p_t_near_one(gamma):
    # z = [s, 0, 0]: 1 - p_t = 2e^{-s} / (1 + 2e^{-s}) exactly; fp32 p_t rounds to 1 for s > ~17
    s = torch.tensor([10.0, 17.0, 25.0, 40.0, 80.0])
    logits = torch.stack([s, torch.zeros_like(s), torch.zeros_like(s)], 1)
    targets = torch.zeros(5, dtype=torch.long)
    s64 = s.double()
    q = 2 * torch.exp(-s64) / (1 + 2 * torch.exp(-s64))
    exact = q ** gamma * torch.log1p(2 * torch.exp(-s64))
    ours = focal_loss(logits, targets, gamma, reduction="none").double()
    # relative accuracy down to fp32's smallest normal number (plain log_softmax gives 0 from s ≈ 17)
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1.2e-38)
    assert (ours[:3] > 0).all()


def test_all_ignored_gives_zero_loss_with_graph():
    logits = torch.randn(5, 3, requires_grad=True)
    targets = torch.full((5,), -100)
    for fn in (lambda: cross_entropy(logits, targets), lambda: cross_entropy(logits, targets, weight=[1., 2., 3.],
                                                                             reduction="weighted_mean"),
               lambda: focal_loss(logits, targets, 0.5, [1., 2., 3.]), lambda: focal_loss(logits, targets,
                                                                                          reduction="sum")):
        logits.grad = None
        loss = fn()
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert logits.grad is not None and (logits.grad == 0).all()


def test_autocast_bf16_computes_in_fp32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(12, 8)
    targets = torch.randint(0, 5, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        losses = [cross_entropy(logits, targets), focal_loss(logits, targets, 2.0, [1., 2., 1., 1., 3.]),
                  build_loss(LossConfig("weighted_ce"), [5, 3, 0, 8, 1])(logits, targets)]
    for loss, ref in zip(losses, [cross_entropy(logits.float(), targets),
                                  focal_loss(logits.float(), targets, 2.0, [1., 2., 1., 1., 3.]),
                                  build_loss(LossConfig("weighted_ce"), [5, 3, 0, 8, 1])(logits.float(), targets)]):
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, ref)  # same numbers as fp32 on the same (bf16) logits


def test_float64_stays_float64():
    logits, targets = random_case(1, dtype=torch.float64)
    assert focal_loss(logits, targets).dtype == torch.float64


def test_bad_targets_and_shapes_raise():
    with pytest.raises(ValueError, match="out of range"):
        cross_entropy(torch.zeros(3, 4), torch.tensor([0, 4, -100]))
    with pytest.raises(ValueError, match="targets shape"):
        focal_loss(torch.zeros(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(torch.zeros(3, 4), torch.tensor([0, 1, 2]), gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(torch.zeros(3, 4), torch.tensor([0, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match="3 classes|4 classes"):
        cross_entropy(torch.zeros(3, 4), torch.tensor([0, 1, 2]), weight=[1.0, 1.0, 1.0])


def test_token_losses_broadcast_one_logit_matrix_over_target_rows():
    logits, _ = random_case(5, n=10, c=4)
    rows = torch.randint(0, 4, (3, 10))
    rows[1, :4] = -100
    alpha = torch.tensor([0.5, 1.0, 2.0, 3.0])
    stacked, alpha_t = token_losses(logits, rows, 2.0, alpha)
    for k in range(3):
        torch.testing.assert_close(stacked[k], focal_loss(logits, rows[k], 2.0, alpha, reduction="none"))
    assert (alpha_t[1, :4] == 0).all()


# --- class weights and counts ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_class_weights_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 1000, (int(torch.randint(2, 10, (1,), generator=g)),), generator=g)
    counts[0] = 5000
    n, c = int(counts.sum()), len(counts)
    beta = 0.99
    for scheme, formula in [("paper", lambda k: 1 - k / n), ("inverse", lambda k: n / (c * k)),
                            ("effective", lambda k: (1 - beta) / (1 - beta ** k))]:
        raw = [formula(int(k)) if k > 0 else 0.0 for k in counts]
        torch.testing.assert_close(class_weights(counts, scheme, beta=beta), torch.tensor(raw), rtol=1e-6, atol=0)
        seen = [r for r, k in zip(raw, counts) if k > 0]
        torch.testing.assert_close(class_weights(counts, scheme, beta, "mean"),
                                   torch.tensor([r / (sum(seen) / len(seen)) for r in raw]), rtol=1e-6, atol=0)
        torch.testing.assert_close(class_weights(counts, scheme, beta, "sum"),
                                   torch.tensor([r / sum(seen) for r in raw]), rtol=1e-6, atol=0)


def test_class_weights_zero_count_and_errors():
    w = class_weights([90, 10, 0], "inverse")
    assert w[2] == 0 and torch.isfinite(w).all()
    assert class_weights([90, 10, 0], "effective", normalize="mean")[2] == 0
    with pytest.raises(ValueError, match="scheme"):
        class_weights([1, 2], "balanced")
    with pytest.raises(ValueError, match="all counts are 0"):
        class_weights([0, 0], "paper")
    with pytest.raises(ValueError, match="beta"):
        class_weights([1, 2], "effective", beta=1.0)
    # inverse weights balance the classes: Σ_c N_c w_c = N, each class contributing N / C
    counts = torch.tensor([900.0, 60.0, 40.0])
    torch.testing.assert_close(counts * class_weights(counts, "inverse"), torch.full((3,), 1000 / 3))


@pytest.mark.parametrize("scheme", ["paper", "inverse", "effective"])
def test_class_weights_normalise_over_the_classes_that_occur(scheme):
    """A class with no training token has weight 0 and no say in the normalisation: with
    normalize="mean" the classes that occur average exactly 1 (with "sum", add up to 1)."""
    counts = [90, 10, 0]
    raw = class_weights(counts, scheme)
    mean = class_weights(counts, scheme, normalize="mean")
    torch.testing.assert_close(mean, torch.cat([raw[:2] / raw[:2].mean(), torch.zeros(1)]))
    assert mean[:2].mean().item() == pytest.approx(1.0) and mean[2] == 0
    total = class_weights(counts, scheme, normalize="sum")
    assert total[:2].sum().item() == pytest.approx(1.0) and total[2] == 0


def test_label_counts_brute_force():
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(-1, 6, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g) for _ in range(20)]
    rows = [torch.where(r < 0, torch.full_like(r, -100), r) for r in rows]
    rows.append([0, 0, -100, 5])  # plain lists work too
    expected = Counter(int(x) for r in rows for x in torch.as_tensor(r) if x != -100)
    assert label_counts(rows, 6).tolist() == [expected[i] for i in range(6)]
    with pytest.raises(ValueError, match="row 1 has label id 7"):
        label_counts([[0, 1], [7]], 6)


# --- configs -----------------------------------------------------------------------------------

def test_build_loss_matches_functions():
    logits, targets = random_case(11, n=30, c=5)
    counts = torch.tensor([700, 20, 30, 0, 5])
    w = class_weights(counts, "effective", beta=0.99, normalize="mean")
    torch.testing.assert_close(build_loss(LossConfig("ce"))(logits, targets), cross_entropy(logits, targets))
    weighted = build_loss(LossConfig("weighted_ce", weight_scheme="effective", beta=0.99, normalize="mean",
                                     reduction="weighted_mean"), counts)
    targets_seen = torch.where(targets == 3, torch.zeros_like(targets), targets)  # class 3 has weight 0
    torch.testing.assert_close(weighted(logits, targets_seen), F.cross_entropy(logits, targets_seen, weight=w))
    focal = build_loss(LossConfig("focal", gamma=1.0, alpha="weights", weight_scheme="effective", beta=0.99,
                                  normalize="mean"), counts)
    torch.testing.assert_close(focal(logits, targets), focal_loss(logits, targets, 1.0, w))
    assert build_loss(LossConfig("focal")).gamma == 2.0
    assert isinstance(focal, TokenLoss)


@pytest.mark.parametrize("fields,counts,message", [
    (dict(name="weighted_ce"), None, "name='weighted_ce'"),
    (dict(name="focal", alpha="weights"), None, "alpha='weights'"),
    (dict(name="ce", gamma=2.0), None, "LossConfig.gamma"),
    (dict(name="ce", alpha=0.5), None, "LossConfig.alpha"),
    (dict(name="focal", alpha="balanced"), None, "LossConfig.alpha"),
    (dict(name="focal", gamma=-1.0), None, "LossConfig.gamma"),
    (dict(name="dice"), None, "LossConfig.name"),
    (dict(name="ce", reduction="none"), None, "LossConfig.reduction"),
    (dict(name="weighted_ce", weight_scheme="sqrt"), [3, 4], "LossConfig.weight_scheme"),
    (dict(name="weighted_ce", normalize="max"), [3, 4], "LossConfig.normalize"),
])
def test_inconsistent_configs_name_the_field(fields, counts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_loss(LossConfig(**fields), counts)


def test_config_edited_after_construction_is_checked_again():
    cfg = LossConfig("focal")
    cfg.name = "ce"  # gamma stays None, but alpha would not
    cfg.alpha = 0.5
    with pytest.raises(ValueError, match="LossConfig.alpha"):
        build_loss(cfg)


def test_loss_config_from_dict_rejects_unknown_keys():
    assert LossConfig.from_dict({"name": "focal", "gamma": 1.0}).gamma == 1.0
    with pytest.raises(ValueError, match="gamm"):
        LossConfig.from_dict({"name": "focal", "gamm": 1.0})


# --- the worked example in docs/losses.md ------------------------------------------------------

def doc_worked_example() -> dict[str, float]:
    """The `| quantity | value |` rows between the worked-example markers of docs/losses.md."""
    text = DOC.read_text()
    block = text.split("<!-- worked-example:start -->")[1].split("<!-- worked-example:end -->")[0]
    values = {}
    for line in block.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(-?\d+\.\d{4})\s*\|", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def test_worked_example_in_docs():
    """Recompute every number of docs/losses.md § "A worked example" (logits, targets as printed there)."""
    values = doc_worked_example()
    assert len(values) >= 20, f"parsed only {sorted(values)} from {DOC}"
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.3, 1.2, -0.4]], requires_grad=True)
    targets = torch.tensor([0, 2])
    counts = torch.tensor([90, 8, 2])
    w = class_weights(counts, "paper")
    computed = {f"w_{c}": w[c] for c in range(3)}
    p = logits.detach().softmax(-1)
    computed.update({f"p_{i}{j}": p[i, j] for i in range(2) for j in range(3)})
    for name, fn in [("CE", lambda z: cross_entropy(z, targets, reduction="none")),
                     ("wCE", lambda z: cross_entropy(z, targets, weight=w, reduction="none")),
                     ("FL", lambda z: focal_loss(z, targets, gamma=2.0, reduction="none"))]:
        per_token = fn(logits)
        computed.update({f"{name}_{i}": per_token[i] for i in range(2)})
        logits.grad = None
        per_token.sum().backward()
        computed.update({f"d{name}_{i}{j}": logits.grad[i, j] for i in range(2) for j in range(3)})
    computed["CE_mean"] = cross_entropy(logits, targets)
    computed["wCE_mean"] = cross_entropy(logits, targets, weight=w)
    computed["wCE_weighted_mean"] = cross_entropy(logits, targets, weight=w, reduction="weighted_mean")
    computed["FL_mean"] = focal_loss(logits, targets, gamma=2.0)
    missing = sorted(set(computed) - set(values))
    assert not missing, f"docs/losses.md worked example lacks {missing}"
    for name, value in values.items():
        assert round(float(computed[name].detach()), 4) == pytest.approx(value, abs=1e-12), name
