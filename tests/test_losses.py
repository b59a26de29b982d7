"""bertlab.losses against references: torch.nn.functional, closed-form gradients, gradcheck, brute force."""
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertlab.losses import (LossConfig, TokenLoss, balanced_softmax_loss, build_loss, class_priors, class_weights,
                            cross_entropy, dice_loss, focal_loss, label_counts, ldam_loss, ldam_margins,
                            ldam_token_losses, logit_adjusted_loss, offset_token_losses, seen_counts,
                            token_losses)

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
    (dict(name="tversky"), None, "LossConfig.name"),
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


# --- class imbalance: logit adjustment, balanced softmax, LDAM, dice, label smoothing ------------
# Each loss against its paper's formula written out independently in float64 (exp and sums, no
# log_softmax), its gradient against float64 autograd of that formula and against a closed form.

COUNTS = [(900, 60, 40), (5000, 3, 0, 120, 7, 0, 1), (10, 10), (2, 50, 50, 0, 9)]


def ref_seen(counts):
    """The documented rule, written out: a zero count becomes the smallest non-zero count."""
    rare = min(float(c) for c in counts if c > 0)
    return torch.tensor([float(c) if c > 0 else rare for c in counts], dtype=torch.float64)


def case_with_counts(seed, dtype=torch.float64, n=None, scale=3.0):
    """A random case whose class count matches one of COUNTS (cycled by seed)."""
    counts = COUNTS[seed % len(COUNTS)]
    logits, targets = random_case(seed, n=n, c=len(counts), dtype=dtype, scale=scale)
    return logits, targets, counts


def per_token_ref(fn, logits, targets):
    """[N] float64: fn(z_i, t_i) for counted tokens, 0 for ignored ones (the autograd reference)."""
    z = logits.double()
    zero = torch.zeros((), dtype=torch.float64)
    return torch.stack([fn(z[i], int(t)) if t != -100 else zero * z[i, 0] for i, t in enumerate(targets)]) \
        if len(targets) else z.sum(-1)


def ref_logit_adjusted(z, t, priors, tau):
    """-log [π_t^τ e^{z_t} / Σ_j π_j^τ e^{z_j}]  (Menon et al. 2021, eq. for the LA loss)."""
    num = priors[t] ** tau * torch.exp(z[t])
    return -torch.log(num / (priors ** tau * torch.exp(z)).sum())


def ref_ldam(z, t, counts, max_margin, scale, weight=None):
    """The authors' code: m = 1/sqrt(sqrt(N)), m *= max_m / max(m); CE of s (z - m_t e_t)."""
    m = 1.0 / np.sqrt(np.sqrt(ref_seen(counts).numpy()))
    m = m * (max_margin / m.max())
    shifted = z - torch.nn.functional.one_hot(torch.tensor(t), len(z)).double() * float(m[t])
    e = torch.exp(scale * shifted - (scale * shifted).max())
    w = 1.0 if weight is None else weight[t]
    return -w * torch.log(e[t] / e.sum())


def ref_dice(z, t, alpha, gamma):
    """1 - (2q + γ) / (q + 1 + γ), q = (1 - p_t)^α p_t  (Li et al. 2020, self-adjusting DSC)."""
    p = torch.exp(z) / torch.exp(z).sum()
    q = (1 - p[t]) ** alpha * p[t]
    return 1 - (2 * q + gamma) / (q + 1 + gamma)


def check_against_reference(ours, reference, logits, targets, rtol=1e-9):
    """Per-token values and the gradient of the sum, ours (float64) vs the reference's autograd."""
    z1 = logits.double().clone().requires_grad_(True)
    z2 = logits.double().clone().requires_grad_(True)
    mine, ref = ours(z1), per_token_ref(reference, z2, targets)
    torch.testing.assert_close(mine, ref, rtol=rtol, atol=1e-12)
    mine.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", range(6))
