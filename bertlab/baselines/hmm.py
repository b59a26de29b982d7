"""A supervised first-order hidden Markov model tagger, in NumPy.

The joint probability of words ``w_1..w_n`` and tags ``y_1..y_n``:

    p(w, y) = π[y_1] · Π_{t>1} A[y_{t-1}, y_t] · Π_t B[y_t, w_t]

estimated by counting on the training tags with add-k (Lidstone) smoothing:

    π[j]    = (#starts in j      + k) / (#sentences + k C)
    A[i, j] = (#(i followed by j) + k) / (#(i followed by anything) + k C)
    B[j, v] = (#(word v tagged j) + k) / (#(tagged j)              + k |V|)

Unknown words: a training word seen at most ``rare`` times is replaced by its *class* token
(``<unk:shape:suffix>``, e.g. ``<unk:x:tis>`` for "gastritis"), so the classes get emission
probabilities learned from the rare words that most resemble the unseen ones; at prediction an
out-of-vocabulary word is mapped to its class (falling back to ``<unk:shape:>``, then ``<unk>``).

Decoding is Viterbi in log space (sums of logs, no underflow on long sentences):

    δ_1[j] = log π[j] + log B[j, w_1]
    δ_t[j] = max_i (δ_{t-1}[i] + log A[i, j]) + log B[j, w_t],   ψ_t[j] = argmax_i (...)

Optional ``use_shape``: a second, POS-like observation stream — the word's shape class ``s(w)``
— with its own add-k table ``S[j, s]``; each tag's emission score becomes
``log B[j, w] + log S[j, s(w)]`` (a product of experts: it double-counts evidence the word
already carries, which is exactly why it helps rare words and can hurt frequent ones).
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

UNK = "<unk>"

# suffixes and shapes are the "POS-like" word classes (after the suffix classes of TnT)
_SHAPE_RULES = [
    (re.compile(r"^\d+$"), "d"),                   # 12
    (re.compile(r"^(?=.*\d)[\d.,/:%-]+$"), "d."),  # 1.5, 12/3, 10%
    (re.compile(r"^[^\w\s]+$"), "p"),              # punctuation
    (re.compile(r"^[A-Z]+$"), "X"),                # APC, DNA
    (re.compile(r"^[A-Z][a-z]+$"), "Xx"),          # Wnt
    (re.compile(r"^[a-z]+$"), "x"),                # polyposis
    (re.compile(r"^[A-Za-z]+$"), "xX"),            # mRNA
    (re.compile(r"\d"), "xd"),                     # BRCA1, p53
    (re.compile(r"-"), "x-x"),                     # tumour-suppressor
]


def word_class(word: str) -> str:
    """A coarse POS-like shape class: ``d``, ``d.``, ``p``, ``X``, ``Xx``, ``x``, ``xX``, ``xd``, ``x-x``, ``o``."""
    for pattern, name in _SHAPE_RULES:
        if pattern.search(word):
            return name
    return "o"


def unknown_token(word: str, suffix_len: int = 3) -> str:
    """The class token an unknown ``word`` is mapped to: shape plus its lowercase suffix."""
    cls = word_class(word)
    suffix = word[-suffix_len:].lower() if cls in ("x", "Xx", "X", "xX") and len(word) > suffix_len + 1 else ""
    return f"<unk:{cls}:{suffix}>"


def viterbi(log_pi: np.ndarray, log_A: np.ndarray, log_emit: np.ndarray) -> tuple[list[int], float]:
    """Best tag path and its log score; ``log_pi [C]``, ``log_A [C, C]``, ``log_emit [n, C]``
    (``log_emit[t, j]`` = log-probability of the t-th observation under tag j)."""
    n, C = log_emit.shape
    if n == 0:
        return [], 0.0
    delta = log_pi + log_emit[0]
    back = np.zeros((n, C), dtype=np.int64)
    for t in range(1, n):
        cand = delta[:, None] + log_A                 # [previous i, next j]
        back[t] = cand.argmax(axis=0)
        delta = cand[back[t], np.arange(C)] + log_emit[t]
    path = [int(delta.argmax())]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1], float(delta.max())


def iob2_label_order(tag_sequences) -> list[str]:
    """``["O", "B-T1", "I-T1", ...]`` (types sorted) for the types seen, like ``label_list``;
    any tag outside that pattern is appended in sorted order."""
    seen = {t for tags in tag_sequences for t in tags}
    types = sorted({t[2:] for t in seen if t[:2] in ("B-", "I-")})
    labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    return labels + sorted(seen - set(labels))


class HMMTagger:
    """Supervised HMM: ``HMMTagger(k=0.1).fit(tokens, tags).predict(tokens)`` (sklearn style).

    ``k``: add-k smoothing for π, A, B. ``rare``: training words with count ≤ rare also train
    the unknown-word classes. ``suffix_len``: suffix length of those classes. ``lowercase``:
    fold case before the vocabulary lookup (the class is taken from the original word).
    ``use_shape``: add the POS-like shape stream (see module docstring).
    """

    def __init__(self, k: float = 0.1, rare: int = 1, suffix_len: int = 3, lowercase: bool = False,
                 use_shape: bool = False, labels: list[str] | None = None):
        self.k, self.rare, self.suffix_len = k, rare, suffix_len
        self.lowercase, self.use_shape = lowercase, use_shape
        self.labels = list(labels) if labels is not None else None

    # -- estimation ------------------------------------------------------------------------

    def _norm(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def fit(self, sentences_tokens: list[list[str]], sentences_tags: list[list[str]]) -> "HMMTagger":
        """Count and smooth π [C], A [C, C], B [C, V] (and S [C, shapes]); stores their logs."""
        if len(sentences_tokens) != len(sentences_tags):
            raise ValueError(f"HMMTagger.fit: {len(sentences_tokens)} token lists but {len(sentences_tags)} tag lists")
        if self.labels is None:
            self.labels = iob2_label_order(sentences_tags)
        tag_id = {t: i for i, t in enumerate(self.labels)}
        C, k = len(self.labels), self.k
        freq = Counter(self._norm(w) for tokens in sentences_tokens for w in tokens)
        # the vocabulary: frequent words, every class token seen on a rare word, and <unk>
        observations = [[self._observe(w, freq) for w in tokens] for tokens in sentences_tokens]
        vocab = sorted({o for obs in observations for o in obs} | {UNK})
        self.vocab = {v: i for i, v in enumerate(vocab)}
        self.word_freq = freq
        shapes = sorted({word_class(w) for tokens in sentences_tokens for w in tokens} | {"o"})
        self.shapes = {s: i for i, s in enumerate(shapes)}

        start = np.zeros(C)
        trans = np.zeros((C, C))
        emit = np.zeros((C, len(vocab)))
        shape_emit = np.zeros((C, len(shapes)))
        for tokens, obs, tags in zip(sentences_tokens, observations, sentences_tags):
            if len(tokens) != len(tags):
                raise ValueError(f"HMMTagger.fit: sentence {tokens[:5]}... has {len(tokens)} tokens, {len(tags)} tags")
            ids = [tag_id[t] for t in tags]
            if ids:
                start[ids[0]] += 1
            for i, j in zip(ids, ids[1:]):
                trans[i, j] += 1
            for j, o, w in zip(ids, obs, tokens):
                emit[j, self.vocab[o]] += 1
                shape_emit[j, self.shapes[word_class(w)]] += 1
        self.pi = (start + k) / (start.sum() + k * C)
        self.A = (trans + k) / (trans.sum(1, keepdims=True) + k * C)
        self.B = (emit + k) / (emit.sum(1, keepdims=True) + k * len(vocab))
        self.S = (shape_emit + k) / (shape_emit.sum(1, keepdims=True) + k * len(shapes))
        self.log_pi, self.log_A, self.log_B, self.log_S = (np.log(m) for m in (self.pi, self.A, self.B, self.S))
        return self

    def num_parameters(self) -> int:
        """The number of fitted probabilities: π [C], A [C, C], B [C, V], and S [C, shapes] with
        ``use_shape`` (the second emission table)."""
        tables = (self.pi, self.A, self.B) + ((self.S,) if self.use_shape else ())
        return sum(int(t.size) for t in tables)

    def _observe(self, word: str, freq: Counter) -> str:
        """The vocabulary entry of a training word: itself, or its class if rare."""
        w = self._norm(word)
        return w if freq[w] > self.rare else unknown_token(word, self.suffix_len)

    def _lookup(self, word: str) -> int:
        """Vocabulary id at prediction: known word, else its class, else the shape-only class, else <unk>."""
        w = self._norm(word)
        if w in self.vocab and self.word_freq[w] > self.rare:
            return self.vocab[w]
        for candidate in (unknown_token(word, self.suffix_len), f"<unk:{word_class(word)}:>", UNK):
            if candidate in self.vocab:
                return self.vocab[candidate]
        raise AssertionError("unreachable: <unk> is always in the vocabulary")

    # -- decoding ----------------------------------------------------------------------------

    def emission_scores(self, tokens: list[str]) -> np.ndarray:
        """``log B[j, w_t]`` (+ ``log S[j, s(w_t)]`` with ``use_shape``) as ``[n, C]``."""
        ids = [self._lookup(w) for w in tokens]
        scores = self.log_B[:, ids].T
        if self.use_shape:
            shape_ids = [self.shapes.get(word_class(w), self.shapes["o"]) for w in tokens]
            scores = scores + self.log_S[:, shape_ids].T
        return scores

    def predict(self, sentences_tokens: list[list[str]]) -> list[list[str]]:
        """Viterbi tags for each sentence (lists of IOB2 strings)."""
        out = []
        for tokens in sentences_tokens:
            path, _ = viterbi(self.log_pi, self.log_A, self.emission_scores(tokens))
            out.append([self.labels[j] for j in path])
        return out

    def log_joint(self, tokens: list[str], tags: list[str]) -> float:
        """``log p(w, y)`` of one tagged sentence (without ``use_shape``'s extra stream)."""
        tag_id = {t: i for i, t in enumerate(self.labels)}
        ids = [tag_id[t] for t in tags]
        emit = [self.log_B[j, self._lookup(w)] for j, w in zip(ids, tokens)]
        return float(self.log_pi[ids[0]] + sum(self.log_A[i, j] for i, j in zip(ids, ids[1:])) + sum(emit))
