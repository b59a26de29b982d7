"""Losses: every loss training can use, and the one call the training loop makes.

    bertlab.losses.functional   each loss as its equation: cross_entropy, focal_loss,
                                logit_adjusted_loss, balanced_softmax_loss, ldam_loss, dice_loss
                                (and their per-token kernels), label counts and class weights
    bertlab.losses.token        the loss objects training scores with: TokenLoss and its
                                subclasses (per_token, reduce, token_weights)
    bertlab.losses.config       the [loss] section (LossConfig) -> build_loss -> a TokenLoss,
                                built-in by name or your own by [loss] class
    bertlab.losses.btl          binary token labels: the K copies of a batch, their losses
                                (naive and fused) and reduce_copies
    bertlab.losses.objective    step_loss: the training loop's one loss call; the normaliser of a
                                step; the dev (evaluation) loss

This package exports the public names of the first four, which is what a user imports
(``from bertlab.losses import focal_loss, TokenLoss, build_loss``); the objective is imported
from ``bertlab.losses.objective``, by the training loop and its tests. docs/losses.md and
docs/btl.md explain them.
"""
from bertlab.losses.btl import (BTL_MODES, binary_token_label_batches, btl_columns, btl_fused_loss, btl_naive_loss,
                                btl_targets, entity_types, reduce_copies)
from bertlab.losses.config import CE_BASED, LOSS_NAMES, LossConfig, build_loss, custom_loss
from bertlab.losses.functional import (IGNORE_INDEX, REDUCTIONS, WEIGHT_SCHEMES, balanced_softmax_loss,
                                       class_priors, class_weights, cross_entropy, dice_loss, dice_token_losses,
                                       focal_loss, label_counts, ldam_loss, ldam_margins, ldam_token_losses,
                                       logit_adjusted_loss, offset_token_losses, reduce_token_losses, seen_counts,
                                       token_losses)
from bertlab.losses.token import DiceLoss, LDAMLoss, LogitOffsetLoss, TokenLoss

__all__ = ["BTL_MODES", "CE_BASED", "IGNORE_INDEX", "LOSS_NAMES", "REDUCTIONS", "WEIGHT_SCHEMES", "DiceLoss",
           "LDAMLoss", "LogitOffsetLoss", "LossConfig", "TokenLoss", "balanced_softmax_loss",
           "binary_token_label_batches", "btl_columns", "btl_fused_loss", "btl_naive_loss", "btl_targets",
           "build_loss", "class_priors", "class_weights", "cross_entropy", "custom_loss", "dice_loss",
           "dice_token_losses", "entity_types", "focal_loss", "label_counts", "ldam_loss", "ldam_margins",
           "ldam_token_losses", "logit_adjusted_loss", "offset_token_losses", "reduce_copies",
           "reduce_token_losses", "seen_counts", "token_losses"]
