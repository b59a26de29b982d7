"""The token-classification model: an encoder, dropout, and a linear layer per token.

``TokenClassifier(encoder, labels)`` works for any encoder with ``forward(input_ids,
attention_mask, token_type_ids) -> [B, T, H]`` and a ``hidden_size`` and ``dropout_p``
(BertModel, DistilBertModel). Parameter names match Hugging Face's *ForTokenClassification
models once the encoder prefix (``bert.`` / ``distilbert.``) is swapped for ``encoder.``.
"""
from __future__ import annotations

import torch
from torch import nn


class TokenClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, labels: list[str], dropout: float | None = None):
        super().__init__()
        self.encoder = encoder
        self.labels = list(labels)  # id -> label name; index 0 is usually "O"
        self.dropout = nn.Dropout(encoder.dropout_p if dropout is None else dropout)
        self.classifier = nn.Linear(encoder.hidden_size, len(self.labels))
        std = getattr(encoder.config, "initializer_range", 0.02)
        nn.init.normal_(self.classifier.weight, std=std)
        nn.init.zeros_(self.classifier.bias)

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
