"""Gradient-flow instruments: grouping, per-class decomposition, recorder, files and figures.

References: the per-class gradients must add up to the gradient of ``loss.backward()``; the
recorder must not change training by a single bit; statistics are compared with direct formulas
(SGD's update is ``lr·g``, so the update/weight ratio has a closed form).
"""
import os
import math

import pytest
import torch
import torch.nn.functional as F

from bertlab import gradflow
from bertlab.gradflow import cli as gradflow_cli
from bertlab.gradflow.figures import _has_matplotlib
from bertlab.gradflow import (GradFlowRecorder, param_group, per_class_gradients, read_rows,
                              token_classes, write_rows)
from bertlab.models.bert import BertModel
from bertlab.models.heads import TokenClassifier
from conftest import tiny_bert_config

LABELS = ["O", "B-Age", "I-Age", "B-Dis", "I-Dis", "B-Sym", "I-Sym"]


def tiny_model(seed=0, dropout=0.1):
    torch.manual_seed(seed)
    cfg = tiny_bert_config(vocab_size=3000, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return TokenClassifier(BertModel(cfg), LABELS)


def tiny_batch(seed=1, B=4, T=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    # mostly O, a few entities: an imbalanced batch
    labels = torch.where(torch.rand(B, T, generator=g) < 0.7, 0, torch.randint(1, len(LABELS), (B, T), generator=g))
    labels[mask == 0] = -100
    labels[:, 0] = -100  # [CLS]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


# --- losses to decompose (reference formulas written here, independent of bertlab.losses) -------

def ce(logits, y):
    return F.cross_entropy(logits, y, ignore_index=-100)


def weighted_ce(logits, y):
    w = torch.tensor([0.2, 1.0, 1.5, 3.0, 2.0, 5.0, 4.0])
    return F.cross_entropy(logits, y, weight=w, ignore_index=-100)  # normaliser Σ w_y


def focal(logits, y, gamma=2.0):
    keep = y != -100
    logp = F.log_softmax(logits[keep].float(), -1).gather(1, y[keep, None]).squeeze(1)
    return (-(1 - logp.exp()).pow(gamma) * logp).mean()


def btl_fused(logits, y, n_types=3):
    """One copy per entity type present: its B/I tags kept, other entity tags -> O; mean of copies."""
    logp = F.log_softmax(logits.float(), -1)
    keep = y != -100
    losses = []
    for t in range(n_types):
        b, i = 1 + 2 * t, 2 + 2 * t
        if not ((y == b) | (y == i)).any():
            continue
        yc = torch.where((y == b) | (y == i) | ~keep, y, torch.zeros_like(y))
        losses.append(-logp[keep].gather(1, yc[keep, None]).mean())
    return torch.stack(losses).mean()


def library_losses():
    """bertlab.losses' CE / weighted CE / focal, and its fused BTL over them."""
    from bertlab.losses import LossConfig, btl_fused_loss, build_loss
    counts = [50, 3, 2, 6, 4, 1, 1]
    out = {name: build_loss(LossConfig(name=name), label_counts=counts) for name in ("ce", "weighted_ce", "focal")}
    for name in ("ce", "focal"):
        for mode in ("other_to_o", "binary"):
            out[f"btl_fused[{name},{mode}]"] = (
                lambda z, y, fn=out[name], mode=mode: btl_fused_loss(z, y, LABELS, fn, mode=mode)[0])
    return out


LOSSES = {"ce": ce, "weighted_ce": weighted_ce, "focal": focal, "btl_fused": btl_fused}


@pytest.mark.parametrize("name", list(LOSSES))
def test_per_class_gradients_add_up_to_the_total_gradient(name):
    loss_fn = LOSSES[name]
    model = tiny_model()
    model.eval()  # same function in both passes
    batch = tiny_batch()
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    loss = loss_fn(logits.reshape(-1, len(LABELS)), batch["labels"].reshape(-1))
    classes, names = token_classes(batch["labels"], LABELS)
    params = dict(model.named_parameters())
    res = per_class_gradients(params, logits, loss, classes, len(names))
    loss.backward()  # the graph was retained for this: the training step still works
    # rebuild Σ_k g_k per parameter with the batched path, compare with p.grad
    logits2 = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    loss2 = loss_fn(logits2.reshape(-1, len(LABELS)), batch["labels"].reshape(-1))
    dz, = torch.autograd.grad(loss2, logits2, retain_graph=True)
    tensors = list(params.values())
    summed = [torch.zeros_like(t) for t in tensors]
    for k in res["classes"]:
        gk = torch.autograd.grad(logits2, tensors, grad_outputs=(classes == k).unsqueeze(-1) * dz,
                                 retain_graph=True, allow_unused=True)
        summed = [s + (0 if g is None else g) for s, g in zip(summed, gk)]
    total = torch.cat([p.grad.flatten() for p in tensors])
    approx = torch.cat([s.flatten() for s in summed])
    assert torch.linalg.vector_norm(approx - total) <= 1e-6 * torch.linalg.vector_norm(total)
    # and the reported statistics agree: ‖g‖² per layer, shares adding up to 1
    head_sq = sum(float(p.grad.pow(2).sum()) for n, p in params.items() if n.startswith("classifier."))
    assert res["total_sumsq"][("head", "all")] == pytest.approx(head_sq, rel=1e-5)
    for key, tot in res["total_sumsq"].items():
        shares = sum(res["dot"][k].get(key, 0.0) for k in res["classes"]) / tot
        assert shares == pytest.approx(1.0, abs=1e-5), key
    assert len(res["classes"]) >= 3  # O and at least two entity classes: the test is not vacuous


def masked_loss(name, logits, y, sel):
    """The oracle: loss ``name`` with only the tokens in ``sel`` in its numerator and the full
    batch's normaliser, spelled out token by token (no masking code shared with bertlab)."""
    logp = F.log_softmax(logits.float(), -1)
    keep = y != -100
    safe = torch.where(keep, y, torch.zeros_like(y))
    nll = -logp.gather(1, safe[:, None]).squeeze(1)
    counted = (keep & sel).float()
    if name == "ce":
        return (nll * counted).sum() / keep.sum()
    if name == "weighted_ce":
        w = torch.tensor([0.2, 1.0, 1.5, 3.0, 2.0, 5.0, 4.0])[safe]
        return (w * nll * counted).sum() / (w * keep).sum()
    if name == "focal":
        fl = (1 - (-nll).exp()).pow(2.0) * nll
        return (fl * counted).sum() / keep.sum()
    copies = []  # btl_fused: mean over the copies of each copy's masked token mean
    for t in range(3):
        b, i = 1 + 2 * t, 2 + 2 * t
        if not ((y == b) | (y == i)).any():
            continue
        yc = torch.where((y == b) | (y == i) | ~keep, safe, torch.zeros_like(y))
        copies.append((-logp.gather(1, yc[:, None]).squeeze(1) * counted).sum() / keep.sum())
    return torch.stack(copies).mean()


@pytest.mark.parametrize("name", list(LOSSES))
def test_per_class_gradients_equal_autograd_of_each_class_masked_loss(name):
    """Each class's reported ‖g_k‖² and <g_k, g> equal those of the gradient of the loss with only
    that class's tokens counted (the oracle above): a mask assigned to the wrong class fails here,
    where the sum over classes would still add up."""
    model = tiny_model()
    model.eval()
    batch = tiny_batch()
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    z, y = logits.reshape(-1, len(LABELS)), batch["labels"].reshape(-1)
    loss = LOSSES[name](z, y)
    classes, names = token_classes(batch["labels"], LABELS)
    params = dict(model.named_parameters())
    res = per_class_gradients(params, logits, loss, classes, len(names))
    tensors = list(params.values())
    total = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
    total = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(tensors, total)])
    sizes = []
    for k in res["classes"]:
        gk = torch.autograd.grad(masked_loss(name, z, y, classes.reshape(-1) == k), tensors,
                                 retain_graph=True, allow_unused=True)
        gk = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(tensors, gk)])
        assert res["sumsq"][k][("all", "all")] == pytest.approx(float(gk.pow(2).sum()), rel=1e-4), (name, k)
        assert res["dot"][k][("all", "all")] == pytest.approx(float(gk @ total), rel=1e-4, abs=1e-12), (name, k)
        sizes.append(float(gk.pow(2).sum()))
    assert len(set(round(v, 12) for v in sizes)) == len(sizes) >= 3  # distinct per class: a swap shows


