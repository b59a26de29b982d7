"""Gradient-flow instruments: how much of the loss reaches each layer, and from which class.

A :class:`GradFlowRecorder` is a training callback (see docs/architecture.md, "Training callbacks").
At chosen steps it writes tidy rows ``step, layer, component, statistic, value``:

* per parameter group (:func:`param_group`: embeddings, each encoder layer's attention and FFN, the
  head): the gradient's L2 norm ``‖g‖``, its RMS ``‖g‖/sqrt(n)``, the weight norm ``‖θ‖`` and the
  update-to-weight ratio ``‖θ_after − θ_before‖ / ‖θ_before‖`` across the optimizer step;
* the per-class decomposition of the gradient (:func:`per_class_gradients`): for each class ``k``
  the gradient ``g_k`` of the loss restricted to class-``k`` tokens, with its norm, its cosine to the
  total gradient ``g`` and its share ``<g_k, g> / ‖g‖²`` (the shares of a layer add up to 1);
* loss-landscape signals: the running variance of the batch loss within an epoch and the ratio of
  the first encoder layer's gradient norm to the last one's;
* logit statistics per class (mean / variance of the true-class logit and of ``p_t``, and the mean
  focal factor ``(1 − p_t)^γ``).

Nothing is hooked into the model: the recorder only reads ``p.grad`` and parameters in the callback
methods, so a run without it (or with it disabled) is bit-identical to a run with it, and the
per-class pass uses ``torch.autograd.grad`` (which never touches ``p.grad``).

``bertlab gradflow --config FILE.toml`` trains with the recorder on and draws the figures; the
plot functions read the CSV, so every figure can be redrawn from the data. See docs/gradient-flow.md.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from bertlab.callbacks import Callback
from bertlab.files import write_json, write_jsonl, write_text

# ---------------------------------------------------------------------------------------------
# 1. Grouping parameters by name

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


def layer_sort_key(layer: str) -> tuple:
    """Bottom to top: embeddings, layer.0, layer.1, ..., head, other, all."""
    if layer.startswith("layer."):
        return (1, int(layer.split(".")[1]))
    return ({"embeddings": 0, "head": 2, "other": 3}.get(layer, 4), 0)


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


# ---------------------------------------------------------------------------------------------
# 4. Tidy files

COLUMNS = ("step", "layer", "component", "statistic", "value")
STATE_FILE = "state.json"  # the recorder's running state at the last checkpoint (for resume)


def write_rows(rows: list[dict], out_dir, jsonl: bool = True) -> Path:
    """Write rows to ``out_dir/gradflow.csv`` (and ``out_dir/gradflow.jsonl``), each atomically
    (a crash mid-write leaves the previous file); returns the CSV path. Values are written with
    ``repr``, so :func:`read_rows` gives back the same floats."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gradflow.csv"
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "value": repr(r["value"])})
    write_text(path, buf.getvalue())
    if jsonl:
        write_jsonl(out_dir / "gradflow.jsonl", rows)
    return path


