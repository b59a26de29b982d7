"""``bertlab <command> ...``: one explicit table from command to the module that owns it.

Each module parses its own arguments (``main(argv)``), so commands stay next to the code they run
and importing the CLI stays cheap. What every command shares lives here: ``--version``, a quiet
exit when the reader of stdout goes away (``bertlab data stats maccrobat | head``), and one line
with exit status 130 on Ctrl-C (``bertlab train`` and ``experiment`` say where training stopped).
"""
from __future__ import annotations

import importlib
import os
import sys

from bertlab import __version__

COMMANDS = {
    # command: (module, function, one-line help)
    "data": ("bertlab.datasets.cli", "main", "list bundled corpora, print imbalance statistics"),
    "convert": ("bertlab.checkpoint", "convert_main", "pytorch_model.bin folder -> safetensors folder"),
    "train": ("bertlab.train.cli", "main", "train one model from a TOML config"),
    "experiment": ("bertlab.study.cli", "main", "run a study from experiments/NAME.toml"),
    "report": ("bertlab.report.cli", "main", "rebuild a study's report.md from its results.jsonl"),
    "plan": ("bertlab.plan", "main", "what a study's design can detect, from a pilot's variance"),
    "rescore": ("bertlab.selection", "rescore_main", "add newer test measurements to a study's finished runs"),
    "tradeoff": ("bertlab.tradeoff", "main", "accuracy vs training cost and inference speed across studies"),
    "predict": ("bertlab.predict", "main", "tag new text with a trained model"),
    "evaluate": ("bertlab.evaluate", "main", "re-score a saved model on a corpus, CoNLL file or brat folder"),
    "gradflow": ("bertlab.gradflow.cli", "main", "train with gradient-flow instruments on"),
    "bench": ("bertlab.bench", "main", "benchmarks against transformers / scikit-learn"),
}


def usage() -> str:
    lines = ["usage: bertlab [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines.append("\n`bertlab <command> --help` for a command's options.")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    """Dispatch ``argv`` (without the program name) to its command; returns the exit status."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"bertlab {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"bertlab: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    try:
        return getattr(importlib.import_module(module), func)(rest) or 0
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's status for SIGINT, not a traceback
        if "--debug" in rest or os.environ.get("BERTLAB_DEBUG", "0") not in ("", "0"):
            raise
        print(f"bertlab {cmd}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bertlab``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        try:
            return run(argv)
        finally:  # also on SystemExit (argparse's --help): a broken pipe shows up at this flush
            if sys.stdout is not None:  # None when started with stdout closed (`bertlab ... >&-`)
                sys.stdout.flush()
    except BrokenPipeError:
        # the reader (head, less) closed the pipe: stop quietly, and point stdout at /dev/null so
        # the interpreter's own flush at exit does not raise again (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
