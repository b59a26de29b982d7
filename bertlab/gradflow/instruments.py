"""The gradient-flow instruments: parameter groups, the per-class decomposition of the gradient, and
the recorder (a training callback) that writes them as tidy rows (see ``bertlab.gradflow``)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from bertlab.callbacks import Callback
from bertlab.files import write_json
from bertlab.gradflow.tables import STATE_FILE, layer_sort_key, read_rows, write_rows


# (pattern on the parameter name, component); the layer index is the first group of the match.
# BERT:       encoder.encoder.layer.{i}.attention.* | .intermediate.* | .output.*
# DistilBERT: encoder.transformer.layer.{i}.attention.* | .sa_layer_norm.* | .ffn.* | .output_layer_norm.*
_LAYER_PATTERNS = [
    (re.compile(r"(?:^|\.)(?:encoder|transformer)\.layer\.(\d+)\.(?:attention|sa_layer_norm)\."), "attention"),
    (re.compile(r"(?:^|\.)(?:encoder|transformer)\.layer\.(\d+)\.(?:intermediate|output|ffn|output_layer_norm)\."),
     "ffn"),
]
_HEAD_PREFIXES = ("classifier.", "crf.")


def param_group(name: str) -> tuple[str, str]:
    """``(layer, component)`` for a parameter name.

    ``layer`` is ``"embeddings"``, ``"layer.{i}"``, ``"head"`` or ``"other"``; ``component`` is
    ``"attention"`` / ``"ffn"`` inside an encoder layer (the attention block's LayerNorm counts as
    attention, the FFN's as FFN) and ``"all"`` elsewhere. Works for the BERT and DistilBERT names of
    ``bertlab.models``; anything unrecognised (a BiLSTM, a new module) falls back to ``"other"``.

    >>> param_group("encoder.encoder.layer.3.intermediate.dense.weight")
    ('layer.3', 'ffn')
    >>> param_group("encoder.transformer.layer.0.sa_layer_norm.bias")
    ('layer.0', 'attention')
    """
    for pattern, component in _LAYER_PATTERNS:
        m = pattern.search(name)
        if m:
            return f"layer.{m.group(1)}", component
    if ".embeddings." in f".{name}":
        return "embeddings", "all"
    if name.startswith(_HEAD_PREFIXES):
        return "head", "all"
    return "other", "all"


def encoder_layers(layers) -> list[str]:
    """The ``layer.{i}`` names among ``layers``, bottom to top."""
    return sorted({l for l in layers if l.startswith("layer.")}, key=layer_sort_key)


def _group_sums(named: dict[str, torch.Tensor], fn) -> dict[tuple[str, str], float]:
    """Sum ``fn(name, tensor)`` (a 0-d tensor) per (layer, component), per (layer, "all") and overall.

    Summed in float64 on the tensors' device, one ``.tolist()`` at the end (one device sync).
    """
    keys, vals = [], []
    for name, t in named.items():
        keys.append(param_group(name))
        vals.append(fn(name, t).double())
    if not vals:
        return {}
    vals = torch.stack(vals).tolist()
    out: dict[tuple[str, str], float] = {}
    for (layer, comp), v in zip(keys, vals):
        for key in {(layer, comp), (layer, "all"), ("all", "all")}:
            out[key] = out.get(key, 0.0) + v
    return out


# ---------------------------------------------------------------------------------------------
# 2. Per-class decomposition of the gradient

def token_classes(labels: torch.Tensor, label_names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Map label ids ``[...]`` to class ids: ``"O"`` is class 0, then the entity types, sorted.

    ``B-X`` and ``I-X`` are one class ``X``; ignored positions (-100) get -1.
    Returns ``(class_ids [...], class_names)``.
    """
    types = sorted({l[2:] for l in label_names if l != "O"})
    names = ["O"] + types
    index = {t: i for i, t in enumerate(names)}
    table = torch.tensor([index["O" if l == "O" else l[2:]] for l in label_names] + [-1], device=labels.device)
    # -100 (and any negative id) -> the last entry, -1
    ids = torch.where(labels < 0, torch.full_like(labels, len(label_names)), labels)
    return table[ids], names


def per_class_gradients(params: dict[str, torch.Tensor], logits: torch.Tensor, loss: torch.Tensor,
                        classes: torch.Tensor, n_classes: int, batched: bool = False) -> dict:
    """Split the gradient of ``loss`` into the contributions of each class's tokens.

    Definition. A token loss is a normalised sum of per-token terms, ``L = Σ_t ℓ_t(z_t) / Z`` with
    ``Z`` independent of the logits (CE: ``Z`` = number of tokens; weighted CE: ``Z = Σ_t w_{y_t}``;
    focal: its own normaliser). Class ``k``'s loss is ``L_k = Σ_{t: class(t)=k} ℓ_t / Z`` with the
    SAME ``Z``, so ``Σ_k L_k = L`` and ``Σ_k g_k = g`` exactly. Because ``ℓ_t`` only depends on the
    logits ``z_t`` of its own position, ``∂L_k/∂z = 1[class(t)=k] · ∂L/∂z``: the decomposition is
    computed from the real training loss without re-implementing it, by back-propagating the masked
    logit gradient, ``g_k = J^T (M_k ⊙ ∂L/∂z)``.

    BTL (fused, one copy of the batch per entity class, copy ``c`` keeps class ``c``'s tags and maps
    the other entity tags to O): ``L = combine_c L^(c)`` and every copy reads the same logits, so
    ``∂L/∂z_t`` sums the copies' terms at position ``t``. With ``classes`` = the token's TRUE class,
    ``g_k`` is "everything class-``k`` tokens contribute, in all copies" (their own copy, where they
    keep their tag, and the other copies, where they are pushed towards O). For a CRF head the
    terms are not per-token (the partition function couples positions); the split still adds up to
    ``g`` but then attributes the gradient by the position of the emission score.

    Args:
        params: name -> parameter, the tensors to differentiate (requires_grad).
        logits: ``[B, T, C]`` (or ``[N, C]``) with the graph from the forward pass still alive.
        loss: the scalar computed from ``logits``; its graph is retained for the caller's backward.
        classes: class id per logit row (``[B, T]``), -1 for ignored positions.
        n_classes: number of classes.
        batched: one ``autograd.grad`` with ``is_grads_batched=True`` over a one-hot stack
            (memory: one gradient copy per class present) instead of one backward per class.

    Returns ``{"classes": [k present], "sumsq": {k: {(layer, comp): ‖g_k‖²}},
    "dot": {k: {(layer, comp): <g_k, g>}}, "total_sumsq": {(layer, comp): ‖g‖²}}``, grouped with
    :func:`param_group` (layer and overall totals included). Absent classes contribute exactly 0.
    """
    names = [n for n, p in params.items() if p.requires_grad]
    tensors = [params[n] for n in names]
    dz, = torch.autograd.grad(loss, logits, retain_graph=True)
    present = [k for k in torch.unique(classes).tolist() if 0 <= k < n_classes]
    masks = [(classes == k).unsqueeze(-1).to(dz.dtype) for k in present]

    def grads_for(grad_output):
        gs = torch.autograd.grad(logits, tensors, grad_outputs=grad_output, retain_graph=True,
                                 allow_unused=True)
        return {n: (torch.zeros_like(t) if g is None else g) for n, t, g in zip(names, tensors, gs)}

    total = grads_for(dz)
    out = {"classes": present, "sumsq": {}, "dot": {},
           "total_sumsq": _group_sums(total, lambda n, g: g.float().pow(2).sum())}
    if batched and present:
        stacked = torch.stack([m * dz for m in masks])
        gs = torch.autograd.grad(logits, tensors, grad_outputs=stacked, retain_graph=True,
                                 allow_unused=True, is_grads_batched=True)
        per_class = [{n: (torch.zeros_like(t) if g is None else g[i]) for n, t, g in zip(names, tensors, gs)}
                     for i in range(len(present))]
    else:
        per_class = (grads_for(m * dz) for m in masks)
    for k, gk in zip(present, per_class):
        out["sumsq"][k] = _group_sums(gk, lambda n, g: g.float().pow(2).sum())
        out["dot"][k] = _group_sums(gk, lambda n, g: (g.float() * total[n].float()).sum())
    return out


# ---------------------------------------------------------------------------------------------
# 3. The recorder (a training callback)

ALL_STATS = ("grad_norm", "grad_rms", "weight_norm", "update_ratio", "loss", "logits", "per_class")


@dataclass
class GradFlowConfig:
    """The ``[gradflow]`` section of a train / experiment config.

    every: record gradient statistics every N optimisation steps (0 = never).
    per_class_every: per-class decomposition every N steps (0 = never; it costs one backward per
        class present in the batch, plus one).
    stats: which statistics to record (a subset of ``ALL_STATS``).
    out: subfolder of the run folder for the data and figures.
    gamma: the γ of the focal factor ``(1 − p_t)^γ`` reported with the logit statistics.
    batched: per-class gradients with one batched ``autograd.grad`` (see per_class_gradients).
    compare: ``bertlab gradflow`` only: one run per entry, each entry ``--set`` overrides separated
        by ";" (e.g. ``["sampler.name=atl", "sampler.name=btl"]``), plus a side-by-side figure.
    """
    enabled: bool = True
    every: int = 10
    per_class_every: int = 0
    stats: list = field(default_factory=lambda: list(ALL_STATS))
    out: str = "gradflow"
    gamma: float = 2.0
    batched: bool = False
    compare: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "GradFlowConfig":
        known = {f.name: f for f in fields(cls)}
        for key, value in d.items():
            if key not in known:
                raise ValueError(f"{source}: [gradflow] unknown key {key!r}; expected one of {sorted(known)}")
        cfg = cls(**d)
        bad = [s for s in cfg.stats if s not in ALL_STATS]
        if bad:
            raise ValueError(f"{source}: [gradflow] stats {bad} unknown; expected a subset of {list(ALL_STATS)}")
        if cfg.every < 0 or cfg.per_class_every < 0:
            raise ValueError(f"{source}: [gradflow] every / per_class_every must be >= 0")
        from bertlab.config import is_folder_name
        if not is_folder_name(cfg.out):
            raise ValueError(f"{source}: [gradflow] out = {cfg.out!r}: expected a folder name inside the run "
                             f"folder (no '/', '\\' or '..'), e.g. \"gradflow\"")
        return cfg


class GradFlowRecorder(Callback):
    """Training callback that records the gradient flow; rows go to ``out_dir/gradflow.csv|jsonl``.

    ``GradFlowRecorder(out_dir, every=10, per_class_every=50)``, passed in ``train(...,
    callbacks=[recorder])``. Call :meth:`close` (or let ``on_train_end`` do it) to write the files;
    they are also rewritten at the end of every epoch and whenever the loop writes its checkpoint.

    Resume: a recorder whose first step is s > 1 (a resumed run) first reads back the rows of
    steps < s from ``out_dir/gradflow.csv`` and the running epoch losses saved with the checkpoint
    at step s - 1 (``out_dir/state.json``), so the files of an interrupted and resumed run equal
    those of an uninterrupted one.
    """

    def __init__(self, out_dir, every: int = 10, per_class_every: int = 0, stats=ALL_STATS,
                 gamma: float = 2.0, batched: bool = False, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.every = every if enabled else 0
        self.per_class_every = per_class_every if enabled and "per_class" in stats else 0
        self.stats = set(stats) if enabled else set()
        self.gamma = gamma
        self.batched = batched
        self.rows: list[dict] = []
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._epoch_losses: list[float] = []  # this epoch's step losses
        self._batch_step = None
        self._started = False  # whether the first step (and a resume's read-back) has happened

    @classmethod
    def from_config(cls, cfg: GradFlowConfig, run_dir) -> "GradFlowRecorder":
        return cls(Path(run_dir) / cfg.out, every=cfg.every, per_class_every=cfg.per_class_every,
                   stats=cfg.stats, gamma=cfg.gamma, batched=cfg.batched, enabled=cfg.enabled)

    def _due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def _add(self, step, layer, component, statistic, value) -> None:
        self.rows.append({"step": int(step), "layer": layer, "component": component,
                          "statistic": statistic, "value": float(value)})

    # -- callback protocol ------------------------------------------------------------------------
    def _start(self, step: int) -> None:
        """At the first step this recorder sees: if it is a resumed run's (step > 1), take back the
        rows of the steps before it and the epoch's running losses saved with its checkpoint."""
        self._started = True
        csv_path, state_path = self.out_dir / "gradflow.csv", self.out_dir / STATE_FILE
        if step <= 1 or not csv_path.exists():
            return
        self.rows = [r for r in read_rows(csv_path) if r["step"] < step] + self.rows
        if state_path.exists():
            state = json.loads(state_path.read_text(encoding="utf-8"))
            if state.get("step") == step - 1:
                self._epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
                self._batch_step = state.get("batch_step")

    def on_batch(self, step, model, batch, logits, loss) -> None:
        if not self.enabled:
            return
        if not self._started:
            self._start(step)
        first = step != self._batch_step  # grad_accum > 1: several micro-batches share a step
        self._batch_step = step
        if "loss" in self.stats:
            # the micro-batch losses are already divided by the whole step's normaliser: they add up
            value = float(loss.detach())
            if first:
                self._epoch_losses.append(value)
            else:
                self._epoch_losses[-1] += value
        if not first:
            return  # logit statistics and the per-class split use the step's first micro-batch
        labels = batch.get("labels") if isinstance(batch, dict) else None
        if labels is None or logits is None or not hasattr(model, "labels"):
            return  # naive BTL has no single logits tensor (one forward per copy)
        if "logits" in self.stats and self._due(step):
            self._logit_stats(step, logits.detach(), labels, model.labels)
        if (self.per_class_every and step % self.per_class_every == 0
                and logits.requires_grad and loss.requires_grad):
            self._per_class(step, model, logits, loss, labels)

    def after_backward(self, step, model) -> None:
        if not self._due(step):
            return
        if "loss" in self.stats and self._epoch_losses:
            self._add(step, "all", "loss", "batch_loss", self._epoch_losses[-1])
            self._add(step, "all", "loss", "running_loss_var", _variance(self._epoch_losses))
        if not self.stats & {"grad_norm", "grad_rms", "weight_norm", "update_ratio"}:
            return
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        weights = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        numel = _group_sums(grads, lambda n, g: torch.tensor(float(g.numel())))
        gsq = _group_sums(grads, lambda n, g: g.float().pow(2).sum())
        for (layer, comp), s in sorted(gsq.items(), key=lambda kv: (layer_sort_key(kv[0][0]), kv[0][1])):
            if "grad_norm" in self.stats:
                self._add(step, layer, comp, "grad_norm", math.sqrt(s))
            if "grad_rms" in self.stats:
                self._add(step, layer, comp, "grad_rms", math.sqrt(s / max(numel[(layer, comp)], 1.0)))
        if "weight_norm" in self.stats:
            for (layer, comp), s in _group_sums(weights, lambda n, w: w.float().pow(2).sum()).items():
                self._add(step, layer, comp, "weight_norm", math.sqrt(s))
        layers = encoder_layers(l for l, _ in gsq)
        if "grad_norm" in self.stats and len(layers) >= 2:
            last = gsq[(layers[-1], "all")]
            ratio = math.sqrt(gsq[(layers[0], "all")] / last) if last > 0 else float("nan")
            self._add(step, "all", "all", "first_last_ratio", ratio)
        if "update_ratio" in self.stats:
            # the one copy of the weights we keep, only at recorded steps
            self._snapshot = {n: w.clone() for n, w in weights.items()}

    def after_optimizer_step(self, step, model, optimizer) -> None:
        if self._snapshot is None:
            return
        before = self._snapshot
        self._snapshot = None
        now = {n: p.detach() for n, p in model.named_parameters() if n in before}
        delta = _group_sums(now, lambda n, w: (w.float() - before[n].float()).pow(2).sum())
        norm = _group_sums(before, lambda n, w: w.float().pow(2).sum())
        for key in sorted(delta, key=lambda k: (layer_sort_key(k[0]), k[1])):
            ratio = math.sqrt(delta[key] / norm[key]) if norm[key] > 0 else float("nan")
            self._add(step, key[0], key[1], "update_ratio", ratio)

    def on_epoch_end(self, epoch, metrics) -> None:
        if not self.enabled:
            return
        if self._epoch_losses:
            self._add(self._batch_step, "all", "loss", "epoch", epoch)
            self._add(self._batch_step, "all", "loss", "epoch_loss_mean", sum(self._epoch_losses) / len(self._epoch_losses))
            self._add(self._batch_step, "all", "loss", "epoch_loss_var", _variance(self._epoch_losses))
        self._epoch_losses = []
        self.write()

    def on_checkpoint(self, step) -> None:
        """The loop saved its state after ``step``: save ours with it (rows and the epoch's running
        losses), so a resume from that checkpoint loses nothing."""
        if not self.enabled:
            return
        self.write()
        write_json(self.out_dir / STATE_FILE, {"step": int(step), "epoch_losses": self._epoch_losses,
                                               "batch_step": self._batch_step})

    def on_train_end(self, *args, **kwargs) -> None:
        self.close()

    def close(self) -> None:
        if self.enabled:
            self.write()

    # -- the two heavier statistics ---------------------------------------------------------------
    def _logit_stats(self, step, logits, labels, label_names) -> None:
        """Mean / variance of the true-class logit, of p_t and of (1 − p_t)^γ, per class."""
        C = logits.shape[-1]
        z = logits.reshape(-1, C).float()
        y = labels.reshape(-1)
        keep = y >= 0
        z, y = z[keep], y[keep]
        if y.numel() == 0:
            return
        true_logit = z.gather(1, y[:, None]).squeeze(1)
        p_t = torch.softmax(z, dim=-1).gather(1, y[:, None]).squeeze(1)
        cls, names = token_classes(y, label_names)
        for k in torch.unique(cls).tolist():
            m = cls == k
            n = int(m.sum())
            for stat, v in (("true_logit", true_logit[m]), ("p_t", p_t[m]),
                            ("focal_factor", (1 - p_t[m]).pow(self.gamma))):
                self._add(step, "logits", names[k], f"{stat}_mean", v.mean())
                self._add(step, "logits", names[k], f"{stat}_var", v.var(unbiased=False))
            self._add(step, "logits", names[k], "tokens", n)

    def _per_class(self, step, model, logits, loss, labels) -> None:
        classes, names = token_classes(labels, model.labels)
        params = dict(model.named_parameters())
        res = per_class_gradients(params, logits, loss, classes, len(names), batched=self.batched)
        total = res["total_sumsq"]
        for k in res["classes"]:
            for key in sorted(total, key=lambda k_: layer_sort_key(k_[0])):
                layer, comp = key
                if comp != "all":
                    continue  # per class: per layer (attention + FFN together)
                sq, dot, tot = res["sumsq"][k].get(key, 0.0), res["dot"][k].get(key, 0.0), total[key]
                self._add(step, layer, names[k], "class_grad_norm", math.sqrt(sq))
                self._add(step, layer, names[k], "class_grad_cos",
                          dot / math.sqrt(sq * tot) if sq > 0 and tot > 0 else 0.0)
                self._add(step, layer, names[k], "class_grad_share", dot / tot if tot > 0 else 0.0)

    # -- files ------------------------------------------------------------------------------------
    def write(self) -> Path:
        """Write ``gradflow.csv`` and ``gradflow.jsonl`` (all rows so far) into ``out_dir``."""
        return write_rows(self.rows, self.out_dir)


def _variance(xs: list[float]) -> float:
    """Population variance (0 for fewer than 2 values)."""
    if len(xs) < 2:
        return 0.0
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / len(xs)
