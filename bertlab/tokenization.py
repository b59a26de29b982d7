"""Words -> subwords -> windows, and back: the bridge between corpora and encoders.

A thin wrapper on the ``tokenizers`` library (the Rust engine behind Hugging Face's fast
tokenizers), so subword ids are exactly those of ``AutoTokenizer(...)(words,
is_split_into_words=True)``. What it adds is the NER bookkeeping:

* first-subword labelling: a word's label sits on its first subword, the others get -100;
* sliding windows for sentences longer than the model: windows overlap by ``stride`` subwords,
  and every word is *owned* by exactly one window (overlaps are split at their midpoint, so a
  word keeps the window with more context), so training sees each label once and evaluation
  scores each word once;
* ``word_predictions``: the inverse, per-window logits -> one row per word.

Worked example (MiniLM's uncased vocabulary, ``max_length=6`` so 4 subwords a window, ``stride=2``)::

    tok.encode_words(["hepatic", "steatosis", "was", "seen"], labels=[1, 2, 0, 0], max_length=6, stride=2)
    window 0: [CLS] he ##pati ##c [SEP]            owns hepatic            labels -100 1 -100 -100 -100
    window 1: [CLS] ste ##ato ##sis was [SEP]      owns steatosis, was     labels -100 2 -100 -100 0 -100
    window 2: [CLS] was seen [SEP]                 owns seen               labels -100 -100 0 -100

Windows end and start on word boundaries where they can (so "hepatic" is not cut), which makes
the overlap at most ``stride`` subwords; an overlapping word ("was") belongs to the window
where it sits before the overlap's midpoint.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import AddedToken
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from bertlab.files import write_text

IGNORE_INDEX = -100
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}


@dataclass
class Window:
    """One model input: ``[CLS] (pair [SEP]) subwords [SEP]``, unpadded.

    ``input_ids``, ``token_type_ids``, ``word_ids``, ``labels`` and ``owned`` all have one entry
    per position. ``word_ids[t]`` is the index into the sentence's words of position t (``None``
    for ``[CLS]``/``[SEP]`` and for the pair text). ``owned[t]`` is True at the first subword of
    each word this window owns: that is where the word's label sits (``labels``, -100 elsewhere)
    and where its prediction is read. ``n_words`` is the sentence's word count.
    """
    input_ids: list[int]
    token_type_ids: list[int]
    word_ids: list[int | None]
    labels: list[int]
    owned: list[bool]
    n_words: int = 0
    start: int = field(default=0, repr=False)  # first subword of the sentence this window holds

    def __len__(self) -> int:
        return len(self.input_ids)


class Tokenizer:
    """A BERT WordPiece tokenizer with NER helpers. Build with ``Tokenizer.from_pretrained(dir)``.

    Attributes: ``pad_token_id``, ``cls_token_id``, ``sep_token_id``, ``unk_token_id``,
    ``vocab_size``, ``model_max_length``, ``do_lower_case``.
    """

    def __init__(self, tokenizer: _RustTokenizer, do_lower_case: bool, model_max_length: int = 512,
                 special_tokens: dict[str, str] | None = None, extra_config: dict | None = None):
        self._tok = tokenizer
        # our encoders handle truncation/windows and padding themselves
        self._tok.no_truncation()
        self._tok.no_padding()
        self.do_lower_case = bool(do_lower_case)
        self.model_max_length = int(model_max_length)
        self.special_tokens = dict(SPECIAL_TOKENS if special_tokens is None else special_tokens)
        self._extra_config = dict(extra_config or {})
        ids = {}
        for name, tok in self.special_tokens.items():
            i = self._tok.token_to_id(tok)
            if i is None and name != "mask_token":  # [MASK] is only needed for pre-training
                raise ValueError(f"special token {name}={tok!r} is not in the vocabulary")
            ids[name] = i
        self.pad_token_id = ids["pad_token"]
        self.cls_token_id = ids["cls_token"]
        self.sep_token_id = ids["sep_token"]
        self.unk_token_id = ids["unk_token"]

    # ---- loading and saving ---------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read ``tokenizer.json``, or else ``vocab.txt`` (+ ``tokenizer_config.json`` for
        ``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``, ``model_max_length``)."""
        path = Path(path)
        cfg_file = path / "tokenizer_config.json"
        cfg = {}
        if cfg_file.exists():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
        specials = {k: _token_str(cfg.get(k, v)) for k, v in SPECIAL_TOKENS.items()}
        max_len = cfg.get("model_max_length", 512)
        if not isinstance(max_len, int) or max_len > 1_000_000:  # HF writes a huge int for "unset"
            max_len = 512
        if (path / "tokenizer.json").exists():
            try:
                tok = _RustTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:
                raise ValueError(f"{path / 'tokenizer.json'}: cannot read tokenizer ({e})") from None
            norm = json.loads(tok.to_str()).get("normalizer") or {}
            lower = cfg.get("do_lower_case", norm.get("lowercase", True))
            try:
                return cls(tok, lower, max_len, specials, cfg)
            except ValueError as e:  # a special token the vocabulary lacks: name the file
                raise ValueError(f"{path / 'tokenizer.json'}: {e}") from None
        if (path / "vocab.txt").exists():
            lower = cfg.get("do_lower_case", True)
            tok = bert_wordpiece(path / "vocab.txt", lowercase=lower,
                                 strip_accents=cfg.get("strip_accents"),
                                 tokenize_chinese_chars=cfg.get("tokenize_chinese_chars", True),
                                 cls_token=specials["cls_token"], sep_token=specials["sep_token"],
                                 unk_token=specials["unk_token"])
            try:
                return cls(tok, lower, max_len, specials, cfg)
            except ValueError as e:
                raise ValueError(f"{path / 'vocab.txt'}: {e}") from None
        raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt; a BERT checkpoint folder "
                                f"needs one of them")

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json
        into the folder ``path`` (created if needed), the set ``AutoTokenizer`` reads."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_text(path / "tokenizer.json", self._tok.to_str())
        vocab = sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        write_text(path / "vocab.txt", "".join(t + "\n" for t, _ in vocab))
        cfg = {k: v for k, v in self._extra_config.items()
               if k in ("strip_accents", "tokenize_chinese_chars", "clean_up_tokenization_spaces")}
        cfg.update(self.special_tokens, do_lower_case=self.do_lower_case,
                   model_max_length=self.model_max_length, tokenizer_class="BertTokenizer")
        write_text(path / "tokenizer_config.json", json.dumps(cfg, indent=2) + "\n")
        write_text(path / "special_tokens_map.json", json.dumps(self.special_tokens, indent=2) + "\n")

    # ---- plain encoding -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self._tok.token_to_id(t) for t in tokens]

    def tokenize(self, text: str) -> list[str]:
        """Subword strings of raw text (no special tokens)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def subwords(self, words: list[str]) -> tuple[list[int], list[int]]:
        """Pre-split words -> (subword ids, word index per subword), no special tokens.

        A word the normaliser erases entirely (e.g. a lone zero-width space) becomes one
        ``[UNK]``, so every word has a first subword to carry its label; transformers' tokenizer
        drops such a word instead (the only difference from it).
        """
        return self._subwords_of(self._tok.encode(words, is_pretokenized=True, add_special_tokens=False),
                                 len(words))

    def _subwords_of(self, enc, n_words: int) -> tuple[list[int], list[int]]:
        ids, wids = enc.ids, enc.word_ids
        seen = set(wids)
        if len(seen) == n_words:
            return list(ids), list(wids)
        out_ids, out_wids, t = [], [], 0
        for w in range(n_words):  # rebuild, inserting [UNK] for erased words
            if w not in seen:
                out_ids.append(self.unk_token_id)
                out_wids.append(w)
                continue
            while t < len(ids) and wids[t] == w:
                out_ids.append(ids[t])
                out_wids.append(w)
                t += 1
        return out_ids, out_wids

    # ---- words -> windows -----------------------------------------------------------------

    def encode_words(self, words: list[str], labels: list[int] | None = None, max_length: int = 512,
                     stride: int | None = 128, pair_words: list[str] | None = None) -> list[Window]:
        """Pre-split ``words`` (and optional word ``labels`` ids) -> a list of windows.

        ``max_length`` counts special tokens. Sentences that fit give one window; longer ones give
        overlapping windows, consecutive windows sharing about ``stride`` subwords (windows start
        and end on word boundaries where possible). ``stride=None`` truncates instead: one window,
        words past it owned by none (``word_predictions`` gives them NaN rows).
        ``pair_words`` (e.g. an NBME feature text) gives ``[CLS] pair [SEP] words [SEP]`` with
        token types 0 then 1, the pair repeated in every window and never labelled.
        """
        ids, wids = self.subwords(words)
        pair_ids = self.subwords(pair_words)[0] if pair_words is not None else None
        return self._windows(ids, wids, len(words), labels, max_length, stride, pair_ids)

    def batch_encode(self, sentences: list[list[str]], labels: list[list[int]] | None = None,
                     max_length: int = 512, stride: int | None = 128) -> list[list[Window]]:
        """``encode_words`` for many sentences at once (the Rust side tokenises in parallel)."""
        if labels is not None and len(labels) != len(sentences):
            raise ValueError(f"{len(sentences)} sentences but {len(labels)} label lists")
        encs = self._tok.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)
        out = []
        for i, (words, enc) in enumerate(zip(sentences, encs)):
            ids, wids = self._subwords_of(enc, len(words))
            out.append(self._windows(ids, wids, len(words), None if labels is None else labels[i],
                                     max_length, stride, None))
        return out

    def _windows(self, ids, wids, n_words, labels, max_length, stride, pair_ids) -> list[Window]:
        if labels is not None and len(labels) != n_words:
            raise ValueError(f"{n_words} words but {len(labels)} labels")
        n_special = 2 if pair_ids is None else 3 + len(pair_ids)
        budget = max_length - n_special  # subwords of `words` per window
        if budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room for words after "
                             f"{n_special} special/pair tokens")
        if stride is not None and not 0 <= stride < budget:
            raise ValueError(f"stride={stride} must be >= 0 and < {budget} "
                             f"(max_length {max_length} minus {n_special} special/pair tokens)")
        S = len(ids)
        is_start = [t == 0 or wids[t] != wids[t - 1] for t in range(S)] + [True]

        spans = []  # (start, end) subword ranges of each window
        start = 0
        while True:
            end = min(start + budget, S)
            if end < S:
                b = end
                while b > start and not is_start[b]:  # end on a word boundary if one exists
                    b -= 1
                end = b if b > start else end
            spans.append((start, end))
            if end >= S or stride is None:
                break
            lo = max(end - stride, start + 1)
            nxt = next((t for t in range(lo, end + 1) if is_start[t]), lo)  # start on a word too
            start = nxt

        # ownership: a word belongs to the window where its first subword is; in an overlap, the
        # boundary is the overlap's midpoint, so each word gets the window with more context
        bounds = [0]
        for (s0, e0), (s1, _) in zip(spans, spans[1:]):
            bounds.append((s1 + e0 + 1) // 2 if s1 < e0 else e0)
        bounds.append(spans[-1][1] if stride is None else S)

        pre_ids = [self.cls_token_id] + ([] if pair_ids is None else list(pair_ids) + [self.sep_token_id])
        seg = 0 if pair_ids is None else 1
        windows = []
        for k, (s, e) in enumerate(spans):
            own_lo, own_hi = bounds[k], bounds[k + 1]
            owned = [False] * len(pre_ids)
            lab = [IGNORE_INDEX] * len(pre_ids)
            for t in range(s, e):
                o = is_start[t] and own_lo <= t < own_hi
                owned.append(o)
                lab.append(labels[wids[t]] if (o and labels is not None) else IGNORE_INDEX)
            owned.append(False)
            lab.append(IGNORE_INDEX)
            windows.append(Window(
                input_ids=pre_ids + ids[s:e] + [self.sep_token_id],
                token_type_ids=[0] * len(pre_ids) + [seg] * (e - s + 1),
                word_ids=[None] * len(pre_ids) + wids[s:e] + [None],
                labels=lab, owned=owned, n_words=n_words, start=s))
        return windows


def word_predictions(windows: list[Window], per_window_logits) -> np.ndarray:
    """Per-window logits -> float32 ``[n_words, C]``: each word's row is its first subword in the
    window that owns it, so overlapping windows never count a word twice.

    ``per_window_logits[k]`` is ``[T_k, C]`` with ``T_k >= len(windows[k])`` (a padded batch row
    is fine), as a numpy array or a torch tensor. Words no window owns (``stride=None``
    truncation) get NaN rows.
    """
    if len(windows) != len(per_window_logits):
        raise ValueError(f"{len(windows)} windows but {len(per_window_logits)} logit arrays")
    if not windows:
        raise ValueError("no windows")
    out = None
    for w, logits in zip(windows, per_window_logits):
        if hasattr(logits, "detach"):
            logits = logits.detach().float().cpu().numpy()
        logits = np.asarray(logits, dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] < len(w):
            raise ValueError(f"logits of shape {logits.shape} for a window of {len(w)} positions; "
                             f"expected [>= {len(w)}, C]")
        if out is None:
            out = np.full((w.n_words, logits.shape[1]), np.nan, dtype=np.float32)
        pos = [t for t, o in enumerate(w.owned) if o]
        out[[w.word_ids[t] for t in pos]] = logits[pos]
    return out


def bert_wordpiece(vocab_file: str | os.PathLike, lowercase: bool = True, strip_accents: bool | None = None,
                   tokenize_chinese_chars: bool = True, cls_token: str = "[CLS]", sep_token: str = "[SEP]",
                   unk_token: str = "[UNK]") -> _RustTokenizer:
    """A ``tokenizers.Tokenizer`` from a BERT vocab.txt with the same pipeline transformers'
    fast BertTokenizer builds: BertNormalizer (clean text, CJK spacing, lower-casing and, by
    default, accent stripping iff lower-casing), BertPreTokenizer, WordPiece with ``##``."""
    vocab_file = Path(vocab_file)
    lines = vocab_file.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last token, it does not start another
    vocab = {tok: i for i, tok in enumerate(lines)}  # a repeated token keeps its last id, as in HF
    for name, token in (("unknown", unk_token), ("classification", cls_token), ("separator", sep_token)):
        if token not in vocab:  # every window starts with [CLS] and ends with [SEP]
            raise ValueError(f"{vocab_file}: the {name} token {token!r} is not in the vocabulary")
    tok = _RustTokenizer(WordPiece(vocab, unk_token=unk_token))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])])
    for name in ("[PAD]", unk_token, cls_token, sep_token, "[MASK]"):
        if name in vocab:
            tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
    return tok


def _token_str(t) -> str:
    # tokenizer_config.json may hold a token as a string or as an AddedToken dict
    return t["content"] if isinstance(t, dict) else str(t)
