"""Hand-crafted word features for the feature-based CRF, and their dictionary index.

Each token becomes a bag of binary feature strings (value 1 if present), in the tradition of
CRFsuite's NER templates:

    bias                          always on: a per-tag bias
    w=<lower>                     the word, lowercased
    shape=<Xxxx-dd>  sshape=<Xx-d> full and collapsed word shape
    p1..p3=, s1..s3=              prefixes and suffixes of 1-3 characters
    digit / upper / title / hyphen / has_digit    orthographic flags
    -1:w=, +1:w=, -2:w=, +2:w=    neighbouring words (lowercased) within ±2
    -1:sshape=, +1:sshape=        neighbouring shapes within ±1
    BOS / EOS                     first / last token of the sentence

``FeatureIndex`` maps feature strings to ids (a dictionary built on the training data, keeping
features seen at least ``min_count`` times; unseen features are dropped at prediction), so a
sentence becomes a ragged list of id bags that an ``nn.EmbeddingBag`` turns into emission
scores ``e[t, y] = Σ_{f ∈ bag(t)} W[f, y]``.
"""
from __future__ import annotations

import re
from collections import Counter


def word_shape(word: str) -> str:
    """Character classes: ``Xxxx-dd`` for "Wnt-12" (upper X, lower x, digit d, other kept)."""
    shape = re.sub(r"[A-Z]", "X", word)
    shape = re.sub(r"[a-z]", "x", shape)
    return re.sub(r"\d", "d", shape)


def short_shape(word: str) -> str:
    """The shape with repeated classes collapsed: ``Xx-d`` for "Wnt-12"."""
    return re.sub(r"(.)\1+", r"\1", word_shape(word))


def token_features(tokens: list[str], i: int, window: int = 2) -> list[str]:
    """The feature strings of token ``i`` of a sentence (see the module docstring)."""
    w = tokens[i]
    low = w.lower()
    feats = ["bias", f"w={low}", f"shape={word_shape(w)}", f"sshape={short_shape(w)}"]
    for n in (1, 2, 3):
        if len(w) >= n:
            feats += [f"p{n}={low[:n]}", f"s{n}={low[-n:]}"]
    if w.isdigit():
        feats.append("digit")
    if w.isupper():
        feats.append("upper")
    if w.istitle():
        feats.append("title")
    if "-" in w:
        feats.append("hyphen")
    if any(c.isdigit() for c in w):
        feats.append("has_digit")
    for d in range(-window, window + 1):
        j = i + d
        if d == 0 or not 0 <= j < len(tokens):
            continue
        feats.append(f"{d:+d}:w={tokens[j].lower()}")
        if abs(d) == 1:
            feats.append(f"{d:+d}:sshape={short_shape(tokens[j])}")
    if i == 0:
        feats.append("BOS")
    if i == len(tokens) - 1:
        feats.append("EOS")
    return feats


def sentence_features(tokens: list[str], window: int = 2) -> list[list[str]]:
    """``token_features`` for every token of a sentence."""
    return [token_features(tokens, i, window) for i in range(len(tokens))]


class FeatureIndex:
    """Feature string -> id, built from training sentences; ``min_count`` prunes rare features."""

    def __init__(self, min_count: int = 1, window: int = 2):
        self.min_count, self.window = min_count, window
        self.ids: dict[str, int] = {}

    def fit(self, sentences_tokens: list[list[str]]) -> "FeatureIndex":
        counts = Counter(f for tokens in sentences_tokens for feats in sentence_features(tokens, self.window)
                         for f in feats)
        kept = sorted(f for f, c in counts.items() if c >= self.min_count)
        self.ids = {f: i for i, f in enumerate(kept)}
        return self

    def __len__(self) -> int:
        return len(self.ids)

    def transform(self, tokens: list[str]) -> list[list[int]]:
        """Per token, the ids of its known features (unknown ones dropped; ``bias`` is always known)."""
        return [[self.ids[f] for f in feats if f in self.ids] for feats in sentence_features(tokens, self.window)]
