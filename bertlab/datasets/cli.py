"""``bertlab data list`` and ``bertlab data stats NAME|FILE|DIR [--json]``: the bundled corpora, and
the imbalance of a bundled corpus or of one's own data (a CoNLL file or a brat folder)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertlab.datasets.bundled import CORPORA, load
from bertlab.datasets.prepare import read_corpus
from bertlab.datasets.stats import corpus_stats, format_stats


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bertlab data``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="bertlab data", description="The bundled corpora, and the statistics of "
                                                                      "one or of your own data.")
    sub = parser.add_subparsers(dest="command", metavar="{list,stats}")
    sub.add_parser("list", help="list the bundled corpora", description="List the bundled corpora.")
    stats = sub.add_parser("stats", help="per-split documents, sentences, tokens, mentions per type, "
                                         "share, imbalance ratio, tokens per tag",
                           description="Per split: documents, sentences, tokens, mentions per type, each "
                                       "type's share, the imbalance ratio and tokens per tag.")
    stats.add_argument("name", metavar="NAME|FILE|DIR",
                       help=f"a bundled corpus ({', '.join(CORPORA)}), a CoNLL file or a brat folder "
                            f"(<id>.txt + <id>.ann pairs), the last two counted whole")
    stats.add_argument("--split", action="append", choices=["train", "dev", "test"],
                       help="only this split of a bundled corpus (repeatable; default: all three)")
    stats.add_argument("--scheme", choices=("IOB1", "IOB2", "IOBES", "BILOU"),
                       help="tag scheme of a CoNLL file, converted to IOB2 (default: IOB2)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    brat = stats.add_argument_group(
        "brat flattening policies (maccrobat, jnlpba train, a brat folder; docs/data.md)",
        "How standoff mentions become one IOB2 tag per token; every mention a policy changes or drops "
        "is counted in the statistics.")
    brat.add_argument("--overlap", choices=["longest", "shortest"],
                      help="of two mentions sharing a token, keep the longest or the innermost (default: longest)")
    brat.add_argument("--discontinuous", choices=["span", "fragments", "first"],
                      help="a mention in several fragments: one span from first start to last end, each "
                           "fragment a mention, or the first fragment only (default: span)")
    brat.add_argument("--inside-token", choices=["expand", "split", "drop"],
                      help="a mention boundary inside a word: tag the whole word, cut the word there, or drop "
                           "the mention (default: expand for maccrobat, split for jnlpba train)")
    args = parser.parse_args(argv)

    if args.command is None:  # `bertlab data` alone: what can it do?
        parser.print_help()
        return 0
    if args.command == "list":
        width = max(map(len, CORPORA))
        for name, description in CORPORA.items():
            print(f"{name:<{width}}  {description}")
        return 0

    options = {k: v for k, v in (("overlap", args.overlap), ("discontinuous", args.discontinuous),
                                 ("inside_token", args.inside_token)) if v}
    if args.name not in CORPORA:
        return own_data_stats(parser, args, options)
    if args.scheme:
        parser.error(f"--scheme applies to CoNLL files; {args.name} is a bundled corpus")
    if options and args.name not in ("maccrobat", "jnlpba"):
        parser.error(f"{args.name} is a CoNLL corpus; brat policies apply to maccrobat, jnlpba and brat folders")
    all_stats = []
    for split in args.split or ["train", "dev", "test"]:
        split_options = options if args.name == "maccrobat" or split == "train" else {}
        all_stats.append(corpus_stats(load(args.name, split, **split_options)))
    print(json.dumps(all_stats, indent=1) if args.json else format_stats(all_stats))
    return 0


def own_data_stats(parser, args, options: dict) -> int:
    """``bertlab data stats FILE|DIR``: the statistics of a CoNLL file or a brat folder, counted whole
    (one column, ``all``), as a bundled corpus's split is counted. Unreadable data is one line naming
    the file and line or annotation id, exit status 2."""
    from bertlab.errors import fail
    path = Path(args.name)
    if not path.exists():
        parser.error(f"{args.name}: no such file or folder, nor a bundled corpus ({', '.join(CORPORA)})")
    if args.split:
        parser.error(f"--split applies to bundled corpora; {args.name} is counted whole")
    if path.is_dir() and args.scheme:
        parser.error(f"--scheme applies to CoNLL files; {args.name} is a brat folder")
    try:
        stats = corpus_stats(read_corpus(path, "all", scheme=args.scheme or "IOB2", **options))
    except Exception as e:  # one line naming the file and line or annotation id (bertlab.errors)
        return fail("data", e, also=(ValueError,))
    print(json.dumps([stats], indent=1) if args.json else format_stats([stats]))
    return 0