def read_rows(path) -> list[dict]:
    """Read a ``gradflow.csv`` back into rows (step int, value float)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{**r, "step": int(r["step"]), "value": float(r["value"])} for r in csv.DictReader(f)]


def _select(rows, statistic, layer=None, component=None) -> list[dict]:
    return [r for r in rows if r["statistic"] == statistic
            and (layer is None or r["layer"] == layer) and (component is None or r["component"] == component)]


def _mean_by(rows, key) -> dict:
    acc: dict = {}
    for r in rows:
        acc.setdefault(key(r), []).append(r["value"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def layer_means(rows, statistic: str = "grad_norm") -> dict[str, float]:
    """Per layer (component ``all``; not the whole-model ``all`` or the ``logits`` rows), the mean
    of ``statistic`` over the recorded steps."""
    return _mean_by([r for r in _select(rows, statistic, component="all") if r["layer"] not in ("all", "logits")],
                    lambda r: r["layer"])


def class_share_table(rows) -> tuple[list[str], list[str], list[list[float]]]:
    """Mean ``class_grad_share`` per (layer, class) over the steps with a per-class split.

    A class absent from a step's batch counts as 0 there (its contribution is exactly 0), so each
    layer's row still sums to 1. Returns ``(layers bottom to top, classes, values[layer][class])``
    (NaN where a layer/class pair never occurs). Classes are ordered O first, then by decreasing
    token count (summed over the logit statistics) when those are present.
    """
    sel = _select(rows, "class_grad_share")
    n_steps = max(len({r["step"] for r in sel}), 1)
    share: dict = {}
    for r in sel:  # a class absent from a step's batch contributed exactly 0 to it
        key = (r["layer"], r["component"])
        share[key] = share.get(key, 0.0) + r["value"] / n_steps
    layers = sorted({l for l, _ in share if l != "all"}, key=layer_sort_key) + (["all"] if any(l == "all" for l, _ in share) else [])
    tokens: dict = {}
    for r in _select(rows, "tokens", layer="logits"):
        tokens[r["component"]] = tokens.get(r["component"], 0.0) + r["value"]
    classes = sorted({c for _, c in share}, key=lambda c: (c != "O", -tokens.get(c, 0.0), c))
    values = [[share.get((l, c), float("nan")) for c in classes] for l in layers]
    return layers, classes, values


def markdown_summary(rows) -> str:
    """A Markdown rendering of the same data the figures show (for machines without matplotlib)."""
    lines = []
    norms = _mean_by(_select(rows, "grad_norm", component="all"), lambda r: r["layer"])
    ratios = _mean_by(_select(rows, "update_ratio", component="all"), lambda r: r["layer"])
    if norms:
        lines += ["| layer | mean grad norm | mean update/weight |", "|---|---:|---:|"]
        for layer in sorted(norms, key=layer_sort_key):
            lines.append(f"| {layer} | {norms[layer]:.3g} | {ratios.get(layer, float('nan')):.3g} |")
        lines.append("")
    layers, classes, values = class_share_table(rows)
    if classes:
        lines += ["Mean share of the gradient per class (`<g_k, g>/‖g‖²`; a row sums to 1):", "",
                  "| layer | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for layer, vals in zip(layers, values):
            lines.append(f"| {layer} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 5. Figures (each reads the CSV rows; matplotlib is imported lazily)

def _has_matplotlib() -> bool:
    try:
        _pyplot()
        return True
    except ImportError:
        return False


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


LEGEND_POINTS = 8  # the smallest text of a figure (legends, class ticks): readable at page size

# what each statistic is, with its unit, for axis and colour-bar labels
STATISTIC_LABELS = {
    "grad_norm": "gradient norm ‖g‖ (L2 of ∂loss/∂θ)",
    "grad_rms": "gradient RMS ‖g‖/√n (per parameter)",
    "weight_norm": "weight norm ‖θ‖ (L2)",
    "update_ratio": "update / weight ‖Δθ‖/‖θ‖ (ratio)",
    "p_t_mean": "mean p_t, the probability of the true class (0–1)",
    "p_t_var": "variance of p_t over the class's tokens",
    "true_logit_mean": "mean true-class logit (logit units)",
    "true_logit_var": "variance of the true-class logit (logit units²)",
    "focal_factor_mean": "mean focal factor (1 − p_t)^γ (0–1)",
    "focal_factor_var": "variance of the focal factor (1 − p_t)^γ",
}


def statistic_label(statistic: str) -> str:
    """The axis / colour-bar label of a recorded statistic: what it is and its unit."""
    return STATISTIC_LABELS.get(statistic, statistic.replace("_", " "))


def plot_grad_norms(rows, statistic: str = "grad_norm", title: str = ""):
    """Gradient norm per layer over training (log scale), plus the first/last-layer ratio and the
    running batch-loss variance. One line per layer, labelled with the layer names in the data.
    Returns the Figure (axes[0] holds the per-layer lines)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    sel = _select(rows, statistic, component="all")
    layers = sorted({r["layer"] for r in sel if r["layer"] != "all"}, key=layer_sort_key)
    cmap = plt.get_cmap("viridis", max(len(layers), 2))
    for i, layer in enumerate(layers):
        pts = sorted((r["step"], r["value"]) for r in sel if r["layer"] == layer)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=layer, color=cmap(i))
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{statistic_label(statistic)}\nper layer (log scale)")
    ax.set_title(title or f"{statistic} per layer")
    # below the plot, so no line is hidden behind it (no legend when nothing was recorded)
    if layers:
        ax.legend(title="layer", fontsize=LEGEND_POINTS, title_fontsize=LEGEND_POINTS + 1, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2), ncol=min(max(len(layers), 1), 6), frameon=False)
    ax2 = axes[1]
    ratio = sorted((r["step"], r["value"]) for r in _select(rows, "first_last_ratio"))
    if ratio:
        ax2.plot([p[0] for p in ratio], [p[1] for p in ratio], color="C3", label="‖g layer.0‖ / ‖g last layer‖")
    var = sorted((r["step"], r["value"]) for r in _select(rows, "running_loss_var"))
    if var:
        ax3 = ax2.twinx()
        ax3.plot([p[0] for p in var], [p[1] for p in var], color="C0", ls="--", label="running batch-loss variance")
        ax3.set_ylabel("running batch-loss variance (loss²)", color="C0")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("‖g‖ first / last encoder layer (ratio)", color="C3")
    ax2.set_title("loss-landscape signals")
    fig.tight_layout()
    return fig


