"""What training minimises: ``step_loss``, the one loss call of the training loop.

    objective = build_objective(cfg, labels, train_windows)        # once, at set-up
    loss_sum, logits = step_loss(model, batch, objective)          # every micro-batch
    (loss_sum / objective.normaliser(step_windows)).backward()

``step_loss`` runs the forward pass and scores the micro-batch on the path the config names:

    "token"       ATL (and resampled ATL): ``loss.per_token`` summed over the labelled tokens
    "btl_fused"   one forward, the K copies scored on its logits (``btl_fused_loss``)
    "btl_naive"   one forward per copy, as the BTL paper does (``btl_naive_loss``)
    "crf"         a CRF head's sequence NLL (``model.crf_loss``), summed over sequences

The loop calls it and nothing else, and the gradient tests call the same function. Every
softmax path scores with the one configured ``TokenLoss`` (the ``[loss]`` section's, or a
subclass of your own: ``[loss] class`` or ``train(loss=...)``).

How the step is normalised is decided here. ``step_loss`` always returns a *sum* (the loss with
reduction "sum"; BTL copies each summed, then combined by ``reduce_copies``), so micro-batches
and processes add up exactly; ``Objective.normaliser`` is the divisor of the whole accumulated
global batch, computed on the host from the labels (no device sync):

=================  ===============================================================
[loss] reduction   normaliser of the optimisation step
=================  ===============================================================
"mean" (default)   labelled tokens (label != -100) in all its micro-batches
"weighted_mean"    Σ of the tokens' weights (``TokenLoss.token_weights``; ATL only)
"sum"              1
=================  ===============================================================

``evaluation_loss`` is the configured loss (its own reduction) on the dev words' logits: the
``dev_loss`` of every epoch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from bertlab.losses.btl import btl_fused_loss, btl_naive_loss
from bertlab.losses.config import LossConfig, build_loss
from bertlab.losses.functional import IGNORE_INDEX, class_weights, label_counts
from bertlab.losses.token import TokenLoss

PATHS = ("token", "btl_fused", "btl_naive", "crf")


@dataclasses.dataclass(frozen=True)
class BTLOptions:
    """The ``[sampler]`` fields of BTL: label mode, which types get a copy, how copies combine."""
    mode: str = "other_to_o"
    classes: str = "present"
    combine: str = "mean"


class Objective:
    """How one micro-batch is scored (``path``, ``loss``), and what a step is divided by.

    ``loss`` is the configured loss with reduction "sum" (what ``step_loss`` uses);
    ``configured`` keeps its own reduction (``evaluation_loss``, and ``normaliser``'s choice).
    ``label_counts``: training tokens per label id (counted here unless given). ``loss_config``: the
    [loss] section, when the loss comes from it (``start_epoch`` rebuilds it under deferred
    re-weighting); None for a loss object passed in.
    """

    def __init__(self, path: str, loss: TokenLoss, labels: Sequence[str], train_windows: list,
                 btl: BTLOptions = BTLOptions(), loss_config: LossConfig | None = None, counts=None):
        if path not in PATHS:
            raise ValueError(f"Objective: path={path!r}, expected one of {PATHS}")
        self.path, self.labels, self.btl, self.loss_config = path, list(labels), btl, loss_config
        self.train_windows = train_windows
        self.label_counts = (label_counts([w.labels for w in train_windows], len(labels)) if counts is None
                             else torch.as_tensor(counts))
        self.reweighted = False  # deferred re-weighting on (``start_epoch``)
        self.drw_weights: list[float] | None = None  # its class weights, rounded for the log
        self.use(loss)

    def use(self, loss: TokenLoss) -> None:
        """Make ``loss`` the objective's loss (summed), with the normaliser of its reduction."""
        self.configured = loss
        self.reduction = loss.reduction
        self.loss = dataclasses.replace(loss, reduction="sum")
        if self.reduction == "sum":
            self.window_weight = None
        elif self.reduction == "mean":
            self.window_weight = np.array([sum(1 for l in w.labels if l != IGNORE_INDEX) for w in self.train_windows],
                                          dtype=np.float64)
        else:  # weighted_mean: Σ of each window's token weights, as the loss itself gives them
            self.window_weight = np.array([sum(weights.tolist()) for weights in self._window_token_weights()])

    def _window_token_weights(self) -> list[np.ndarray]:
        """Each training window's labelled tokens' weights (float64), from ``loss.token_weights``."""
        rows = [np.asarray(w.labels) for w in self.train_windows]
        flat = torch.as_tensor(np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64))
        weights = torch.cat([self.configured.token_weights(chunk, len(self.labels))
                             for chunk in flat.split(65536)]) if len(flat) else torch.zeros(0)
        weights = weights.double().numpy()
        out, start = [], 0
        for row in rows:
            keep = row != IGNORE_INDEX
            out.append(weights[start:start + len(row)][keep])
            start += len(row)
        return out

    def start_epoch(self, epoch: int) -> bool:
        """Deferred re-weighting (``[loss] drw_epoch``): at the start of every epoch the [loss]
        section's loss is the one ``build_loss`` gives for that epoch. True when it changed;
        ``drw_weights`` then holds the class weights now in use (None: none)."""
        cfg = self.loss_config
        if cfg is None or cfg.drw_epoch is None or self.reweighted == (epoch >= cfg.drw_epoch):
            return False
        self.reweighted = epoch >= cfg.drw_epoch
        self.use(build_loss(cfg, self.label_counts, epoch=epoch))
        self.drw_weights = None
        if self.reweighted:
            weights = class_weights(self.label_counts, "effective", cfg.drw_beta, "mean")
            self.drw_weights = [round(float(w), 6) for w in weights]
        return True

    def normaliser(self, windows: list[int]) -> float:
        """The divisor of a step's loss sum, for the training windows (indices) of all its micro-batches."""
        if self.window_weight is None:
            return 1.0
        return max(float(self.window_weight[windows].sum()), 1e-12) if windows else 1.0


