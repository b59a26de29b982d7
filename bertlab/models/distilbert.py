"""DistilBERT encoder, from scratch, read top to bottom.

Parameter names are the Hugging Face ones (``embeddings.word_embeddings``,
``transformer.layer.{i}.attention.q_lin``, ``sa_layer_norm``, ``ffn.lin1`` ...) so that loading a
checkpoint is a prefix strip plus a short explicit table (see ``bertlab/checkpoint.py``).

Architecture (Sanh et al. 2019): BERT with half the layers, no token types and no pooler,
post-LN blocks exactly as in BERT, LayerNorm eps fixed at 1e-12:

    x   = LayerNorm(word[ids] + position[t])                             embeddings
    a   = LayerNorm(x + W_o · Attention(W_q x, W_k x, W_v x))            sa_layer_norm
    out = LayerNorm(a + Dropout(W_2 · GELU(W_1 a)))                      output_layer_norm

With ``sinusoidal_pos_embds`` the position table is the fixed Transformer encoding
``P[t, 2j] = sin(t / 10000^(2j/dim))``, ``P[t, 2j+1] = cos(t / 10000^(2j/dim))`` and is not trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bertlab.models import ops
from bertlab.models.bert import ACTIVATIONS, HFConfig, additive_padding_mask, init_weights
from bertlab.models.ops import Dropout, Linear  # nn.Linear / nn.Dropout with switchable fast CPU kernels

LAYER_NORM_EPS = 1e-12  # hard-coded in DistilBERT, not a config field


@dataclass
class DistilBertConfig(HFConfig):
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int = 0
    model_type: str = "distilbert"

    # fields without which no checkpoint can be read: a config.json must name them
    required = ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim")
    sizes = ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_position_embeddings")
    heads = ("dim", "n_heads")
    dropouts = ("dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout")

    # BERT's names for the same numbers (transformers' attribute_map), so code can read either
    @property
    def hidden_size(self) -> int:
        return self.dim

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


DISTILBERT_PRESETS = {
    "distilbert": dict(n_layers=6, dim=768, n_heads=12, hidden_dim=3072),
}


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """The fixed position table ``[n_pos, dim]`` (float32), computed in float64 like the reference."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    out = torch.empty(n_pos, dim, dtype=torch.float64)
    out[:, 0::2] = torch.sin(angle[:, 0::2])
    out[:, 1::2] = torch.cos(angle[:, 1::2])
    return out.float()


class Embeddings(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings.weight[:T]
        return self.dropout(self.LayerNorm(x))


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        if config.dim % config.n_heads:
            raise ValueError(f"dim {config.dim} is not a multiple of n_heads {config.n_heads}")
        self.n_heads = config.n_heads
        self.q_lin = Linear(config.dim, config.dim)
        self.k_lin = Linear(config.dim, config.dim)
        self.v_lin = Linear(config.dim, config.dim)
        self.out_lin = Linear(config.dim, config.dim)
        self.dropout_p = config.attention_dropout

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        # [B, T, H] -> [B, heads, T, head_dim]
        q, k, v = (proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)
                   for proj in (self.q_lin, self.k_lin, self.v_lin))
        if attn_bias is not None and attn_bias.dtype != q.dtype:
            attn_bias = attn_bias.to(q.dtype)  # under autocast q is bf16
        # SDPA, or with attention dropout on CPU an explicit path with a cheaper mask (ops.attention)
        y = ops.attention(q, k, v, attn_bias, dropout_p=self.dropout_p if self.training else 0.0)
        return self.out_lin(y.transpose(1, 2).reshape(B, T, H))


class FFN(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.lin1 = Linear(config.dim, config.hidden_dim)
        self.lin2 = Linear(config.hidden_dim, config.dim)
        self.dropout = Dropout(config.dropout)
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"activation {config.activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(self.act(self.lin1(x))))


class TransformerBlock(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        # unlike BERT there is no dropout on the attention output, only on the FFN output
        a = self.sa_layer_norm(self.attention(x, attn_bias) + x)
        return self.output_layer_norm(self.ffn(a) + a)


class Transformer(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, attn_bias)
        return x


class DistilBertModel(nn.Module):
    """The encoder: ``forward(input_ids [B,T], attention_mask [B,T], token_type_ids=None) -> [B, T, H]``.

    ``token_type_ids`` is accepted so BERT and DistilBERT are interchangeable, and ignored:
    DistilBERT has no segment embeddings.
    """

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.transformer = Transformer(config)
        self.apply(lambda m: init_weights(m, config.initializer_range))
        if config.sinusoidal_pos_embds:
            with torch.no_grad():
                self.embeddings.position_embeddings.weight.copy_(
                    sinusoidal_table(config.max_position_embeddings, config.dim))
            # fixed, as in the paper (transformers 4.x also freezes it)
            self.embeddings.position_embeddings.weight.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        return self.transformer(x, additive_padding_mask(attention_mask, x.dtype))

    @property
    def hidden_size(self) -> int:
        return self.config.dim

    @property
    def dropout_p(self) -> float:
        # DistilBertForTokenClassification's head dropout is config.dropout
        return self.config.dropout
