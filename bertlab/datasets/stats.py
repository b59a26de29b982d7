"""Imbalance statistics of a corpus split: counts per type, shares, imbalance ratio, tokens per tag.

``format_stats`` prints them as Markdown tables, readable in a terminal and pasteable into docs.
"""
from __future__ import annotations

from collections import Counter

from bertlab.datasets.corpus import Corpus
from bertlab.datasets.tags import spans_from_tags


def corpus_stats(corpus: Corpus) -> dict:
    """Statistics of one split.

    Returns ``{"name", "split", "documents", "sentences", "tokens", "mentions": {type: n}`` (most
    frequent first), ``"total_mentions", "share": {type: fraction of mentions}, "imbalance_ratio"``
    (most / least frequent type present; ``None`` with no mentions), ``"tag_counts": {tag: tokens}``,
    ``"o_share"`` (fraction of tokens tagged O)``}``; for brat corpora also ``"annotated"`` (mentions
    per type before any overlap policy) and ``"dropped"`` (``{reason: {type: n}}``).
    """
    mentions, tags = Counter(), Counter()
    n_sentences = n_tokens = 0
    for s in corpus.sentences:
        n_sentences += 1
        n_tokens += len(s.tokens)
        tags.update(s.tags)
        mentions.update(t for _, _, t in spans_from_tags(s.tags))
    total = sum(mentions.values())
    ordered = dict(sorted(mentions.items(), key=lambda kv: (-kv[1], kv[0])))
    stats = {
        "name": corpus.name,
        "split": corpus.split,
        "documents": len(corpus.documents),
        "sentences": n_sentences,
        "tokens": n_tokens,
        "mentions": ordered,
        "total_mentions": total,
        "share": {t: n / total for t, n in ordered.items()},
        "imbalance_ratio": max(mentions.values()) / min(mentions.values()) if mentions else None,
        "tag_counts": dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))),
        "o_share": tags["O"] / n_tokens if n_tokens else 0.0,
    }
    if "mentions" in corpus.notes:
        stats["annotated"] = dict(sorted(corpus.notes["mentions"].items(), key=lambda kv: (-kv[1], kv[0])))
        stats["dropped"] = {reason: dict(sorted(c.items())) for reason, c in corpus.notes["dropped"].items()}
    return stats


def _table(header: list[str], rows: list[list], align: str) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_stats(all_stats: list[dict]) -> str:
    """Markdown tables for the splits of one corpus: a summary, mentions per type, tokens per tag."""
    splits = [s["split"] for s in all_stats]
    summary = [[s["split"], f"{s['documents']:,}", f"{s['sentences']:,}", f"{s['tokens']:,}",
                f"{s['total_mentions']:,}", len(s["mentions"]),
                f"{s['imbalance_ratio']:,.1f}x" if s["imbalance_ratio"] else "n/a", f"{s['o_share']:.1%}"]
               for s in all_stats]
    out = [f"## {all_stats[0]['name']}", "",
           _table(["split", "documents", "sentences", "tokens", "mentions", "types",
                   "imbalance max/min", "O share"], summary, "lrrrrrrr")]

    types = sorted({t for s in all_stats for t in (*s["mentions"], *s.get("annotated", {}))},
                   key=lambda t: (-sum(s["mentions"].get(t, 0) for s in all_stats), t))
    rows = [[t] + [f"{s['mentions'].get(t, 0):,} ({s['share'].get(t, 0):.2%})" for s in all_stats] for t in types]
    out += ["", "Mentions per type (share of the split's mentions):", "",
            _table(["type"] + splits, rows, "l" + "r" * len(splits))]

    tags = sorted({g for s in all_stats for g in s["tag_counts"]},
                  key=lambda g: (-sum(s["tag_counts"].get(g, 0) for s in all_stats), g))
    rows = [[g] + [f"{s['tag_counts'].get(g, 0):,}" for s in all_stats] for g in tags]
    out += ["", "Tokens per tag:", "", _table(["tag"] + splits, rows, "l" + "r" * len(splits))]

    if any(s.get("dropped") for s in all_stats):
        reasons = sorted({r for s in all_stats for r in s.get("dropped", {})})
        rows = [[r] + [f"{sum(s.get('dropped', {}).get(r, {}).values()):,}" for s in all_stats] for r in reasons]
        rows.append(["annotated (T lines)"] + [f"{sum(s['annotated'].values()):,}" for s in all_stats])
        out += ["", "Mentions dropped by the flattening policies (see docs/data.md):", "",
                _table(["reason"] + splits, rows, "l" + "r" * len(splits))]
    return "\n".join(out) + "\n"
