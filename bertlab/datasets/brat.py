"""brat standoff (``<id>.txt`` + ``<id>.ann``) -> sentences of word tokens with offsets and IOB2 tags.

Only ``T`` (text-bound) lines become mentions; ``E R A M N # *`` lines (events, relations,
attributes, normalisations, notes, equivalences) are read past on purpose. Any other line is an error.

Flattening standoff to one IOB2 tag per token needs policies. Each is a parameter, and every mention a
policy changes or drops is counted per type in ``corpus.notes`` so nothing disappears silently:

- ``discontinuous``: ``"span"`` (default) joins the fragments into one mention from the first start
  to the last end; ``"fragments"`` makes each fragment its own mention; ``"first"`` keeps the first.
- ``inside_token``: a mention boundary falling inside a word token (``"fibers"`` annotated inside
  ``"fibers4"``): ``"expand"`` (default) tags every token the mention touches; ``"split"`` cuts the
  token at the boundary (``"p70I kappa B"`` -> ``p70`` + ``I``: right for glued text, wrong for
  typos such as ``"Hospita"``); ``"drop"`` drops the mention.
- ``overlap``: two mentions sharing a token cannot both be tagged. ``"longest"`` (default) keeps the
  longest outer span, ``"shortest"`` keeps the innermost; ties go to the earlier start, then to the
  earlier line of the .ann file. Dropped mentions are counted as ``nested`` (inside / around the kept
  one), ``identical`` (same tokens, often a second type) or ``crossing``.
- a mention that runs over a sentence boundary is dropped and counted as ``crosses_sentence``.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bertlab.datasets.conll import read_text
from bertlab.datasets.corpus import Corpus, DataError, Document, Sentence
from bertlab.datasets.tags import tags_from_spans

WORD = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks: 107,297 tokens on MACCROBAT
WORD_PAIR = re.compile(r"\w\w")
IGNORED_LINES = ("E", "R", "A", "M", "N", "#", "*")
OVERLAP_POLICIES = ("longest", "shortest")
DISCONTINUOUS_POLICIES = ("span", "fragments", "first")
INSIDE_TOKEN_POLICIES = ("expand", "split", "drop")


@dataclass
class Mention:
    """One ``T`` annotation: ``fragments`` are ``(start, end)`` character offsets, end exclusive."""
    ann_id: str
    type: str
    fragments: list[tuple[int, int]]
    text: str
    line: int


def word_tokenize(text: str, start: int = 0, end: int | None = None) -> list[tuple[str, tuple[int, int]]]:
    """Word and punctuation tokens of ``text[start:end]`` with offsets into ``text``."""
    end = len(text) if end is None else end
    return [(m.group(), m.span()) for m in WORD.finditer(text, start, end)]


def parse_ann(ann_path, text: str, txt_path=None) -> list[Mention]:
    """The ``T`` mentions of one .ann file, each checked against ``text`` (offsets and covered text)."""
    ann_path = Path(ann_path)
    mentions = []
    for lineno, line in enumerate(read_text(ann_path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if line[0] in IGNORED_LINES:
            continue
        where = f"{ann_path}:{lineno}"
        if line[0] != "T":
            raise DataError(f"{where}: unknown annotation line {line[:40]!r}; expected T, E, R, A, M, N, "
                            f"# or * lines")
        fields = line.split("\t")
        if len(fields) < 3 or any(f.strip() for f in fields[3:]):
            raise DataError(f"{where}: expected 'T<n><TAB><Type> <start> <end><TAB><text>', got {line!r}")
        ann_id, type_offsets, covered = fields[0], fields[1], fields[2]
        type_, _, offsets = type_offsets.partition(" ")
        try:
            fragments = [tuple(int(x) for x in f.split()) for f in offsets.split(";")]
            if not type_ or any(len(f) != 2 for f in fragments):
                raise ValueError
        except ValueError:
            raise DataError(f"{where}: {ann_id}: expected '<Type> <start> <end>[;<start> <end>...]', "
                            f"got {type_offsets!r}") from None
        for start, end in fragments:
            if not 0 <= start < end <= len(text):
                raise DataError(f"{where}: {ann_id}: offsets {start} {end} outside the text of "
                                f"{txt_path or 'the document'} ({len(text)} characters), expected "
                                f"0 <= start < end <= {len(text)}")
        actual = " ".join(text[s:e] for s, e in fragments)  # brat joins fragments with one space
        if actual != covered:
            raise DataError(f"{where}: {ann_id}: annotation text {covered!r} does not match the text at "
                            f"offsets {offsets!r}, which is {actual!r}")
        mentions.append(Mention(ann_id, type_, fragments, covered, lineno))
    return mentions


def sentence_spans(text: str, mode: str = "lines", protected=()) -> list[tuple[int, int]]:
    """Character spans of sentences.

    ``"lines"``: one sentence per non-empty line (MACCROBAT). ``"simple"``: lines further cut after
    ``.``/``?``/``!`` + whitespace before an upper-case letter or digit, never inside a ``protected``
    ``(start, end)`` span (the mentions), so no mention is cut in two.
    """
    spans = []
    for m in re.finditer(r"[^\n]+", text):
        if m.group().strip():
            spans.append(m.span())
    if mode == "lines":
        return spans
    if mode != "simple":
        raise ValueError(f"unknown sentence mode {mode!r}; expected 'lines' or 'simple'")
    inside = bytearray(len(text) + 1)
    for start, end in protected:
        inside[start + 1:end] = b"\x01" * (end - start - 1)
    out = []
    for line_start, line_end in spans:
        start = line_start
        for b in re.finditer(r"(?<=[.?!])\s+(?=[A-Z0-9(\[])", text[line_start:line_end]):
            cut = line_start + b.start()
            if not inside[cut]:
                out.append((start, cut))
                start = line_start + b.end()
        out.append((start, line_end))
    return out


def _cut_tokens(text, tokens, cuts):
    """Cut each token at every position of ``cuts`` (sorted) that falls strictly inside it."""
    out = []
    for token, (start, end) in tokens:
        i = bisect.bisect_right(cuts, start)
        inner = []
        while i < len(cuts) and cuts[i] < end:
            inner.append(cuts[i])
            i += 1
        bounds = [start, *inner, end]
        out += [(text[a:b], (a, b)) for a, b in zip(bounds, bounds[1:])]
    return out


def _inside_word(text, i) -> bool:
    """Whether position ``i`` falls between two word characters, i.e. strictly inside a ``\\w+`` token
    (punctuation tokens are one character and have no inside)."""
    return 0 < i < len(text) and WORD_PAIR.fullmatch(text, i - 1, i + 1) is not None


def overlap_pairs(spans) -> Counter:
    """Count overlapping pairs among ``(start, end, type)`` spans: ``nested``, ``identical``, ``crossing``.

    This is how the corpus READMEs count overlaps (MACCROBAT: 364 nested, 124 identical, 1 crossing).
    """
    counts = Counter()
    spans = sorted(spans)
    for i, (s1, e1, _) in enumerate(spans):
        for s2, e2, _ in spans[i + 1:]:
            if s2 >= e1:
                break
            counts[_relation((s1, e1), (s2, e2))] += 1
    return counts


def _relation(a, b) -> str:
    if a == b:
        return "identical"
    if (a[0] <= b[0] and b[1] <= a[1]) or (b[0] <= a[0] and a[1] <= b[1]):
        return "nested"
    return "crossing"


def _resolve_overlaps(candidates, policy):
    """Greedy choice of non-overlapping token spans; returns (kept, [(dropped, relation)])."""
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"unknown overlap policy {policy!r}; expected one of {', '.join(OVERLAP_POLICIES)}")
    sign = -1 if policy == "longest" else 1
    # candidates: (token_start, token_end, type, order); order = position in the .ann file
    ranked = sorted(candidates, key=lambda c: (sign * (c[1] - c[0]), c[0], c[3]))
    kept, dropped = [], []
    for c in ranked:
        blocker = next((k for k in kept if c[0] < k[1] and k[0] < c[1]), None)
        if blocker is None:
            kept.append(c)
        else:
            dropped.append((c, _relation(c[:2], blocker[:2])))
    return sorted(kept), dropped


def _mention_spans(mentions, discontinuous: str, count) -> list[tuple[int, int, str, int]]:
    """``(char start, char end, type, order)`` of each mention under the ``discontinuous`` policy
    (a fragmented mention as one span, its first fragment, or each fragment); ``count(group,
    reason, type)`` records each change."""
    spans = []
    for order, m in enumerate(mentions):
        if len(m.fragments) == 1 or discontinuous == "span":
            spans.append((m.fragments[0][0], m.fragments[-1][1], m.type, order))
            if len(m.fragments) > 1:
                count("changed", "discontinuous_merged", m.type)
        elif discontinuous == "first":
            spans.append((*m.fragments[0], m.type, order))
            count("changed", "discontinuous_first_fragment", m.type)
        else:
            spans += [(s, e, m.type, order) for s, e in m.fragments]
            count("changed", "fragments_split", m.type)
    return spans


def read_brat_document(txt_path, ann_path=None, *, doc_id: str | None = None, sentences: str = "lines",
                       overlap: str = "longest", discontinuous: str = "span",
                       inside_token: str = "expand") -> tuple[Document, dict]:
    """One brat document -> (:class:`Document` with IOB2 sentences, notes with per-type counts).

    ``notes = {"mentions": Counter, "kept": Counter, "dropped": {reason: Counter},
    "changed": {"discontinuous_merged" | "fragments_split" | "expanded": Counter}}``.
    """
    txt_path = Path(txt_path)
    ann_path = Path(ann_path) if ann_path else txt_path.with_suffix(".ann")
    if not ann_path.exists():
        raise DataError(f"{ann_path}: missing annotation file for {txt_path}; expected <id>.ann next to <id>.txt")
    if discontinuous not in DISCONTINUOUS_POLICIES:
        raise ValueError(f"unknown discontinuous policy {discontinuous!r}; expected {DISCONTINUOUS_POLICIES}")
    if inside_token not in INSIDE_TOKEN_POLICIES:
        raise ValueError(f"unknown inside_token policy {inside_token!r}; expected {INSIDE_TOKEN_POLICIES}")
    text = read_text(txt_path)
    if not text.strip():
        raise DataError(f"{txt_path}:1: empty document; expected text to annotate")
    doc_id = doc_id or txt_path.stem
    mentions = parse_ann(ann_path, text, txt_path)

    notes = {"mentions": Counter(m.type for m in mentions), "kept": Counter(),
             "dropped": {}, "changed": {}}

    def count(group, reason, type_):
        notes[group].setdefault(reason, Counter())[type_] += 1

    spans = _mention_spans(mentions, discontinuous, count)

    cuts = sorted({b for s in spans for b in s[:2] if _inside_word(text, b)}) if inside_token == "split" else []
    sentence_list = []
    for sent_start, sent_end in sentence_spans(text, sentences, [s[:2] for s in spans]):
        tokens = word_tokenize(text, sent_start, sent_end)
        if cuts:
            tokens = _cut_tokens(text, tokens, cuts)
        if tokens:
            sentence_list.append((sent_start, sent_end, tokens,
                                  [o[0] for _, o in tokens], [o[1] for _, o in tokens]))
    candidates = {k: [] for k in range(len(sentence_list))}
    starts = [s[0] for s in sentence_list]
    for start, end, type_, order in spans:
        k = bisect.bisect_right(starts, start) - 1
        if k < 0 or end > sentence_list[k][1]:
            # starts before the first sentence or ends in a later one: cannot be one tag run
            count("dropped", "crosses_sentence", type_)
            continue
        token_starts, token_ends = sentence_list[k][3], sentence_list[k][4]
        first = bisect.bisect_right(token_ends, start)  # first token ending after the start
        last = bisect.bisect_left(token_starts, end) - 1  # last token starting before the end
        if first > last:
            count("dropped", "no_token", type_)  # whitespace only: nothing to tag
            continue
        if inside_token == "split" and (_inside_word(text, start) or _inside_word(text, end)):
            count("changed", "split_token", type_)
        elif token_starts[first] < start or token_ends[last] > end:
            if inside_token == "drop":
                count("dropped", "inside_token", type_)
                continue
            count("changed", "expanded", type_)
        candidates[k].append((first, last + 1, type_, order))

    out = []
    for k, (_, _, tokens, _, _) in enumerate(sentence_list):
        kept, dropped = _resolve_overlaps(candidates[k], overlap)
        for c, relation in dropped:
            count("dropped", relation, c[2])
        for c in kept:
            notes["kept"][c[2]] += 1
        tags = tags_from_spans([c[:3] for c in kept], len(tokens))
        out.append(Sentence(tokens=[t for t, _ in tokens], tags=tags, doc_id=doc_id,
                            offsets=[o for _, o in tokens]))
    return Document(doc_id=doc_id, sentences=out, text=text), notes


def merge_notes(total: dict, notes: dict) -> dict:
    """Add one document's notes into ``total`` (same layout as :func:`read_brat_document`'s)."""
    for key in ("mentions", "kept"):
        total.setdefault(key, Counter()).update(notes[key])
    for group in ("dropped", "changed"):
        for reason, counts in notes[group].items():
            total.setdefault(group, {}).setdefault(reason, Counter()).update(counts)
    return total


def read_brat(directory, ids=None, *, split: str = "train", name: str | None = None, **policies) -> Corpus:
    """Every ``<id>.txt``/``<id>.ann`` pair in ``directory`` (or just ``ids``, in that order) as a Corpus.

    ``policies`` are :func:`read_brat_document`'s keyword arguments (sentences, overlap,
    discontinuous, inside_token). ``corpus.notes`` sums the per-document counts.
    """
    directory = Path(directory)
    if ids is None:
        ids = sorted(p.stem for p in directory.glob("*.txt"))
        if not ids:
            raise DataError(f"{directory}: no .txt files; expected brat <id>.txt + <id>.ann pairs")
        orphans = sorted(p.name for p in directory.glob("*.ann") if not p.with_suffix(".txt").exists())
        if orphans:  # an annotation without its text would otherwise be skipped silently
            raise DataError(f"{directory / orphans[0]}: annotation file without its text ({len(orphans)} such "
                            f".ann file(s) in {directory}); expected <id>.txt next to every <id>.ann")
    documents, notes = [], {"mentions": Counter(), "kept": Counter(), "dropped": {}, "changed": {}}
    for doc_id in ids:
        txt = directory / f"{doc_id}.txt"
        if not txt.exists():
            raise DataError(f"{txt}: missing text file for document {doc_id!r}")
        doc, doc_notes = read_brat_document(txt, doc_id=doc_id, **policies)
        documents.append(doc)
        merge_notes(notes, doc_notes)
    return Corpus(name=name or directory.name, split=split, documents=documents, notes=notes)
