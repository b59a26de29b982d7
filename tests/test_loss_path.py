"""One loss path: the loss object a researcher edits is the loss every sampler trains with.

References: a custom loss (label-smoothed CE, written as a TokenLoss subclass) drives ATL, naive
BTL and fused BTL with the gradients of a direct autograd computation of its formula on the same
batch; and scaling the public loss scales the parameter update of one training step on each path.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bertlab.losses import TokenLoss
from bertlab.sampling import binary_token_label_batches, collate
from bertlab.train import Objective, load_config, train

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
    objective = Objective(cfg, labels, windows, loss=custom)
    rows = list(range(8))
    batch = collate([windows[i] for i in rows], pad_token_id=tok.pad_token_id)
    normaliser = objective.normaliser(rows)
    loss, _ = objective.loss_sum(model, batch)
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


def _scaled(factor):
    original = TokenLoss.per_token

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
