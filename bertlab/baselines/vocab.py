"""A word-level vocabulary with the subword ``Tokenizer``'s interface, for the BiLSTM taggers.

One id per word and no ``[CLS]``/``[SEP]``, but the same ``encode_words -> list[Window]``
(:class:`bertlab.tokenization.Window`), so BiLSTM models go through the same ``collate``,
training loop and ``word_predictions`` as BERT. Worked example::

    tok = WordTokenizer.build([["Breast", "cancer", "."], ["cancer", "risk"]], min_freq=1)
    tok.encode_words(["breast", "cancer", "risk"], labels=[1, 2, 0])[0]
    # Window(input_ids=[2, 3, 5], labels=[1, 2, 0], word_ids=[0, 1, 2], owned=[True]*3, ...)

Normalisation (``lowercase``, digits -> ``0``) is applied before the lookup, so "Breast" and
"breast" (or "p53" and "p54") share an embedding; words seen fewer than ``min_freq`` times in
training map to ``[UNK]`` (id 1). Id 0 is ``[PAD]``.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from bertlab.tokenization import IGNORE_INDEX, Window

PAD, UNK = "[PAD]", "[UNK]"


class WordTokenizer:
    """Word -> id. Build with :meth:`build` on training sentences, or :meth:`from_pretrained`."""

    pad_token_id = 0
    unk_token_id = 1
    cls_token_id = None  # no special tokens around a sentence
    sep_token_id = None

    def __init__(self, words: list[str], lowercase: bool = True, normalize_digits: bool = True):
        if words[:2] != [PAD, UNK]:
            raise ValueError(f"WordTokenizer: the vocabulary must start with {PAD}, {UNK}; got {words[:2]}")
        self.words = list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.lowercase, self.normalize_digits = lowercase, normalize_digits
        self.model_max_length = 10 ** 6  # an LSTM has no position limit

    @classmethod
    def build(cls, sentences_tokens: list[list[str]], min_freq: int = 1, lowercase: bool = True,
              normalize_digits: bool = True, max_size: int | None = None) -> "WordTokenizer":
        """The vocabulary of the training sentences: normalised words with count >= ``min_freq``,
        most frequent first (ties alphabetical), at most ``max_size`` of them."""
        probe = cls([PAD, UNK], lowercase, normalize_digits)
        counts = Counter(probe.normalize(w) for tokens in sentences_tokens for w in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([PAD, UNK] + kept[:max_size], lowercase, normalize_digits)

    def normalize(self, word: str) -> str:
        if self.lowercase:
            word = word.lower()
        if self.normalize_digits:
            word = re.sub(r"\d", "0", word)
        return word

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def convert_tokens_to_ids(self, words: list[str]) -> list[int]:
        return [self.ids.get(self.normalize(w), self.unk_token_id) for w in words]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.words[i] for i in ids]

    def encode_words(self, words: list[str], labels: list[int] | None = None, max_length: int = 512,
                     stride: int | None = 128) -> list[Window]:
        """Words (and optional label ids) -> windows of at most ``max_length`` words.

        Short sentences give one window. Longer ones give windows overlapping by ``stride`` words,
        each word *owned* by the window where it sits furthest from an edge (the midpoint of each
        overlap), exactly as :meth:`bertlab.tokenization.Tokenizer.encode_words` does with
        subwords; ``stride=None`` truncates (words past the window are owned by none).
        """
        n = len(words)
        if labels is not None and len(labels) != n:
            raise ValueError(f"{n} words but {len(labels)} labels")
        if stride is not None and not 0 <= stride < max_length:
            raise ValueError(f"stride={stride} must be >= 0 and < max_length={max_length}")
        ids = self.convert_tokens_to_ids(words)
        spans, start = [], 0
        while True:
            end = min(start + max_length, n)
            spans.append((start, end))
            if end >= n or stride is None:
                break
            start = end - stride
        bounds = [0] + [(s1 + e0 + 1) // 2 for (_, e0), (s1, _) in zip(spans, spans[1:])]
        bounds.append(spans[-1][1] if stride is None else n)
        windows = []
        for k, (s, e) in enumerate(spans):
            owned = [bounds[k] <= t < bounds[k + 1] for t in range(s, e)]
            lab = [labels[t] if (o and labels is not None) else IGNORE_INDEX for t, o in zip(range(s, e), owned)]
            windows.append(Window(input_ids=ids[s:e], token_type_ids=[0] * (e - s), word_ids=list(range(s, e)),
                                  labels=lab, owned=owned, n_words=n, start=s))
        return windows

    def batch_encode(self, sentences: list[list[str]], labels: list[list[int]] | None = None,
                     max_length: int = 512, stride: int | None = 128) -> list[list[Window]]:
        """``encode_words`` for many sentences."""
        if labels is not None and len(labels) != len(sentences):
            raise ValueError(f"{len(sentences)} sentences but {len(labels)} label lists")
        return [self.encode_words(w, None if labels is None else labels[i], max_length, stride)
                for i, w in enumerate(sentences)]

    def save(self, path: str | os.PathLike) -> None:
        """``path/word_vocab.json``: the word list and the normalisation flags."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "word_vocab.json").write_text(json.dumps(
            {"words": self.words, "lowercase": self.lowercase, "normalize_digits": self.normalize_digits}))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "WordTokenizer":
        file = Path(path) / "word_vocab.json"
        if not file.exists():
            raise FileNotFoundError(f"{file}: no word vocabulary here (WordTokenizer.save writes it)")
        d = json.loads(file.read_text())
        return cls(d["words"], d["lowercase"], d["normalize_digits"])
