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


# ---- step_loss times 0: no parameter moves, on every training path ---------------------------------
# The loop's one loss call (step_loss), one AdamW step. Weight decay is 0 here on purpose: AdamW's
# decoupled decay shrinks the weights with no loss at all (p <- p - lr * lambda * p), so with lambda > 0
# a zero loss would still move them. With lambda = 0 a zero gradient gives Adam's first moment 0 and
# the update lr * 0 / (sqrt(0) + eps) = 0 exactly; clipping and the schedule only rescale it.

STEP_PATHS = {"token": ({"name": "atl"}, {}), "btl_fused": ({"name": "btl", "btl_impl": "fused"}, {}),
              "btl_naive": ({"name": "btl", "btl_impl": "naive"}, {}), "crf": ({"name": "atl"}, {"head": "crf"})}


@pytest.mark.parametrize("path", STEP_PATHS)
@pytest.mark.parametrize("factor", [0.0, 1.0])
def test_the_configured_loss_times_zero_leaves_the_parameters_unchanged(path, factor, tmp_path, monkeypatch):
    from bertlab.datasets.prepare import encode_corpus, load_splits
    from bertlab.models.heads import TokenClassifier
    from bertlab.train.setup import build_model_and_tokenizer, make_optimizer
    sampler, model_section = STEP_PATHS[path]
    cfg = load_config(tiny_config(tmp_path, sampler=sampler, model=model_section,
                                  optim={"name": "adamw", "lr": 1e-2, "weight_decay": 0.0}))
    splits = load_splits(cfg.data)
    torch.manual_seed(0)
    model, tok = build_model_and_tokenizer(cfg.model, splits.labels, splits.train)
    windows = encode_corpus(tok, splits.train, splits.labels, cfg.data.max_length, cfg.data.stride)
    objective = build_objective(cfg, splits.labels, windows)
    assert objective.path == path
    if path == "crf":  # a CRF head trains on its own sequence NLL: that is its configured loss
        real = TokenClassifier.crf_loss
        monkeypatch.setattr(TokenClassifier, "crf_loss", lambda self, *a, **k: factor * real(self, *a, **k))
    else:
        monkeypatch.setattr(type(objective.loss), "per_token", _scaled(factor, type(objective.loss).per_token))
    optimizer = make_optimizer(model, cfg.optim, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = list(range(8))
    batch = collate([windows[i] for i in rows], pad_token_id=tok.pad_token_id)
    loss_sum, _ = step_loss(model, batch, objective)
    (loss_sum / objective.normaliser(rows)).backward()
    optimizer.step()
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    if factor == 0.0:
        assert float(loss_sum.detach()) == 0.0 and moved == []
    else:  # the same step with the loss itself moves them: the test can fail
        assert len(moved) > 10 and (path != "crf" or "crf.transitions" in moved)


# ---- a loss of your own, named in a study: [loss] class ------------------------------------------------

POLY = "experiments.poly_loss:PolyLoss"
REPO = Path(__file__).resolve().parents[1]


def _comparable(metrics: dict) -> dict:
    """metrics.json without its recorded config and wall-clock fields."""
    drop = {"config", "timing", "train_seconds", "time_split", "cpu_share", "tokens_per_second"}

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in drop}
        return [strip(v) for v in o] if isinstance(o, list) else o
    return strip(metrics)


def test_a_study_trains_with_a_loss_class_and_records_it(tmp_path, monkeypatch):
    """experiments/poly_loss.py through a study's [loss] class: Poly-1 at epsilon = 0 is cross
    entropy exactly, so that run equals the CE run number for number; at epsilon = 1 it equals a run
    given the same PolyLoss object from Python (train(loss=...)); metrics.json records the class
    and its field, results.jsonl the label."""
    import json

    from conftest import TINY_STUDY, write_study

    from bertlab.study import run_experiment
    monkeypatch.syspath_prepend(str(REPO))  # the class is imported as experiments.poly_loss
    from experiments.poly_loss import PolyLoss
    text = TINY_STUDY.replace('baseline = { "loss.name" = "ce", decode = "argmax" }', 'baseline = { loss = "ce" }')
    sweep = '"loss.name" = ["ce", "focal"]\n"train.seed" = [0, 1]'
    text = text.replace(sweep, f'''loss = [{{ label = "ce", name = "ce" }},
        {{ label = "poly0", class = "{POLY}", epsilon = 0.0 }},
        {{ label = "poly1", class = "{POLY}", epsilon = 1.0 }}]
"train.seed" = [0]''')
    sdir = run_experiment("tiny", out=tmp_path / "runs", experiments_dir=write_study(tmp_path, text),
                          progress=lambda s: None, report=False)
    metrics = {label: json.loads((sdir / f"loss={label}__seed=0" / "metrics.json").read_text())
               for label in ("ce", "poly0", "poly1")}
    assert metrics["poly1"]["config"]["loss"] == {"class": POLY, "epsilon": 1.0}
    assert metrics["poly0"]["config"]["loss"] == {"class": POLY, "epsilon": 0.0}
    assert _comparable(metrics["poly0"]) == _comparable(metrics["ce"])
    assert metrics["poly1"]["history"][0]["train_loss"] != metrics["ce"]["history"][0]["train_loss"]
    rows = [json.loads(line) for line in (sdir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["axes"]["loss"] for r in rows) == ["ce", "poly0", "poly1"]
    # the same run with the object passed from Python: the same numbers; its record names the class
    cfg = dict(metrics["ce"]["config"])
    python = train(load_config(cfg), tmp_path / "python", loss=PolyLoss(epsilon=1.0), log=lambda line: None)
    assert _comparable(python) == _comparable(metrics["poly1"])
    assert python["config"]["loss"] == {"class": POLY, "name": "ce", "gamma": 0.0, "alpha": None, "reduction": "mean",
                                        "ignore_index": -100, "label_smoothing": 0.0, "epsilon": 1.0}


@pytest.mark.parametrize("table, message", [
    ({"class": "nope.losses:Poly"}, "[loss] class = 'nope.losses:Poly': cannot import nope.losses"),
    ({"class": "experiments.poly_loss:Nope"},
     "[loss] class = 'experiments.poly_loss:Nope': experiments.poly_loss has no Nope"),
    ({"class": POLY, "eps": 1.0}, "[loss] class = 'experiments.poly_loss:PolyLoss': PolyLoss(eps=1.0) failed"),
    ({"class": "experiments.poly_loss"}, "[loss] class = 'experiments.poly_loss': expected 'package.module:ClassName'"),
    ({"class": "bertlab.config:TrainConfig"}, "TrainConfig is not a TokenLoss subclass"),
])
def test_a_bad_loss_class_is_one_line_naming_it(table, message, tmp_path, monkeypatch, capsys):
    import tomllib

    from bertlab.train.cli import main
    monkeypatch.syspath_prepend(str(REPO))
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in table.items()]
    config = tmp_path / "bad.toml"
    config.write_text("[loss]\n" + "\n".join(lines) + "\n")
    assert tomllib.loads(config.read_text())["loss"] == table
    assert main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