def plot_class_share(rows, ax=None, title: str = "", vmax: float | None = None):
    """Heatmap: mean share of the gradient per layer (rows, bottom to top) and class (columns).

    Returns the Figure; ``ax.get_yticklabels()`` are the layers and ``get_xticklabels()`` the
    classes as they appear in the data.
    """
    plt = _pyplot()
    layers, classes, values = class_share_table(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(classes) + 2), 0.45 * len(layers) + 2))
    else:
        fig = ax.figure
    if not classes:
        ax.text(0.5, 0.5, "no per-class rows (per_class_every = 0?)", ha="center", va="center")
        return fig
    import numpy as np
    data = np.array(values, dtype=float)
    bound = vmax if vmax is not None else max(float(np.nanmax(np.abs(data))), 1e-12)
    im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=LEGEND_POINTS)
    ax.set_yticks(range(len(layers)), layers, fontsize=LEGEND_POINTS + 1)
    ax.set_xlabel("class (the gradient of the loss on its tokens)")
    ax.set_ylabel("layer (input at the bottom)")
    ax.set_title(title or "share of the gradient  <g_k, g> / ‖g‖²")
    bar = fig.colorbar(im, ax=ax, fraction=0.03)
    bar.set_label("share of the layer's gradient ⟨g_k, g⟩/‖g‖²\n(no unit; a row sums to 1, < 0: against g)")
    return fig


def plot_logit_stats(rows, statistic: str = "p_t_mean"):
    """Heatmap: a per-class logit statistic (default mean p_t) over the recorded steps."""
    plt = _pyplot()
    import numpy as np
    sel = _select(rows, statistic, layer="logits")
    steps = sorted({r["step"] for r in sel})
    tokens: dict = {}
    for r in _select(rows, "tokens", layer="logits"):
        tokens[r["component"]] = tokens.get(r["component"], 0.0) + r["value"]
    classes = sorted({r["component"] for r in sel}, key=lambda c: (c != "O", -tokens.get(c, 0.0), c))
    val = {(r["component"], r["step"]): r["value"] for r in sel}
    data = np.array([[val.get((c, s), np.nan) for s in steps] for c in classes], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(steps) + 3), 0.25 * len(classes) + 2))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1 if "p_t" in statistic else None)
    ax.set_yticks(range(len(classes)), classes, fontsize=LEGEND_POINTS)
    ax.set_xticks(range(len(steps)), steps, rotation=90, fontsize=LEGEND_POINTS)
    ax.set_xlabel("optimizer step (recorded steps)")
    ax.set_ylabel("class (by token count)")
    ax.set_title(f"{statistic} per class (white: no token of the class in the batch)")
    bar = fig.colorbar(im, ax=ax, fraction=0.03)
    bar.set_label(statistic_label(statistic))
    fig.tight_layout()
    return fig


def plot_compare(runs: dict[str, list[dict]]):
    """Side by side: the class-share heatmap of each run (same colour scale), and the mean
    gradient norm per layer of every run on one axis. ``runs``: name -> rows."""
    plt = _pyplot()
    import numpy as np
    n = len(runs)
    fig, axes = plt.subplots(1, n + 1, figsize=(6.5 * n + 5, 6))
    bound = 1e-12
    for rows in runs.values():
        _, _, values = class_share_table(rows)
        if values:
            bound = max(bound, float(np.nanmax(np.abs(np.array(values, dtype=float)))))
    for ax, (name, rows) in zip(axes, runs.items()):
        plot_class_share(rows, ax=ax, title=f"{name}: gradient share per class", vmax=bound)
    ax = axes[-1]
    for name, rows in runs.items():
        norms = _mean_by(_select(rows, "grad_norm", component="all"), lambda r: r["layer"])
        layers = sorted((l for l in norms if l != "all"), key=layer_sort_key)
        ax.plot(range(len(layers)), [norms[l] for l in layers], marker="o", label=name)
        ax.set_xticks(range(len(layers)), layers, rotation=45, fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("layer (input on the left)")
    ax.set_ylabel("mean gradient norm ‖g‖ over recorded steps (log scale)")
    ax.set_title("gradient norm per layer")
    ax.legend(title="run", fontsize=LEGEND_POINTS + 1, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def write_figures(rows, out_dir, name: str = "") -> list[Path]:
    """Draw every figure for one run into ``out_dir`` (PNG), plus ``summary.md``.

    Without matplotlib the Markdown table is still written, with a one-line note.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = markdown_summary(rows)
    try:
        _pyplot()
    except ImportError:
        note = "matplotlib is not installed (pip install 'bertlab[plot]'): figures skipped, tables below."
        print(f"gradflow: {note}", file=sys.stderr)
        (out_dir / "summary.md").write_text(f"{note}\n\n{summary}", encoding="utf-8")
        return [out_dir / "summary.md"]
    (out_dir / "summary.md").write_text(summary, encoding="utf-8")
    plt = _pyplot()
    made = [out_dir / "summary.md"]
    prefix = f"{name} " if name else ""
    figures = {"grad_norm.png": lambda: plot_grad_norms(rows, title=f"{prefix}gradient norm per layer")}
    if _select(rows, "class_grad_share"):
        figures["class_share.png"] = lambda: plot_class_share(rows, title=f"{prefix}share of the gradient per class")
    if _select(rows, "p_t_mean"):
        figures["p_t.png"] = lambda: plot_logit_stats(rows)
    for fname, draw in figures.items():
        fig = draw()
        fig.savefig(out_dir / fname, dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append(out_dir / fname)
    return made