def build_objective(cfg, labels: Sequence[str], train_windows: list, loss: TokenLoss | None = None) -> Objective:
    """The objective of a ``TrainConfig``: its path (sampler and head), and the loss object, the
    ``[loss]`` section's (``build_loss`` with the training counts) unless ``loss`` is given."""
    from bertlab.config import has_crf
    s = cfg.sampler
    path = "crf" if has_crf(cfg) else f"btl_{s.btl_impl}" if s.name == "btl" else "token"
    btl = BTLOptions(s.btl_mode, s.btl_classes, s.btl_combine)
    counts = label_counts([w.labels for w in train_windows], len(labels))
    if loss is not None:
        return Objective(path, loss, labels, train_windows, btl, counts=counts)
    return Objective(path, build_loss(cfg.loss, counts, epoch=0), labels, train_windows, btl, cfg.loss, counts)


def step_loss(model: torch.nn.Module, batch: dict, objective: Objective) -> tuple[torch.Tensor, torch.Tensor | None]:
    """**The training loop's one loss call**: ``(loss sum, logits)`` of one micro-batch.

    batch: ``collate``'s dict on the model's device (``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``labels`` ``[B, T]``). The loss sum is a float32 (or float64) scalar:
    the configured loss summed over the batch's labelled tokens (BTL: each copy summed, the copies
    combined), to be divided by ``objective.normaliser``. logits ``[B, T, C]``, None for naive
    BTL (one forward per copy). Runs under the caller's autocast.
    """
    loss, labels, btl = objective.loss, batch["labels"], objective.btl
    if objective.path == "btl_naive":
        return btl_naive_loss(model, batch, objective.labels, loss, btl.mode, btl.classes, btl.combine)[0], None
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    if objective.path == "token":
        # per_token, not the loss's __call__: the same sum without __call__'s label-range check,
        # which would sync with the device every step (labels were checked once, by label_counts)
        return loss.per_token(logits, labels)[0].sum(), logits
    if objective.path == "crf":
        return model.crf_loss(logits, labels, reduction="sum"), logits
    return btl_fused_loss(logits, labels, objective.labels, loss, btl.mode, btl.classes, btl.combine)[0], logits


def evaluation_loss(loss: TokenLoss, logits: list[np.ndarray], tags: list[list[str]], labels: Sequence[str]) -> float:
    """The configured loss of the words' logits (``[n_words, C]`` per sentence, as ``word_logits``
    gives them) against their gold tags, with the loss's own reduction, in float64: the dev loss
    of the learning curves. Every word is scored against its full label (an ATL view: for BTL this
    is not the K-copy loss, for a CRF head it is the token loss of its emission scores, not the
    sequence NLL). NaN without words."""
    rows = [l for l in logits if len(l)]
    if not rows:
        return float("nan")
    index = {label: i for i, label in enumerate(labels)}
    z = torch.from_numpy(np.concatenate(rows, axis=0).astype(np.float64))
    y = torch.tensor([index[t] for s in tags for t in s])
    with torch.no_grad():
        return float(loss(z, y))