def test_logit_adjusted_matches_the_formula(tau, seed):
    logits, targets, counts = case_with_counts(seed)
    priors = ref_seen(counts) / ref_seen(counts).sum()
    check_against_reference(lambda z: logit_adjusted_loss(z, targets, counts, tau, reduction="none"),
                            lambda z, t: ref_logit_adjusted(z, t, priors, tau), logits, targets)
    # priors or counts give the same loss (the normaliser shifts every logit alike)
    torch.testing.assert_close(logit_adjusted_loss(logits, targets, priors, tau),
                               logit_adjusted_loss(logits, targets, counts, tau))


@pytest.mark.parametrize("seed", range(6))
def test_balanced_softmax_matches_the_formula(seed):
    logits, targets, counts = case_with_counts(seed)
    n = ref_seen(counts)

    def ref(z, t):  # -log [N_t e^{z_t} / Σ_j N_j e^{z_j}]  (Ren et al. 2020)
        return -torch.log(n[t] * torch.exp(z[t]) / (n * torch.exp(z)).sum())
    check_against_reference(lambda z: balanced_softmax_loss(z, targets, counts, reduction="none"), ref,
                            logits, targets)


@pytest.mark.parametrize("max_margin,scale", [(0.5, 30.0), (0.5, 1.0), (1.0, 5.0), (0.0, 2.0)])
@pytest.mark.parametrize("seed", range(5))
def test_ldam_matches_the_authors_formula(max_margin, scale, seed):
    logits, targets, counts = case_with_counts(seed, scale=0.3 if scale == 30.0 else 3.0)
    w = None if seed % 2 else torch.rand(len(counts), dtype=torch.float64) + 0.1
    check_against_reference(
        lambda z: ldam_loss(z, targets, counts, max_margin, scale, weight=w, reduction="none"),
        lambda z, t: ref_ldam(z, t, counts, max_margin, scale, w), logits, targets)
    # the authors' F.cross_entropy(s * output, target, weight=w) is our "weighted_mean"
    if w is not None and (targets != -100).any():
        m = ldam_margins(counts, max_margin)
        shifted = logits.clone()
        valid = targets != -100
        shifted[valid.nonzero().squeeze(1), targets[valid]] -= m[targets[valid]]
        torch.testing.assert_close(ldam_loss(logits, targets, counts, max_margin, scale, w, reduction="weighted_mean"),
                                   F.cross_entropy(scale * shifted, targets, weight=w))


@pytest.mark.parametrize("alpha,gamma", [(1.0, 1.0), (0.0, 1.0), (0.5, 0.1), (2.0, 0.0), (0.1, 1.0)])
@pytest.mark.parametrize("seed", range(5))
def test_dice_matches_the_formula(alpha, gamma, seed):
    logits, targets, _ = case_with_counts(seed)
    check_against_reference(lambda z: dice_loss(z, targets, alpha, gamma, reduction="none"),
                            lambda z, t: ref_dice(z, t, alpha, gamma), logits, targets)
    valid = targets != -100
    expected = torch.stack([ref_dice(z, int(t), alpha, gamma) for z, t in zip(logits, targets) if t != -100]).mean() \
        if valid.any() else torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(dice_loss(logits, targets, alpha, gamma), expected)


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.1, 0.5])
@pytest.mark.parametrize("seed", range(6))
def test_label_smoothing_is_torchs(epsilon, seed):
    logits, targets = random_case(seed, dtype=torch.float64)
    targets[0] = 1
    w = torch.rand(logits.shape[1], dtype=torch.float64) + 0.1
    for weight, reductions in ((None, ("none", "mean", "sum")), (w, ("none", "sum"))):
        for reduction in reductions:
            z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
            ours = cross_entropy(z1, targets, weight=weight, reduction=reduction, label_smoothing=epsilon)
            ref = F.cross_entropy(z2, targets, weight=weight, reduction=reduction, label_smoothing=epsilon)
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
            ours.sum().backward()
            ref.sum().backward()
            torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-12)
    # PyTorch's weighted mean divides by Σ w_t, also with smoothing
    torch.testing.assert_close(cross_entropy(logits, targets, weight=w, reduction="weighted_mean",
                                             label_smoothing=epsilon),
                               F.cross_entropy(logits, targets, weight=w, label_smoothing=epsilon))


