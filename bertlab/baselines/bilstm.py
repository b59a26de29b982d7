"""BiLSTM and BiLSTM-CRF taggers over word embeddings (Huang et al. 2015; Lample et al. 2016).

    x_t = E[w_t]                                       word embedding, trained from scratch
    h_t = [LSTM_fwd(x_1..x_t) ; LSTM_bwd(x_t..x_n)]    [2H], left and right context
    e_t = W · Dropout(h_t) + b                         emission scores (logits) [C]

BiLSTM: ``p(y_t | x) = softmax(e_t)``, each tag chosen independently.
BiLSTM-CRF: the ``e_t`` are the emissions of a linear-chain CRF (``bertlab.models.crf``), which
scores whole tag sequences and so learns that ``I-X`` follows ``B-X``.

The encoder (``BiLSTMEncoder``) has the BERT encoders' interface — ``forward(input_ids,
attention_mask, token_type_ids) -> [B, T, 2H]``, ``hidden_size``, ``dropout_p``, ``config`` — so
``BiLSTMTagger`` *is* a :class:`~bertlab.models.heads.TokenClassifier`: same ``forward``,
``labels``, ``head="softmax"|"crf"``, ``crf_loss`` and ``decode``, one training loop for all.
Inputs come from :class:`bertlab.baselines.vocab.WordTokenizer` (one id per word).

It is trained by ``bertlab.train`` like any BERT model (``[model] arch = "bilstm"``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from bertlab.baselines.vocab import WordTokenizer
from bertlab.models.heads import TokenClassifier


@dataclass
class BiLSTMConfig:
    vocab_size: int
    embedding_dim: int = 100
    lstm_hidden_size: int = 100   # per direction; the encoder outputs 2x this
    num_layers: int = 1
    dropout: float = 0.5          # on the embeddings and on the LSTM outputs
    pad_token_id: int = 0
    initializer_range: float = 0.1  # std of the classifier init (TokenClassifier reads it)
    model_type: str = "bilstm"

    def to_dict(self) -> dict:
        return asdict(self)


class BiLSTMEncoder(nn.Module):
    """Embedding -> dropout -> bidirectional LSTM, padding-aware: ``[B, T] -> [B, T, 2H]``."""

    def __init__(self, config: BiLSTMConfig):
        super().__init__()
        self.config = config
        self.hidden_size = 2 * config.lstm_hidden_size
        self.dropout_p = config.dropout
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.embedding_dim, config.lstm_hidden_size, num_layers=config.num_layers,
                            bidirectional=True, batch_first=True,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``token_type_ids`` is accepted and ignored (one segment). Padding must be on the right."""
        x = self.embedding_dropout(self.word_embeddings(input_ids))
        if attention_mask is None:
            return self.lstm(x)[0]
        lengths = attention_mask.sum(1).clamp(min=1).cpu()  # an all-pad row still needs one step
        # packing keeps the backward LSTM from reading the padding before the real words
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        return out


class BiLSTMTagger(TokenClassifier):
    """``BiLSTMTagger(vocab_size, labels, head="crf")``: a BiLSTM encoder under the shared head.

    ``model(input_ids, attention_mask) -> logits [B, T, C]``; ``model.crf_loss(logits, labels)``
    for ``head="crf"``, a token loss on the logits for ``head="softmax"``; ``model.decode``.
    """

    def __init__(self, vocab_size: int, labels: list[str], embedding_dim: int = 100,
                 lstm_hidden_size: int = 100, num_layers: int = 1, dropout: float = 0.5,
                 head: str = "softmax"):
        config = BiLSTMConfig(vocab_size, embedding_dim, lstm_hidden_size, num_layers, dropout)
        super().__init__(BiLSTMEncoder(config), labels, dropout=dropout, head=head)


@torch.no_grad()
def init_embeddings_from_bert(encoder: BiLSTMEncoder, words: WordTokenizer, bert_tokenizer,
                              bert_word_embeddings: torch.Tensor) -> int:
    """Set each word's embedding to the mean of its BERT subword embeddings; returns how many.

    ``bert_word_embeddings [V_bert, D]`` (e.g. ``bert.embeddings.word_embeddings.weight``) needs
    ``D == embedding_dim``. [PAD] stays zero; [UNK] keeps its random init.
    """
    D = encoder.word_embeddings.embedding_dim
    if bert_word_embeddings.shape[1] != D:
        raise ValueError(f"BERT embeddings are {bert_word_embeddings.shape[1]}-wide but the BiLSTM's "
                         f"embedding_dim is {D}: build the BiLSTMTagger with embedding_dim={bert_word_embeddings.shape[1]}")
    done = 0
    for i, w in enumerate(words.words[2:], start=2):
        ids, _ = bert_tokenizer.subwords([w])
        if ids:
            encoder.word_embeddings.weight[i] = bert_word_embeddings[ids].float().mean(0)
            done += 1
    return done
