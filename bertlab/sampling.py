"""Sentence-level resampling (``[sampler] name = "resample"``, Wang & Wang 2022): ATL over a
training set in which each sentence appears ``sentence_repeats(tags, method)`` times, more often
the more (and the rarer) entity tokens it holds; docs/losses.md, "Sentence-level resampling".
The run folder's ``resampling.tsv`` lists every sentence's score and copies
(``resampling_table``). The other samplers, ATL and BTL, change the loss, not the data:
``bertlab.losses.objective`` and ``bertlab.losses.btl``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

RESAMPLING_METHODS = ("sC", "sCR", "sCRD", "nsCRD")


def entity_type_rarity(tag_sequences: Sequence[Sequence[str]]) -> dict[str, float]:
    """``r_i = -log2 f_i`` per entity type, ``f_i`` = the fraction of all training tokens (``O``
    included) that carry a tag of type i (its ``B-`` and ``I-`` tokens alike). Types in order of
    first appearance; tags are IOB2 strings (``"O"``, ``"B-Drug"``, ...)."""
    counts: dict[str, int] = {}
    total = 0
    for tags in tag_sequences:
        total += len(tags)
        for tag in tags:
            if tag != "O":
                typ = tag.split("-", 1)[1]
                counts[typ] = counts.get(typ, 0) + 1
    return {typ: -math.log2(n / total) for typ, n in counts.items()}


def resampling_scores(tag_sequences: Sequence[Sequence[str]], method: str) -> list[float]:
    """Each training sentence's resampling score f(s) (Wang & Wang 2022, NAACL), from its tags.

    With c_i(s) the tokens of entity type i in sentence s, r_i = ``entity_type_rarity`` and l_s
    the sentence's length in words:

        sC      f(s) = 1 + Σ_i c_i
        sCR     f(s) = sqrt(1 + Σ_i r_i c_i)
        sCRD    f(s) = (1 + Σ_i r_i c_i) / sqrt(l_s)
        nsCRD   f(s) = (1 + Σ_i r_i sqrt(c_i)) / sqrt(l_s)

    The sentence is then used ``ceil(f(s))`` times (``sentence_repeats``); a sentence without an
    entity is used once, whatever its score. These are the formulas of the authors' released code
    (``NER_Adaptive_Resampling.resamp``), which is where the choices the method names leave open
    are settled: c_i counts entity *tokens* (B- and I-), not mentions; f_i is over all tokens of
    the training set; the logarithm is base 2; the 1 is added before the root / division.
    """
    if method not in RESAMPLING_METHODS:
        raise ValueError(f"resampling method={method!r}, expected one of {RESAMPLING_METHODS}")
    rarity = entity_type_rarity(tag_sequences)
    scores = []
    for tags in tag_sequences:
        c: dict[str, int] = {}
        for tag in tags:
            if tag != "O":
                typ = tag.split("-", 1)[1]
                c[typ] = c.get(typ, 0) + 1
        if method == "sC":
            score = 1 + sum(c.values())
        elif method == "sCR":
            score = math.sqrt(1 + sum(rarity[t] * n for t, n in c.items()))
        elif method == "sCRD":
            score = (1 + sum(rarity[t] * n for t, n in c.items())) / math.sqrt(max(len(tags), 1))
        else:
            score = (1 + sum(rarity[t] * math.sqrt(n) for t, n in c.items())) / math.sqrt(max(len(tags), 1))
        scores.append(float(score))
    return scores


def sentence_repeats(tag_sequences: Sequence[Sequence[str]], method: str) -> list[int]:
    """How many times each training sentence is used per epoch: ``ceil(f(s))`` for a sentence
    with an entity (``resampling_scores``), 1 for one without. Deterministic: a function of the
    tags alone (the seed only orders the copies among the epoch's batches). The score is rounded
    to 9 decimals before the ceiling, so a float error (3.0000000000000004) cannot add a copy."""
    scores = resampling_scores(tag_sequences, method)
    return [math.ceil(round(score, 9)) if any(t != "O" for t in tags) else 1
            for tags, score in zip(tag_sequences, scores)]


RESAMPLING_FILE = "resampling.tsv"  # in a run folder: how often each training sentence is used (resampling_table)


def resampling_table(sentences: list, method: str) -> list[dict]:
    """One row per training sentence: ``doc_id``, ``sentence`` (its index in the document),
    ``words``, ``entity_tokens`` (per type), ``score`` (``resampling_scores``) and ``repeats``
    (``sentence_repeats``: the copies of it in every epoch)."""
    tags = [list(s.tags) for s in sentences]
    scores, repeats = resampling_scores(tags, method), sentence_repeats(tags, method)
    rows, position = [], {}
    for s, t, score, r in zip(sentences, tags, scores, repeats):
        position[s.doc_id] = position.get(s.doc_id, -1) + 1
        entity_tokens: dict[str, int] = {}
        for tag in t:
            if tag != "O":
                entity_tokens[tag.split("-", 1)[1]] = entity_tokens.get(tag.split("-", 1)[1], 0) + 1
        rows.append({"doc_id": s.doc_id, "sentence": position[s.doc_id], "words": len(t),
                     "entity_tokens": entity_tokens, "score": score, "repeats": r})
    return rows


def format_resampling_table(rows: list[dict], method: str) -> str:
    """``resampling.tsv``: a comment line naming the method and the totals, a header, one line per
    training sentence (``entity_tokens`` as ``Type=count`` pairs joined by ``;``)."""
    lines = [f"# sentence-level resampling, method {method} (Wang & Wang 2022): {len(rows)} sentences -> "
             f"{sum(r['repeats'] for r in rows)} per epoch",
             "doc_id\tsentence\twords\tentity_tokens\tscore\trepeats"]
    for r in rows:
        tokens = ";".join(f"{k}={v}" for k, v in r["entity_tokens"].items())
        lines.append(f"{r['doc_id']}\t{r['sentence']}\t{r['words']}\t{tokens}\t{r['score']:.6f}\t{r['repeats']}")
    return "\n".join(lines) + "\n"