@pytest.mark.parametrize("seed", range(4))
def test_label_smoothing_of_every_ce_based_loss_is_torchs_on_its_logits(seed):
    logits, targets, counts = case_with_counts(seed)
    targets[0] = 0
    eps = 0.1
    n = seen_counts(counts)
    m = ldam_margins(counts)
    t = targets.clamp(min=0)
    shifted = logits - m[t][:, None] * F.one_hot(t, len(counts))
    for ours, adjusted in [(logit_adjusted_loss(logits, targets, counts, 0.7, label_smoothing=eps),
                            logits + 0.7 * (n / n.sum()).log()),
                           (balanced_softmax_loss(logits, targets, counts, label_smoothing=eps), logits + n.log()),
                           (ldam_loss(logits, targets, counts, scale=2.0, label_smoothing=eps), 2.0 * shifted)]:
        torch.testing.assert_close(ours, F.cross_entropy(adjusted, targets, label_smoothing=eps))


def test_label_smoothing_leaves_out_minus_infinity_columns():
    """A 2-column BTL copy is padded to 3 with a -∞ logit (p = 0): smoothing spreads over the 2."""
    logits = torch.tensor([[1.0, -0.5, float("-inf")], [0.2, 0.3, float("-inf")]], requires_grad=True)
    targets = torch.tensor([1, 0])
    ours = cross_entropy(logits, targets, label_smoothing=0.2, reduction="sum")
    ref = F.cross_entropy(logits[:, :2], targets, label_smoothing=0.2, reduction="sum")
    torch.testing.assert_close(ours, ref)
    ours.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 2] == 0).all()


# closed forms of ∂l_i/∂z_j (docs/losses.md derives them)

@pytest.mark.parametrize("seed", range(6))
def test_closed_form_gradients(seed):
    logits, targets, counts = case_with_counts(seed)
    valid = (targets != -100)[:, None]
    t = targets.clamp(min=0)
    delta = F.one_hot(t, len(counts)).double()
    n = seen_counts(counts)

    def grad(fn):
        z = logits.clone().requires_grad_(True)
        fn(z).backward()
        return z.grad

    def masked(g):
        return torch.where(valid, g, torch.zeros_like(g))
    # LA / BS: p̃ - δ, p̃ = softmax(z + offset)
    p_la = (logits + 1.5 * (n / n.sum()).log()).softmax(-1)
    torch.testing.assert_close(grad(lambda z: logit_adjusted_loss(z, targets, counts, 1.5, reduction="sum")),
                               masked(p_la - delta), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad(lambda z: balanced_softmax_loss(z, targets, counts, reduction="sum")),
                               masked((logits + n.log()).softmax(-1) - delta), rtol=1e-10, atol=1e-12)
    # LDAM: s w_t (p' - δ), p' = softmax(s (z - Δ_t e_t))
    w = torch.rand(len(counts), dtype=torch.float64) + 0.1
    s = 4.0
    p_ldam = (s * (logits - ldam_margins(counts)[t][:, None] * delta)).softmax(-1)
    torch.testing.assert_close(grad(lambda z: ldam_loss(z, targets, counts, 0.5, s, w, reduction="sum")),
                               masked(s * w[t][:, None] * (p_ldam - delta)), rtol=1e-10, atol=1e-12)
    # dice: -(2+γ)/(q+1+γ)² (1-p_t)^{α-1} (1-(1+α) p_t) p_t (δ_jt - p_j)
    alpha, gamma = 0.7, 0.5
    p = logits.softmax(-1)
    p_t = p.gather(1, t[:, None])
    q = (1 - p_t) ** alpha * p_t
    factor = -(2 + gamma) / (q + 1 + gamma) ** 2 * (1 - p_t) ** (alpha - 1) * (1 - (1 + alpha) * p_t) * p_t
    torch.testing.assert_close(grad(lambda z: dice_loss(z, targets, alpha, gamma, reduction="sum")),
                               masked(factor * (delta - p)), rtol=1e-9, atol=1e-12)
    # label smoothing, weighted: (1-ε) w_t (p_j - δ_jt) + ε/C (Σ_k w_k p_j - w_j)
    eps, C = 0.2, len(counts)
    expected = (1 - eps) * w[t][:, None] * (p - delta) + eps / C * (w.sum() * p - w)
    torch.testing.assert_close(grad(lambda z: cross_entropy(z, targets, w, reduction="sum", label_smoothing=eps)),
                               masked(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["logit_adjusted", "balanced_softmax", "ldam", "dice", "smoothed"])
def test_imbalance_losses_gradcheck(name):
    logits, targets = random_case(7, n=6, c=4, dtype=torch.float64)
    targets[0], targets[1] = 2, -100
    counts = [50, 5, 0, 20]
    fn = {"logit_adjusted": lambda x: logit_adjusted_loss(x, targets, counts, 0.8),
          "balanced_softmax": lambda x: balanced_softmax_loss(x, targets, counts, reduction="sum"),
          "ldam": lambda x: ldam_loss(x, targets, counts, 0.5, 3.0, [0.3, 1.0, 2.0, 0.7], reduction="weighted_mean"),
          "dice": lambda x: dice_loss(x, targets, 0.5, 1.0),
          "smoothed": lambda x: cross_entropy(x, targets, [0.3, 1.0, 2.0, 0.7], label_smoothing=0.1)}[name]
    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(True),))