def test_library_losses_decompose_too():
    """The real bertlab.losses and the fused BTL loss are per-token: their decomposition adds up."""
    for name, fn in library_losses().items():
        model = tiny_model()
        model.eval()
        batch = tiny_batch()
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = fn(logits.reshape(-1, len(LABELS)), batch["labels"].reshape(-1))
        classes, names = token_classes(batch["labels"], LABELS)
        res = per_class_gradients(dict(model.named_parameters()), logits, loss, classes, len(names))
        loss.backward()
        g_sq = sum(float(p.grad.pow(2).sum()) for p in model.parameters())
        assert res["total_sumsq"][("all", "all")] == pytest.approx(g_sq, rel=1e-5), name
        dots = sum(res["dot"][k][("all", "all")] for k in res["classes"])
        assert dots == pytest.approx(g_sq, rel=1e-5), name  # <Σ_k g_k, g> = ‖g‖²


def test_batched_and_looped_per_class_gradients_agree():
    model = tiny_model()
    model.eval()
    batch = tiny_batch()
    logits = model(batch["input_ids"], batch["attention_mask"])
    loss = ce(logits.reshape(-1, len(LABELS)), batch["labels"].reshape(-1))
    classes, names = token_classes(batch["labels"], LABELS)
    params = dict(model.named_parameters())
    a = per_class_gradients(params, logits, loss, classes, len(names), batched=False)
    b = per_class_gradients(params, logits, loss, classes, len(names), batched=True)
    for k in a["classes"]:
        for key, v in a["sumsq"][k].items():
            assert b["sumsq"][k][key] == pytest.approx(v, rel=1e-5, abs=1e-14)


