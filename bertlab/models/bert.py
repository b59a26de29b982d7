"""BERT encoder, from scratch, read top to bottom.

Parameter names are the Hugging Face ones (``embeddings.word_embeddings``,
``encoder.layer.{i}.attention.self.query``, ``...output.LayerNorm`` ...) so that loading a
checkpoint is a prefix strip plus a short explicit table (see ``bertlab/checkpoint.py``).

Architecture (post-LN, as in Devlin et al. 2019):

    x   = LayerNorm(word[ids] + position[t] + token_type[tt])           embeddings
    a   = LayerNorm(x + Dropout(W_o · Attention(W_q x, W_k x, W_v x)))   per layer
    out = LayerNorm(a + Dropout(W_2 · GELU(W_1 a)))

TinyBERT (4L/312/12 heads/1200), MiniLM (6L/384), BERT-base, BioBERT and ClinicalBERT
(12L/768, cased 28996 or uncased 30522 vocabulary) are all configs of this one module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from bertlab.models import ops
from bertlab.models.ops import Dropout, Linear


class HFConfig:
    """What BERT's and DistilBERT's configs share: read from and written to a Hugging Face
    config.json dict. A subclass is a dataclass naming its ``required`` fields."""
    required = ()  # (no annotation: not a dataclass field)
    sizes = ()     # integer fields that must be >= 1
    heads = ()     # (width field, heads field): the width must split evenly into heads
    dropouts = ()  # probabilities, in [0, 1]

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """ValueError naming the field when the shapes cannot make a model (a negative width,
        a width the heads do not divide, a dropout outside [0, 1]), before any tensor is made."""
        for name in self.sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} = {value!r}: expected a positive integer")
        width, heads = self.heads
        if getattr(self, width) % getattr(self, heads):
            raise ValueError(f"{heads} = {getattr(self, heads)} does not divide {width} = {getattr(self, width)}; "
                             f"each head gets {width} / {heads} dimensions")
        for name in self.dropouts:
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} = {value!r}: expected a probability in [0, 1]")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        """Build from a Hugging Face config.json dict; unknown keys are ignored."""
        missing = [k for k in cls.required if k not in d]
        if missing:
            raise ValueError(f"{source}: missing config field(s) {missing} for a {cls.__name__}")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's init (DistilBERT's too): N(0, std) weights, zero biases, unit LayerNorm, zero padding
    embedding. Applied with ``model.apply(lambda m: init_weights(m, config.initializer_range))``."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@dataclass
class BertConfig(HFConfig):
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    model_type: str = "bert"

    # fields without which no checkpoint can be read: a config.json must name them
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size")
    heads = ("hidden_size", "num_attention_heads")
    dropouts = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Familiar shapes, for random-init models and benchmarks. Real weights come from load_pretrained.
BERT_PRESETS = {
    "tinybert": dict(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200),
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "bert-base-cased": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                            intermediate_size=3072, vocab_size=28996),
}


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    # BERT's "gelu" is the exact erf form, not the tanh approximation
    return F.gelu(x)


ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def additive_padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """[B, T] 1/0 mask -> [B, 1, 1, T] bias: 0 where attended, dtype's most negative value at padding."""
    if attention_mask is None:
        return None
    m = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # all segment 0, without a gather
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings.weight[:T]
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of "
                             f"num_attention_heads {config.num_attention_heads}")
        self.num_heads = config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = (proj(x).view(B, T, self.num_heads, -1).transpose(1, 2)  # each [B, heads, T, head_dim]
                   for proj in (self.query, self.key, self.value))
        if attn_bias is not None and attn_bias.dtype != q.dtype:
            attn_bias = attn_bias.to(q.dtype)  # under autocast q is bf16
        # SDPA, or with attention dropout on CPU an explicit path with a cheaper mask (ops.attention)
        y = ops.attention(q, k, v, attn_bias, dropout_p=self.dropout_p if self.training else 0.0)
        return y.transpose(1, 2).reshape(B, T, H)


def project_add_norm(block: nn.Module, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """LayerNorm(residual + Dropout(dense(h))): the end of both sub-layers of a BERT layer
    (``BertSelfOutput`` after attention, ``BertOutput`` after the FFN)."""
    if not block.training and ops.fast_kernels_enabled("inference_fusions"):
        # inference: no dropout, so the residual add runs inside the GEMM (a oneDNN post-op)
        return block.LayerNorm(ops.linear_add(h, block.dense.weight, block.dense.bias, residual))
    return block.LayerNorm(block.dropout(block.dense(h)) + residual)


class BertSelfOutput(nn.Module):
    """The attention's output projection: dense -> dropout -> + residual -> LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return project_add_norm(self, h, residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)  # HF's name, hence `self.self`
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, attn_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {config.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is gelu_erf and ops.fast_kernels_enabled("inference_fusions"):
            # GELU inside the GEMM when no gradient is needed; dense then GELU otherwise
            return ops.linear_gelu(x, self.dense.weight, self.dense.bias)
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    """The FFN's output projection: dense (intermediate -> hidden) -> dropout -> + residual -> LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return project_add_norm(self, h, residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        a = self.attention(x, attn_bias)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, attn_bias)
        return x


class BertModel(nn.Module):
    """The encoder: ``forward(input_ids [B,T], attention_mask [B,T], token_type_ids) -> [B, T, H]``."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        if attention_mask is not None and ops.fast_kernels_enabled() and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: no [B, 1, 1, T] bias to add, same result
        return self.encoder(x, additive_padding_mask(attention_mask, x.dtype))

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def dropout_p(self) -> float:
        c = self.config
        return c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