IMBALANCE_LOSSES = {
    "logit_adjusted": lambda z, t, **k: logit_adjusted_loss(z, t, [5, 3, 0], 1.0, **k),
    "balanced_softmax": lambda z, t, **k: balanced_softmax_loss(z, t, [5, 3, 0], **k),
    "ldam": lambda z, t, **k: ldam_loss(z, t, [5, 3, 0], **k),
    "ldam_weighted": lambda z, t, **k: ldam_loss(z, t, [5, 3, 0], weight=[0.5, 2.0, 0.0], **k),
    "dice": lambda z, t, **k: dice_loss(z, t, **k),
    "dice_alpha_half": lambda z, t, **k: dice_loss(z, t, alpha=0.5, gamma=0.0, **k),
    "smoothed": lambda z, t, **k: cross_entropy(z, t, label_smoothing=0.1, **k),
    "smoothed_weighted": lambda z, t, **k: cross_entropy(z, t, [0.5, 2.0, 1.0], label_smoothing=0.1, **k),
}


@pytest.mark.parametrize("name", IMBALANCE_LOSSES)
def test_imbalance_losses_extreme_logits_are_finite(name):
    # p_t = 1 exactly in fp32, p_t = 0, ±1e4 mixed, all equal, p_t = 1 - ~1e-9, a tie at the top
    logits = torch.tensor([[1e4, 0.0, 0.0], [-1e4, 0.0, 0.0], [1e4, -1e4, 0.0], [0.0, 0.0, 0.0],
                           [20.0, 0.0, 0.0], [5.0, 5.0, -3.0]], requires_grad=True)
    targets = torch.tensor([0, 0, 1, 2, 0, 1])
    for reduction in ("mean", "sum", "weighted_mean"):
        logits.grad = None
        loss = IMBALANCE_LOSSES[name](logits, targets, reduction=reduction)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), (name, reduction, logits.grad)
    # the same numbers as float64 where float64 still resolves them (rows 3..5)
    z32 = logits.detach()[3:].clone().requires_grad_(True)
    z64 = logits.detach()[3:].double().requires_grad_(True)
    for z in (z32, z64):
        IMBALANCE_LOSSES[name](z, targets[3:], reduction="sum").backward()
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", IMBALANCE_LOSSES)
def test_imbalance_losses_on_empty_and_all_ignored_batches(name):
    for logits in (torch.randn(5, 3, requires_grad=True), torch.zeros(0, 3, requires_grad=True)):
        targets = torch.full((len(logits),), -100)
        for reduction in ("mean", "sum", "weighted_mean"):
            logits.grad = None
            loss = IMBALANCE_LOSSES[name](logits, targets, reduction=reduction)
            assert loss.item() == 0.0 and loss.requires_grad
            loss.backward()
            assert logits.grad is not None and (logits.grad == 0).all()
        assert IMBALANCE_LOSSES[name](logits, targets, reduction="none").shape == targets.shape