def test_token_classes_merge_b_and_i_and_ignore_padding():
    labels = torch.tensor([[0, 1, 2, 5, -100], [3, 4, 6, 0, -100]])
    cls, names = token_classes(labels, LABELS)
    assert names == ["O", "Age", "Dis", "Sym"]
    assert cls.tolist() == [[0, 1, 1, 3, -1], [2, 2, 3, 0, -1]]


def test_param_group_bert_and_distilbert_names():
    model = tiny_model()
    groups = {n: param_group(n) for n, _ in model.named_parameters()}
    assert "other" not in {l for l, _ in groups.values()}
    assert groups["encoder.embeddings.word_embeddings.weight"] == ("embeddings", "all")
    assert groups["encoder.encoder.layer.1.attention.self.query.weight"] == ("layer.1", "attention")
    assert groups["encoder.encoder.layer.1.attention.output.LayerNorm.bias"] == ("layer.1", "attention")
    assert groups["encoder.encoder.layer.0.intermediate.dense.weight"] == ("layer.0", "ffn")
    assert groups["encoder.encoder.layer.0.output.dense.bias"] == ("layer.0", "ffn")
    assert groups["classifier.weight"] == ("head", "all")
    # DistilBERT (Hugging Face names, as in bertlab/models/distilbert.py)
    assert param_group("encoder.transformer.layer.5.attention.q_lin.weight") == ("layer.5", "attention")
    assert param_group("encoder.transformer.layer.5.sa_layer_norm.weight") == ("layer.5", "attention")
    assert param_group("encoder.transformer.layer.2.ffn.lin1.weight") == ("layer.2", "ffn")
    assert param_group("encoder.transformer.layer.2.output_layer_norm.bias") == ("layer.2", "ffn")
    assert param_group("encoder.embeddings.position_embeddings.weight") == ("embeddings", "all")
    assert param_group("lstm.weight_ih_l0") == ("other", "all")
    assert param_group("crf.transitions") == ("head", "all")


