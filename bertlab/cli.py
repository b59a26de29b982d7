"""``bertlab <command> ...``: one explicit table from command to the module that owns it.

Each module parses its own arguments (``main(argv)``), so commands stay next to the code they run
and importing the CLI stays cheap.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # command: (module, function, one-line help)
    "data": ("bertlab.datasets.cli", "main", "list bundled corpora, print imbalance statistics"),
    "convert": ("bertlab.checkpoint", "convert_main", "pytorch_model.bin folder -> safetensors folder"),
    "train": ("bertlab.train", "main", "train one model from a TOML config"),
    "experiment": ("bertlab.experiment", "main", "run a study from experiments/NAME.toml"),
    "report": ("bertlab.report", "main", "rebuild a study's report.md from its results.jsonl"),
    "predict": ("bertlab.predict", "main", "tag new text with a trained model"),
    "evaluate": ("bertlab.predict", "evaluate_main", "re-score a saved model on a bundled corpus"),
    "gradflow": ("bertlab.gradflow", "main", "train with gradient-flow instruments on"),
    "bench": ("bertlab.bench", "main", "benchmarks against transformers / scikit-learn"),
}


def usage() -> str:
    lines = ["usage: bertlab <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines.append("\n`bertlab <command> --help` for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"bertlab: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    return getattr(importlib.import_module(module), func)(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