@pytest.mark.parametrize("name", IMBALANCE_LOSSES)
def test_imbalance_losses_in_bf16_autocast_compute_in_fp32(name):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 3)
    x, targets = torch.randn(12, 8), torch.randint(0, 3, (12,))
    targets[3] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = IMBALANCE_LOSSES[name](logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, IMBALANCE_LOSSES[name](logits.float(), targets))
    assert IMBALANCE_LOSSES[name](logits.double(), targets).dtype == torch.float64
    # [B, T, C] is flattened
    torch.testing.assert_close(IMBALANCE_LOSSES[name](logits.float().reshape(3, 4, 3), targets.reshape(3, 4)),
                               IMBALANCE_LOSSES[name](logits.float(), targets))


def test_logit_adjusted_with_tau_one_is_the_balanced_softmax():
    """τ = 1: z + log π and z + log N differ by log Σ N in every column, so the losses (and their
    gradients) are equal; the adjusted logits are not, by exactly that normaliser."""
    counts = torch.tensor([900, 60, 40, 0, 7])
    logits, targets = random_case(3, n=30, c=5, dtype=torch.float64)
    n = seen_counts(counts)
    priors = class_priors(counts)
    torch.testing.assert_close((logits + n.log()) - (logits + priors.log()),
                               torch.full_like(logits, float(n.sum().log())))
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    la = logit_adjusted_loss(z1, targets, priors, tau=1.0, reduction="none")
    bs = balanced_softmax_loss(z2, targets, counts, reduction="none")
    torch.testing.assert_close(la, bs, rtol=1e-12, atol=1e-12)
    la.sum().backward()
    bs.sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-12, atol=1e-12)
    # and with τ ≠ 1 they differ
    assert not torch.allclose(logit_adjusted_loss(logits, targets, priors, tau=2.0),
                              balanced_softmax_loss(logits, targets, counts))