def test_param_group_covers_the_real_distilbert_module():
    distil = pytest.importorskip("bertlab.models.distilbert")
    cfg = distil.DistilBertConfig(vocab_size=100, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                                  max_position_embeddings=32)
    model = TokenClassifier(distil.DistilBertModel(cfg), LABELS)
    groups = {param_group(n) for n, _ in model.named_parameters()}
    assert groups == {("embeddings", "all"), ("layer.0", "attention"), ("layer.0", "ffn"),
                      ("layer.1", "attention"), ("layer.1", "ffn"), ("head", "all")}


# --- the recorder in a training loop -----------------------------------------------------------

def run_training(callbacks=(), steps=6, optim="adamw", seed=0):
    """A minimal loop calling the callback protocol in the documented order."""
    model = tiny_model(seed)
    model.train()
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-3) if optim == "adamw"
           else torch.optim.SGD(model.parameters(), lr=0.1))
    torch.manual_seed(123)  # dropout masks
    for step in range(1, steps + 1):
        batch = tiny_batch(seed=step)
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = ce(logits.reshape(-1, len(LABELS)), batch["labels"].reshape(-1))
        for cb in callbacks:
            cb.on_batch(step, model, batch, logits, loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for cb in callbacks:
            cb.after_backward(step, model)
        opt.step()
        for cb in callbacks:
            cb.after_optimizer_step(step, model, opt)
    for cb in callbacks:
        cb.on_epoch_end(0, {})
    return model


def test_recorder_does_not_change_training_by_a_bit(tmp_path):
    ref = run_training()
    off = run_training([GradFlowRecorder(tmp_path / "off", enabled=False)])
    on = run_training([GradFlowRecorder(tmp_path / "on", every=2, per_class_every=3)])
    for (n, a), b, c in zip(ref.state_dict().items(), off.state_dict().values(), on.state_dict().values()):
        assert torch.equal(a, b), n
        assert torch.equal(a, c), n
    assert not (tmp_path / "off").exists()  # disabled: not even a file
    rows = read_rows(tmp_path / "on" / "gradflow.csv")
    assert {r["statistic"] for r in rows} >= {"grad_norm", "grad_rms", "update_ratio", "class_grad_share",
                                              "p_t_mean", "first_last_ratio", "epoch_loss_var"}
    assert {r["step"] for r in rows if r["statistic"] == "grad_norm"} == {2, 4, 6}
    assert {r["step"] for r in rows if r["statistic"] == "class_grad_share"} == {3, 6}


def test_grad_norm_and_update_ratio_match_direct_formulas(tmp_path):
    """With SGD (no momentum) θ' = θ − lr·g, so ‖Δθ‖/‖θ‖ = lr·‖g‖/‖θ‖ for every group."""
    rec = GradFlowRecorder(tmp_path, every=1, stats=("grad_norm", "grad_rms", "weight_norm", "update_ratio"))

    class Probe:  # keeps the gradient and weights of step 1 as the reference
        def after_backward(self, step, model):
            if step == 1:
                self.g = {n: p.grad.clone() for n, p in model.named_parameters()}
                self.w = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_batch(self, *a): pass
        def after_optimizer_step(self, *a): pass
        def on_epoch_end(self, *a): pass

    probe = Probe()
    run_training([rec, probe], steps=1, optim="sgd")
    rows = {(r["layer"], r["component"], r["statistic"]): r["value"] for r in rec.rows if r["step"] == 1}
    head = ["classifier.weight", "classifier.bias"]
    g = math.sqrt(sum(float(probe.g[n].pow(2).sum()) for n in head))
    w = math.sqrt(sum(float(probe.w[n].pow(2).sum()) for n in head))
    n_el = sum(probe.g[n].numel() for n in head)
    assert rows[("head", "all", "grad_norm")] == pytest.approx(g, rel=1e-6)
    assert rows[("head", "all", "grad_rms")] == pytest.approx(g / math.sqrt(n_el), rel=1e-6)
    assert rows[("head", "all", "update_ratio")] == pytest.approx(0.1 * g / w, rel=1e-4)
    ffn = [n for n in probe.g if param_group(n) == ("layer.1", "ffn")]
    g_ffn = math.sqrt(sum(float(probe.g[n].pow(2).sum()) for n in ffn))
    assert rows[("layer.1", "ffn", "grad_norm")] == pytest.approx(g_ffn, rel=1e-6)
    g0 = rows[("layer.0", "all", "grad_norm")]
    assert rows[("all", "all", "first_last_ratio")] == pytest.approx(g0 / rows[("layer.1", "all", "grad_norm")])


def test_logit_statistics_per_class(tmp_path):
    rec = GradFlowRecorder(tmp_path, every=1, stats=("logits",), gamma=2.0)
    model = tiny_model()
    model.eval()
    batch = tiny_batch()
    logits = model(batch["input_ids"], batch["attention_mask"])
    rec.on_batch(1, model, batch, logits, torch.tensor(0.0))
    rows = {(r["component"], r["statistic"]): r["value"] for r in rec.rows}
    y = batch["labels"].reshape(-1)
    z = logits.detach().reshape(-1, len(LABELS))[y >= 0]
    y = y[y >= 0]
    dis = (y == 3) | (y == 4)
    p_t = torch.softmax(z, -1).gather(1, y[:, None]).squeeze(1)[dis]
    assert rows[("Dis", "p_t_mean")] == pytest.approx(float(p_t.mean()), rel=1e-6)
    assert rows[("Dis", "focal_factor_mean")] == pytest.approx(float((1 - p_t).pow(2).mean()), rel=1e-6)
    assert rows[("Dis", "tokens")] == int(dis.sum())


def test_running_loss_variance(tmp_path):
    rec = GradFlowRecorder(tmp_path, every=2, stats=("loss",))
    losses = [1.0, 3.0, 2.0, 6.0]
    for step, l in enumerate(losses, start=1):
        rec.on_batch(step, None, {}, None, torch.tensor(l / 2))  # grad_accum = 2: two micro-batches,
        rec.on_batch(step, None, {}, None, torch.tensor(l / 2))  # each divided by the step's normaliser
        rec.after_backward(step, None)
    rec.on_epoch_end(0, {})
    rows = {(r["step"], r["statistic"]): r["value"] for r in rec.rows}
    assert rows[(2, "running_loss_var")] == pytest.approx(1.0)      # var(1, 3)
    assert rows[(4, "epoch_loss_var")] == pytest.approx(torch.tensor(losses).var(unbiased=False).item())


def test_resume_keeps_only_the_rows_before_the_resumed_step(tmp_path):
    """A process killed after the epoch-end CSV write but before the checkpoint leaves rows of steps
    past the checkpoint in gradflow.csv. Resuming from the checkpoint at step 2 re-runs step 3: the
    recorder keeps the rows of steps 1 and 2, drops 3-5 (they are recorded again), and takes back
    the epoch's running losses saved with the checkpoint."""
    rows = [{"step": s, "layer": "all", "component": "loss", "statistic": "batch_loss", "value": float(s)}
            for s in range(1, 6)]
    write_rows(rows, tmp_path)
    (tmp_path / gradflow.STATE_FILE).write_text('{"step": 2, "epoch_losses": [1.0, 3.0], "batch_step": 2}')
    rec = GradFlowRecorder(tmp_path, every=1, stats=("loss",))
    rec.on_batch(3, None, {}, None, torch.tensor(2.0))
    assert [r["step"] for r in rec.rows] == [1, 2]
    rec.after_backward(3, None)
    new = {r["statistic"]: r["value"] for r in rec.rows if r["step"] == 3}
    assert new == {"batch_loss": 2.0, "running_loss_var": pytest.approx(2 / 3)}  # var(1, 3, 2)


# --- files and figures -------------------------------------------------------------------------

def recorded_rows(tmp_path):
    rec = GradFlowRecorder(tmp_path / "run", every=2, per_class_every=2)
    run_training([rec], steps=4)
    return rec.rows, tmp_path / "run" / "gradflow.csv"


def test_csv_and_jsonl_round_trip(tmp_path):
    rows, csv_path = recorded_rows(tmp_path)
    import json
    back = read_rows(csv_path)
    assert back == rows
    jsonl = [json.loads(l) for l in (csv_path.parent / "gradflow.jsonl").read_text().splitlines()]
    assert jsonl == rows
    assert list(back[0]) == list(gradflow.COLUMNS)


def test_figures_are_drawn_from_the_csv(tmp_path):
    pytest.importorskip("matplotlib")
    _, csv_path = recorded_rows(tmp_path)
    rows = read_rows(csv_path)
    # tamper with the data: the figure must show what the CSV says, not what the run held
    rows = [{**r, "layer": "layer.7"} if r["layer"] == "layer.1" else r for r in rows]
    fig = gradflow.plot_class_share(rows)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["embeddings", "layer.0", "layer.7", "head", "all"]
    classes = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert classes[0] == "O" and set(classes) == {r["component"] for r in rows if r["statistic"] == "class_grad_share"}
    fig = gradflow.plot_grad_norms(rows)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["embeddings", "layer.0", "layer.7", "head"]
    made = gradflow.write_figures(rows, tmp_path / "figs")
    for name in ("grad_norm.png", "class_share.png", "p_t.png"):
        png = tmp_path / "figs" / name
        assert png in made and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cmp = gradflow_cli.write_comparison({"atl": rows, "btl": rows}, tmp_path / "figs")
    assert cmp.stat().st_size > 1000


def test_figures_are_readable_at_page_size(tmp_path):
    """Every heatmap has a labelled colour bar (what the colour is, its unit); legends and the
    smallest tick labels are 8 pt or more; the per-layer legend sits below its plot, not on the
    lines; axis labels say their unit."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    rows, _ = recorded_rows(tmp_path)
    figs = {"share": gradflow.plot_class_share(rows), "p_t": gradflow.plot_logit_stats(rows),
            "norms": gradflow.plot_grad_norms(rows), "compare": gradflow.plot_compare({"atl": rows, "btl": rows})}
    for name, fig in figs.items():
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
            assert all(t.get_fontsize() >= 8 for t in ticks), name
            if ax.get_legend():
                assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 8, name
    # colour bars: the extra axes of a heatmap figure, labelled with what the colour means
    share_bar = figs["share"].axes[1]
    assert "share of the layer's gradient" in share_bar.get_ylabel() and "no unit" in share_bar.get_ylabel()
    assert figs["p_t"].axes[1].get_ylabel() == "mean p_t, the probability of the true class (0–1)"
    compare_bars = [ax for ax in figs["compare"].axes if ax.get_label() == "<colorbar>"]
    assert len(compare_bars) == 2 and all("share" in ax.get_ylabel() for ax in compare_bars)
    norms = figs["norms"].axes[0]
    assert norms.get_xlabel() == "optimizer step" and "L2" in norms.get_ylabel()
    legend, panel = norms.get_legend().get_window_extent(), norms.get_window_extent()
    assert legend.y1 <= panel.y0  # below the plot
    assert gradflow.statistic_label("grad_rms") == "gradient RMS ‖g‖/√n (per parameter)"
    for fig in figs.values():
        plt.close(fig)


def test_without_matplotlib_a_markdown_table_is_written(tmp_path, monkeypatch, capsys):
    rows, _ = recorded_rows(tmp_path)

    def no_matplotlib():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(gradflow.figures, "_pyplot", no_matplotlib)
    made = gradflow.write_figures(rows, tmp_path / "md")
    assert made == [tmp_path / "md" / "summary.md"]
    text = made[0].read_text()
    assert text.splitlines()[0].startswith("matplotlib is not installed")
    assert "| layer.1 |" in text and "| head |" in text
    assert "matplotlib" in capsys.readouterr().err
    assert not list((tmp_path / "md").glob("*.png"))


def test_gradflow_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"\[gradflow\] unknown key 'evry'"):
        gradflow.GradFlowConfig.from_dict({"evry": 3}, source="x.toml")
    with pytest.raises(ValueError, match="stats"):
        gradflow.GradFlowConfig.from_dict({"stats": ["grad_nrm"]}, source="x.toml")
    for out in ("../../gf", os.path.abspath("gf"), "..", ""):  # issue #41: these wrote outside the run folder
        with pytest.raises(ValueError, match=r"x.toml: \[gradflow\] out = .*: expected a folder name inside the run"):
            gradflow.GradFlowConfig.from_dict({"out": out}, source="x.toml")
    # a compare entry's folder is named after its values, which may be paths
    assert gradflow_cli._run_name("data.train_file=/data/x.tsv;optim.lr=1e-3") == "-data-x.tsv_1e-3"
    assert gradflow_cli._run_name("sampler.name=btl") == "btl" and gradflow_cli._run_name('model.path=".."') == "run"


def test_train_with_the_recorder_is_bit_identical_to_train_without(tmp_path):
    """Through bertlab.train.train (grad_accum = 2, clipping, AdamW, dropout): the recorder with every
    statistic and the per-class split on changes no weight; its rows come out in the run folder."""
    from _train_script import tiny_config
    from bertlab.train import train
    from safetensors.torch import load_file
    cfg = tiny_config(tmp_path / "data", train={"epochs": 1, "max_steps": 2, "checkpoint_every": 0})
    train(cfg, tmp_path / "ref", resume=False, log=lambda line: None)
    rec = GradFlowRecorder(tmp_path / "on" / "gradflow", every=1, per_class_every=1)
    train(cfg, tmp_path / "on", callbacks=[rec], resume=False, log=lambda line: None)
    a = load_file(tmp_path / "ref" / "best" / "model.safetensors")
    b = load_file(tmp_path / "on" / "best" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = read_rows(tmp_path / "on" / "gradflow" / "gradflow.csv")
    assert {r["step"] for r in rows if r["statistic"] == "class_grad_share"} == {1, 2}
    # one row per layer, class and step, even with two micro-batches per step
    share = [r for r in rows if r["statistic"] == "class_grad_share" and r["layer"] == "all" and r["step"] == 1]
    assert len(share) == len({r["component"] for r in share})
    assert sum(r["value"] for r in share) == pytest.approx(1.0, abs=1e-4)


def test_cli_trains_and_draws_from_a_config_with_a_gradflow_section(tmp_path):
    """``bertlab gradflow --config`` on a tiny TOML: train() with the recorder, CSV + figures."""
    from _train_script import tiny_config
    cfg = tiny_config(tmp_path / "data", train={"epochs": 1, "max_steps": 2, "checkpoint_every": 0})
    toml = [f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
            for section, values in cfg.items()]
    toml.append('[gradflow]\nevery = 1\nper_class_every = 2\ncompare = ["sampler.name=btl"]\n')
    path = tmp_path / "gf.toml"
    path.write_text("\n".join(toml), encoding="utf-8")
    assert gradflow_cli.main(["--config", str(path), "--out", str(tmp_path / "run"),
                          "--figures", str(tmp_path / "figs")]) == 0
    rows = read_rows(tmp_path / "figs" / "btl" / "gradflow.csv")
    assert rows == read_rows(tmp_path / "run" / "btl" / "gradflow" / "gradflow.csv")
    assert {r["step"] for r in rows if r["statistic"] == "class_grad_share"} == {2}
    assert (tmp_path / "figs" / "btl" / "summary.md").read_text().startswith("| layer |")
    if _has_matplotlib():
        assert (tmp_path / "figs" / "btl" / "class_share.png").stat().st_size > 1000


def _toml(v):
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def test_cli_missing_config_is_one_line(tmp_path, capsys):
    assert gradflow_cli.main(["--config", str(tmp_path / "nosuch.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuch.toml" in err[0]
