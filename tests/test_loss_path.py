"""One loss path: the loss object a researcher edits is the loss every sampler trains with.

References: a custom loss (label-smoothed CE, written as a TokenLoss subclass) drives ATL, naive
BTL and fused BTL with the gradients of a direct autograd computation of its formula on the same
batch; and scaling the public loss scales the parameter update of one training step on each path.
The class-imbalance losses of the [loss] section (#40) are checked the same way, and zeroing each
leaves one training step's parameters unchanged on every path.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bertlab.batching import collate
from bertlab.config import load_config
from bertlab.losses import TokenLoss, binary_token_label_batches
from bertlab.losses.objective import build_objective, step_loss
from bertlab.train import train

sys.path.insert(0, str(Path(__file__).parent))
from _train_script import tiny_config  # noqa: E402

PATHS = [("atl", "fused", "other_to_o"), ("btl", "fused", "other_to_o"), ("btl", "naive", "other_to_o"),
         ("btl", "fused", "binary"), ("btl", "naive", "binary"), ("btl", "fused", "ignore")]


@dataclass(frozen=True)
class LabelSmoothedCE(TokenLoss):
    """The docs/losses.md example: l_i = (1 - ε) (-log p_t) + ε mean_j(-log p_j)."""
    epsilon: float = 0.1

    def per_token(self, logits, targets, columns=None):
        log_p = torch.log_softmax(logits.float(), dim=-1)
        shape = torch.broadcast_shapes(log_p.shape[:-1], targets.shape)
        valid = (targets != self.ignore_index).expand(shape)
        safe = torch.where(valid, targets.expand(shape), 0)
        nll = -log_p.expand(*shape, log_p.shape[-1]).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        smooth = -log_p.mean(-1).expand(shape)
        losses = torch.where(valid, (1 - self.epsilon) * nll + self.epsilon * smooth, 0.0)
        return losses, valid.to(losses.dtype)


def direct_label_smoothed(logits, targets, epsilon):
    """The formula, token by token, in float64: Σ over non-ignored tokens."""
    total = 0.0
    for z, t in zip(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1).tolist()):
        if t == -100:
            continue
        log_p = torch.log_softmax(z, -1)
        total = total + (1 - epsilon) * -log_p[t] + epsilon * -log_p.mean()
    return total


def setup(sampler, impl, mode, tmp_path):
    cfg = load_config(tiny_config(tmp_path, sampler={"name": sampler, "btl_impl": impl, "btl_mode": mode}))
    from bertlab.checkpoint import build_model, builtin_path
    from bertlab.datasets.prepare import encode_corpus, load_splits
    from bertlab.tokenization import Tokenizer
    splits = load_splits(cfg.data)
    torch.manual_seed(0)
    model = build_model("minilm", splits.labels, num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    tok = Tokenizer.from_pretrained(builtin_path("minilm"))
    windows = encode_corpus(tok, splits.train, splits.labels, cfg.data.max_length, cfg.data.stride)
    return cfg, model, tok, windows, splits.labels


@pytest.mark.parametrize("sampler, impl, mode", PATHS)
def test_a_custom_loss_drives_every_path_with_its_own_gradient(sampler, impl, mode, tmp_path):
    cfg, model, tok, windows, labels = setup(sampler, impl, mode, tmp_path)
    custom = LabelSmoothedCE(epsilon=0.2)
    objective = build_objective(cfg, labels, windows, loss=custom)
    rows = list(range(8))
    batch = collate([windows[i] for i in rows], pad_token_id=tok.pad_token_id)
    normaliser = objective.normaliser(rows)
    loss, _ = step_loss(model, batch, objective)
    got = torch.autograd.grad(loss / normaliser, list(model.parameters()))

    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    if sampler == "atl":
        expected = direct_label_smoothed(logits, batch["labels"], 0.2)
    else:  # the copies spelled out: each copy's targets (and columns), summed, then the mean over copies
        copies = [direct_label_smoothed(logits if cols is None else logits[..., cols], c["labels"], 0.2)
                  for _, c, cols in binary_token_label_batches(batch, labels, mode, "present")]
        expected = sum(copies) / len(copies)
    want = torch.autograd.grad(expected / normaliser, list(model.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sampler, impl, mode", PATHS)
def test_scaling_the_public_loss_scales_the_update_on_every_path(sampler, impl, mode, tmp_path, monkeypatch):
    # one SGD step, no clipping, no warmup, no momentum: the update is -lr * gradient
    cfg = tiny_config(tmp_path / "data", sampler={"name": sampler, "btl_impl": impl, "btl_mode": mode},
                      optim={"name": "sgd", "lr": 0.5, "clip_grad_norm": 0.0, "warmup_ratio": 0.0,
                             "schedule": "constant", "grad_accum": 1, "weight_decay": 0.0},
                      train={"max_steps": 1, "epochs": 1, "checkpoint_every": 1})
    cfg["data"]["dev_file"] = cfg["data"]["test_file"] = ""
    deltas = []
    for factor in (1.0, 3.0):
        if factor != 1.0:  # the patch a researcher makes: the public loss, times 3
            monkeypatch.setattr(TokenLoss, "per_token", _scaled(factor))
        out = tmp_path / f"run{factor}"
        train(load_config(cfg), out, resume=False, log=lambda line: None)
        ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
        init = _initial_params(cfg, tmp_path / f"init{factor}")
        deltas.append({k: ckpt[k] - init[k] for k in ckpt})
    moved = [k for k in deltas[0] if deltas[0][k].abs().max() > 1e-6]
    assert len(moved) > 10
    for k in moved:
        torch.testing.assert_close(deltas[1][k], 3.0 * deltas[0][k], rtol=1e-3, atol=1e-6)


def _scaled(factor, original=TokenLoss.per_token):
    def per_token(self, logits, targets, columns=None):
        losses, weights = original(self, logits, targets, columns)
        return losses * factor, weights
    return per_token


def _initial_params(cfg, out):
    """The model as the loop initialises it (same seed), without training: lr 0, one step."""
    cfg = {k: dict(v) for k, v in cfg.items()}
    cfg["optim"] = dict(cfg["optim"], lr=0.0)
    train(load_config(cfg), out, resume=False, log=lambda line: None)
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def test_btl_equals_atl_on_a_one_type_corpus(tmp_path):
    """cross_dataset's sanity check: on NCBI-disease (one entity type) a BTL other_to_o copy is the
    batch itself, so a BTL run gives exactly the numbers of an ATL run with the same loss."""
    base = {"data": {"name": "ncbi_disease", "max_documents": 2, "max_length": 48, "stride": 8},
            "model": {"preset": "minilm", "overrides": {"num_hidden_layers": 1, "hidden_size": 16,
                                                        "num_attention_heads": 2, "intermediate_size": 32}},
            "loss": {"name": "weighted_ce"}, "train": {"epochs": 1, "max_steps": 3, "progress": "off"}}
    out = {}
    for sampler in ("atl", "btl"):
        cfg = {**base, "sampler": {"name": sampler, "btl_mode": "other_to_o"}}
        out[sampler] = train(load_config(cfg), tmp_path / sampler, resume=False, log=lambda line: None)
    for split in ("dev", "test"):
        assert out["atl"][split]["argmax"]["entity_report"] == out["btl"][split]["argmax"]["entity_report"]
    assert [h["dev_loss"] for h in out["atl"]["history"]] == [h["dev_loss"] for h in out["btl"]["history"]]


def test_the_docs_example_loss_trains_every_sampler(tmp_path, monkeypatch):
    """docs/losses.md 'Adding a loss' runs as written (its train call on the example config is
    swapped for a tiny run) and its LabelSmoothedCE equals the one tested above."""
    import re

    import bertlab.train
    text = (Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text(encoding="utf-8")
    block = re.search(r"## Adding a loss.*?```python\n(.*?)```", text, flags=re.S).group(1)
    calls = []
    monkeypatch.setattr(bertlab.train, "train", lambda *a, **k: calls.append((a, k)))
    scope: dict = {}
    exec(compile(block, "docs/losses.md", "exec"), scope)
    (config, out), kwargs = calls[0]
    assert Path(config).name == "train_example.toml" and isinstance(kwargs["loss"], scope["LabelSmoothedCE"])
    logits, targets = torch.randn(2, 5, 7), torch.tensor([[0, 3, -100, 6, 1], [2, 2, 2, -100, 0]])
    ours, reference = scope["LabelSmoothedCE"](epsilon=0.2), LabelSmoothedCE(epsilon=0.2)
    for a, b in zip(ours.per_token(logits, targets), reference.per_token(logits, targets)):
        torch.testing.assert_close(a, b)
    monkeypatch.undo()
    for sampler in ("atl", "btl"):
        cfg = tiny_config(tmp_path / sampler, sampler={"name": sampler}, train={"max_steps": 2, "epochs": 1})
        metrics = train(load_config(cfg), tmp_path / f"run_{sampler}", loss=ours, log=lambda line: None)
        assert metrics["steps"] == 2


# ---- the class-imbalance losses (#40) on every path ------------------------------------------------
# Each [loss] section trains ATL, naive BTL and fused BTL (all three label modes) with the gradients
# of its formula written out directly (float64, exp and sums), with the per-class quantities of each
# copy's own label ids; and zeroing the loss leaves the parameters of a training step unchanged.

IMBALANCE_SECTIONS = {
    "logit_adjusted": {"name": "logit_adjusted", "tau": 0.7},
    "balanced_softmax": {"name": "balanced_softmax"},
    "ldam_drw": {"name": "ldam", "scale": 3.0, "max_margin": 0.8, "drw_epoch": 0},
    "dice": {"name": "dice", "alpha": 0.5, "gamma": 0.3},
    "ce_smoothed": {"name": "ce", "label_smoothing": 0.2},
    "logit_adjusted_smoothed": {"name": "logit_adjusted", "label_smoothing": 0.1},
}


def seen(counts):
    counts = [float(c) for c in counts]
    rare = min(c for c in counts if c > 0)
    return torch.tensor([c if c > 0 else rare for c in counts], dtype=torch.float64)


def direct_formula(section, counts):
    """f(z [C'], t, label ids of the C' columns) -> the token's loss, from the papers' formulas."""
    n = seen(counts)
    eps = section.get("label_smoothing", 0.0)
    name = section["name"]
    if name == "ldam":
        m = n ** -0.25
        margins = section["max_margin"] * m / m.max()
        beta = 0.9999
        seen_classes = torch.as_tensor(counts) > 0
        w = (1 - beta) / (1 - beta ** torch.as_tensor(counts, dtype=torch.float64))
        w = torch.where(seen_classes, w, torch.zeros_like(w))
        w = w / w[seen_classes].mean()  # DRW from epoch 0: effective-number weights, mean 1

    def smoothed(adjusted, t, weight=None):
        """(1 - ε) w_t (-log p_t) + ε/C Σ_j w_j (-log p_j), p = exp / sum (no log_softmax)."""
        p = torch.exp(adjusted - adjusted.max()) / torch.exp(adjusted - adjusted.max()).sum()
        weight = torch.ones_like(p) if weight is None else weight
        return (1 - eps) * weight[t] * -torch.log(p[t]) + eps * (weight * -torch.log(p)).mean()

    def f(z, t, cols):
        if name == "logit_adjusted":
            return smoothed(z + section.get("tau", 1.0) * torch.log(n[cols] / n.sum()), t)
        if name == "balanced_softmax":
            return smoothed(z + torch.log(n[cols]), t)
        if name == "ldam":
            shifted = z.clone()
            shifted[t] = z[t] - margins[cols][t]
            return smoothed(section["scale"] * shifted, t, w[cols])
        if name == "dice":
            p = torch.exp(z) / torch.exp(z).sum()
            q = (1 - p[t]) ** section["alpha"] * p[t]
            return 1 - (2 * q + section["gamma"]) / (q + 1 + section["gamma"])
        return smoothed(z, t)
    return f


def direct_sum(formula, logits, targets, cols):
    total = 0.0
    for z, t in zip(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1).tolist()):
        if t != -100:
            total = total + formula(z, t, cols)
    return total


@pytest.mark.parametrize("loss_name", IMBALANCE_SECTIONS)
@pytest.mark.parametrize("sampler, impl, mode", PATHS)
def test_each_imbalance_loss_drives_every_path_with_its_formulas_gradient(loss_name, sampler, impl, mode, tmp_path):
    section = IMBALANCE_SECTIONS[loss_name]
    cfg = load_config(tiny_config(tmp_path, sampler={"name": sampler, "btl_impl": impl, "btl_mode": mode},
                                  loss=section))
    _, model, tok, windows, labels = setup(sampler, impl, mode, tmp_path)
    objective = build_objective(cfg, labels, windows)
    formula = direct_formula(section, objective.label_counts.tolist())
    rows = list(range(8))
    batch = collate([windows[i] for i in rows], pad_token_id=tok.pad_token_id)
    normaliser = objective.normaliser(rows)
    loss, _ = step_loss(model, batch, objective)
    got = torch.autograd.grad(loss / normaliser, list(model.parameters()))

    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    every = torch.arange(len(labels))
    if sampler == "atl":
        expected = direct_sum(formula, logits, batch["labels"], every)
    else:
        copies = [direct_sum(formula, logits if cols is None else logits[..., cols], c["labels"],
                             every if cols is None else torch.tensor(cols))
                  for _, c, cols in binary_token_label_batches(batch, labels, mode, "present")]
        expected = sum(copies) / len(copies)
    want = torch.autograd.grad(expected / normaliser, list(model.parameters()))
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-7)
    assert max(float(g.abs().max()) for g in got) > 1e-4


@pytest.fixture(scope="module")
def initial_parameters(tmp_path_factory):
    """The parameters the loop starts from (the seed alone decides them): one step at lr 0."""
    root = tmp_path_factory.mktemp("init")
    cfg = one_sgd_step_config(root / "data", {"name": "atl"}, {"name": "ce"})
    cfg["optim"]["lr"] = 0.0
    train(load_config(cfg), root / "run", resume=False, log=lambda line: None)
    return torch.load(root / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def one_sgd_step_config(data_dir, sampler, loss):
    cfg = tiny_config(data_dir, sampler=sampler, loss=loss,
                      optim={"name": "sgd", "lr": 0.5, "clip_grad_norm": 0.0, "warmup_ratio": 0.0,
                             "schedule": "constant", "grad_accum": 1, "weight_decay": 0.0},
                      train={"max_steps": 1, "epochs": 1, "checkpoint_every": 1})
    cfg["data"]["dev_file"] = cfg["data"]["test_file"] = ""
    return cfg


@pytest.mark.parametrize("loss_name", IMBALANCE_SECTIONS)
@pytest.mark.parametrize("sampler, impl", [("atl", "fused"), ("btl", "fused"), ("btl", "naive")])
def test_zeroing_each_imbalance_loss_leaves_the_parameters_unchanged(loss_name, sampler, impl, tmp_path,
                                                                      monkeypatch, initial_parameters):
    from bertlab.losses import build_loss
    section = IMBALANCE_SECTIONS[loss_name]
    loss_class = type(build_loss(load_config({"loss": section}).loss, [5, 3, 2, 1, 1]))
    zeroed = _scaled(0.0, loss_class.per_token)
    monkeypatch.setattr(loss_class, "per_token", zeroed)
    cfg = one_sgd_step_config(tmp_path / "data", {"name": sampler, "btl_impl": impl}, section)
    metrics = train(load_config(cfg), tmp_path / "run", resume=False, log=lambda line: None)
    assert metrics["steps"] == 1 and metrics["config"]["loss"]["name"] == section["name"]
    after = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert after.keys() == initial_parameters.keys()
    for k in after:
        assert torch.equal(after[k], initial_parameters[k]), k
