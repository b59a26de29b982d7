"""The token-classification model: an encoder, dropout, and a linear layer per token.

``TokenClassifier(encoder, labels)`` works for any encoder with ``forward(input_ids,
attention_mask, token_type_ids) -> [B, T, H]`` and a ``hidden_size`` and ``dropout_p``
(BertModel, DistilBertModel). Parameter names match Hugging Face's *ForTokenClassification
models once the encoder prefix (``bert.`` / ``distilbert.``) is swapped for ``encoder.``.

``head="crf"`` adds a linear-chain CRF (``self.crf``, IOB2-constrained by ``labels``) on top of
the same per-token logits, which become its emission scores. ``forward`` is unchanged either way;
train with ``crf_loss(logits, labels)`` instead of a token loss, and read predictions with
``decode(logits, mask)`` (argmax for softmax, Viterbi for the CRF) in both cases.
"""
from __future__ import annotations

import torch
from torch import nn

from bertlab.models.crf import CRF, pack_masked
from bertlab.models.ops import Dropout, Linear

HEADS = ("softmax", "crf")


class TokenClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, labels: list[str], dropout: float | None = None,
                 head: str = "softmax"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"TokenClassifier: head must be one of {HEADS}, got {head!r}")
        self.head = head
        self.encoder = encoder
        self.labels = list(labels)  # id -> label name; index 0 is usually "O"
        # bertlab.models.ops: nn.Dropout / nn.Linear with the switchable fast CPU kernels
        self.dropout = Dropout(encoder.dropout_p if dropout is None else dropout)
        self.classifier = Linear(encoder.hidden_size, len(self.labels))
        std = getattr(encoder.config, "initializer_range", 0.02)
        nn.init.normal_(self.classifier.weight, std=std)
        nn.init.zeros_(self.classifier.bias)
        if head == "crf":
            self.crf = CRF(len(self.labels), self.labels)

    @property
    def config(self):
        return self.encoder.config

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {l: i for i, l in enumerate(self.labels)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, C]`` for every subword position (padding included; mask them in the loss)."""
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(h))

    def crf_loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "token_mean") -> torch.Tensor:
        """CRF negative log-likelihood of the gold ``labels [B, T]`` (-100 = skip) under ``logits [B, T, C]``.

        Each row's labelled positions (the first subword of each owned word) are packed to the
        front, so the CRF chain runs word to word, skipping [CLS]/[SEP]/continuation subwords.
        ``reduction="token_mean"``: Σ_rows (log Z - s(y)) / #labelled words, the scale of a
        per-token cross-entropy. Computed in float32 at least, also under autocast.
        """
        if self.head != "crf":
            raise ValueError("TokenClassifier.crf_loss needs head='crf' (this model has head='softmax')")
        mask = labels != -100
        emissions, packed_mask = pack_masked(logits, mask)
        tags, _ = pack_masked(labels, mask)
        return self.crf.nll(emissions, tags, packed_mask, reduction=reduction)

    @torch.no_grad()
    def decode(self, logits: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Label ids at the ``mask`` positions of each row, in order: ``len(out[b]) == mask[b].sum()``.

        ``mask [B, T]`` marks the positions to label, normally ``labels != -100`` (first subwords)
        and need not be contiguous. Softmax head: per-position argmax. CRF head: Viterbi over
        the packed positions, so the transitions link consecutive words.
        """
        mask = mask.bool()
        emissions, packed_mask = pack_masked(logits, mask)
        if self.head == "crf":
            return self.crf.decode(emissions, packed_mask)
        best = emissions.argmax(-1).tolist()
        return [row[:n] for row, n in zip(best, packed_mask.sum(1).tolist())]