def test_a_class_without_training_tokens_counts_as_the_rarest():
    """I-X of a one-word type: N = 0. Priors, offsets and margins treat it as the rarest class
    that occurs; the DRW weights give it 0 (class_weights' rule); its tokens still get a finite
    loss and gradient under every count-based loss."""
    counts = torch.tensor([900, 60, 0, 40, 3])
    assert seen_counts(counts).tolist() == [900, 60, 3, 40, 3]
    priors = class_priors(counts)
    assert priors[2] == priors[4] and priors.sum().item() == pytest.approx(1.0)
    margins = ldam_margins(counts, max_margin=0.7)
    assert margins[2] == margins[4] == pytest.approx(0.7) and margins.max() == pytest.approx(0.7)
    assert class_weights(counts, "effective", 0.9999, "mean")[2] == 0
    loss = build_loss(LossConfig("logit_adjusted"), counts)
    torch.testing.assert_close(loss.offset[2], loss.offset[4])
    assert build_loss(LossConfig("balanced_softmax"), counts).offset[2] == pytest.approx(np.log(3))
    logits = torch.randn(4, 5, requires_grad=True)
    targets = torch.tensor([2, 2, 0, -100])
    for cfg in (LossConfig("logit_adjusted"), LossConfig("balanced_softmax"), LossConfig("ldam"),
                LossConfig("ldam", drw_epoch=0)):
        logits.grad = None
        value = build_loss(cfg, counts)(logits, targets)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="all 0"):
        seen_counts([0, 0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        class_priors([3, -1, 2])


def test_imbalance_per_token_broadcasts_and_looks_up_columns():
    """The TokenLoss contract: one [N, C] logit matrix against [K, N] target rows equals K calls;
    a binary copy's [N, 3] logits with ``columns`` use the offsets/margins/weights of those label
    ids: the formula restricted to those classes."""
    counts = torch.tensor([700, 20, 30, 0, 5])
    logits, _ = random_case(5, n=10, c=5)
    rows = torch.randint(0, 5, (3, 10))
    rows[1, :4] = -100
    columns = torch.tensor([0, 3, 4])
    positions = torch.tensor([0, 1, 2, 0, 2, -100, 1, 1, 0, 2])
    sub = logits[:, columns]
    for cfg in (LossConfig("logit_adjusted", tau=0.5, label_smoothing=0.1), LossConfig("balanced_softmax"),
                LossConfig("ldam", scale=3.0, drw_epoch=0), LossConfig("dice", alpha=0.5, gamma=0.3)):
        loss = build_loss(cfg, counts)
        stacked, weights = loss.per_token(logits, rows)
        for k in range(3):
            one, w = loss.per_token(logits, rows[k])
            torch.testing.assert_close(stacked[k], one)
            torch.testing.assert_close(weights[k], w)
        got = loss.per_token(sub, positions, columns)[0]
        if cfg.name in ("logit_adjusted", "balanced_softmax"):
            want = offset_token_losses(sub, positions, loss.offset[columns], label_smoothing=cfg.label_smoothing)[0]
        elif cfg.name == "ldam":
            want = ldam_token_losses(sub, positions, loss.margins[columns], 3.0, loss.alpha[columns])[0]
        else:
            want = dice_loss(sub, positions, 0.5, 0.3, reduction="none")
        torch.testing.assert_close(got, want)


def test_build_loss_builds_each_imbalance_loss_from_its_fields():
    logits, targets = random_case(11, n=30, c=5)
    counts = torch.tensor([700, 20, 30, 0, 5])
    cases = [
        (LossConfig("logit_adjusted"), logit_adjusted_loss(logits, targets, counts, 1.0)),
        (LossConfig("logit_adjusted", tau=0.3, label_smoothing=0.05),
         logit_adjusted_loss(logits, targets, counts, 0.3, label_smoothing=0.05)),
        (LossConfig("balanced_softmax", reduction="sum"),
         balanced_softmax_loss(logits, targets, counts, reduction="sum")),
        (LossConfig("ldam"), ldam_loss(logits, targets, counts, 0.5, 30.0)),
        (LossConfig("ldam", max_margin=1.0, scale=2.0), ldam_loss(logits, targets, counts, 1.0, 2.0)),
        (LossConfig("dice"), dice_loss(logits, targets, 1.0, 1.0)),
        (LossConfig("dice", alpha=0.3, gamma=0.5), dice_loss(logits, targets, 0.3, 0.5)),
        (LossConfig("ce", label_smoothing=0.1), cross_entropy(logits, targets, label_smoothing=0.1)),
        (LossConfig("weighted_ce", label_smoothing=0.1),
         cross_entropy(logits, targets, class_weights(counts), label_smoothing=0.1)),
    ]
    for cfg, expected in cases:
        loss = build_loss(cfg, counts)
        assert isinstance(loss, TokenLoss) and loss.name == cfg.name
        torch.testing.assert_close(loss(logits, targets), expected, rtol=1e-6, atol=1e-7)


def test_deferred_reweighting_switches_on_at_its_epoch():
    """DRW (Cao et al.): epochs 0..E-1 unweighted, from E on the effective-number weights with
    β = 0.9999, normalised to mean 1 over the classes that occur (their Σ w = C)."""
    counts = torch.tensor([700, 20, 30, 0, 5])
    cfg = LossConfig("ldam", drw_epoch=2)
    drw = class_weights(counts, "effective", 0.9999, normalize="mean")
    raw = (1 - 0.9999) / (1 - 0.9999 ** counts[counts > 0].double())
    torch.testing.assert_close(drw[counts > 0].double(), raw / raw.mean(), rtol=1e-6, atol=0)
    for epoch in (0, 1):
        assert build_loss(cfg, counts, epoch=epoch).alpha is None
    for epoch in (2, 5):
        torch.testing.assert_close(build_loss(cfg, counts, epoch=epoch).alpha, drw)
    logits, targets = random_case(2, n=20, c=5)
    torch.testing.assert_close(build_loss(cfg, counts, epoch=3)(logits, targets),
                               ldam_loss(logits, targets, counts, weight=drw))
    torch.testing.assert_close(build_loss(LossConfig("ce", drw_epoch=1, drw_beta=0.99), counts, epoch=1).alpha,
                               class_weights(counts, "effective", 0.99, normalize="mean"))


@pytest.mark.parametrize("fields,message", [
    (dict(name="logit_adjusted", tau=-1.0), "LossConfig.tau"),
    (dict(name="ce", tau=1.0), "LossConfig.tau=1.0 is only used by name='logit_adjusted'"),
    (dict(name="focal", max_margin=0.5), "LossConfig.max_margin"),
    (dict(name="ldam", scale=0.0), "LossConfig.scale"),
    (dict(name="ldam", max_margin=-0.1), "LossConfig.max_margin"),
    (dict(name="balanced_softmax", drw_epoch=3), "LossConfig.drw_epoch"),
    (dict(name="ldam", drw_epoch=-1), "LossConfig.drw_epoch"),
    (dict(name="ldam", drw_beta=0.99), "LossConfig.drw_beta"),
    (dict(name="ldam", drw_epoch=1, drw_beta=1.0), "LossConfig.drw_beta"),
    (dict(name="focal", label_smoothing=0.1), "LossConfig.label_smoothing"),
    (dict(name="dice", label_smoothing=0.1), "LossConfig.label_smoothing"),
    (dict(name="ce", label_smoothing=1.0), "LossConfig.label_smoothing"),
    (dict(name="dice", alpha="weights"), "LossConfig.alpha"),
    (dict(name="dice", alpha=-1.0), "LossConfig.alpha"),
    (dict(name="dice", gamma=-1.0), "LossConfig.gamma"),
    (dict(name="balanced_softmax", gamma=1.0), "LossConfig.gamma"),
])
def test_imbalance_configs_name_the_field(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_loss(LossConfig(**fields), [3, 4, 5])


@pytest.mark.parametrize("name", ["logit_adjusted", "balanced_softmax", "ldam"])
def test_count_based_losses_need_counts(name):
    with pytest.raises(ValueError, match=re.escape(f"LossConfig.name='{name}' needs the class counts")):
        build_loss(LossConfig(name))
    with pytest.raises(ValueError, match="LossConfig.drw_epoch needs the class counts"):
        build_loss(LossConfig("ce", drw_epoch=1))


def test_imbalance_worked_example_in_docs():
    """Recompute every number of docs/losses.md § "The worked example, continued"."""
    text = DOC.read_text()
    block = text.split("<!-- worked-example-imbalance:start -->")[1].split("<!-- worked-example-imbalance:end -->")[0]
    values = {}
    for line in block.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(-?\d+\.\d{4})\s*\|", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    assert len(values) >= 30, f"parsed only {sorted(values)}"
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.3, 1.2, -0.4]], requires_grad=True)
    targets = torch.tensor([0, 2])
    counts = torch.tensor([90, 8, 2])
    log_pi = class_priors(counts).log()
    computed = {f"logpi_{c}": log_pi[c] for c in range(3)}
    p_tilde = (logits.detach() + log_pi).softmax(-1)
    computed.update(ptilde_00=p_tilde[0, 0], ptilde_12=p_tilde[1, 2])
    computed.update({f"Delta_{c}": ldam_margins(counts)[c] for c in range(3)})
    p = logits.detach().softmax(-1)
    p_t = p[[0, 1], [0, 2]]
    computed.update({f"q_{i}": (1 - p_t[i]) * p_t[i] for i in range(2)})
    for name, fn in [("LA", lambda z, **k: logit_adjusted_loss(z, targets, counts, 1.0, **k)),
                     ("BS", lambda z, **k: balanced_softmax_loss(z, targets, counts, **k)),
                     ("LDAM", lambda z, **k: ldam_loss(z, targets, counts, 0.5, 1.0, **k)),
                     ("DSC", lambda z, **k: dice_loss(z, targets, 1.0, 1.0, **k)),
                     ("LS", lambda z, **k: cross_entropy(z, targets, label_smoothing=0.1, **k))]:
        per_token = fn(logits, reduction="none")
        computed.update({f"{name}_{i}": per_token[i] for i in range(2)})
        logits.grad = None
        per_token.sum().backward()
        computed.update({f"d{name}_{i}{j}": logits.grad[i, j] for i in range(2) for j in range(3)})
        computed[f"{name}_mean"] = fn(logits)
    unknown = sorted(set(values) - set(computed))
    assert not unknown, f"docs/losses.md shows quantities the test does not compute: {unknown}"
    for name, value in values.items():
        assert round(float(computed[name].detach()), 4) == pytest.approx(value, abs=1e-12), name
