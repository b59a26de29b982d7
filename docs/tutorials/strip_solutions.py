"""Write student copies of the tutorial notebooks, with the exercises' solutions taken out.

    python docs/tutorials/strip_solutions.py --out DIR               # every NN_*.ipynb beside this file
    python docs/tutorials/strip_solutions.py --out DIR 01_losses_by_hand.ipynb ...

The notebooks are committed with their solutions filled in, so that they run (and are tested)
from top to bottom. An exercise is two code cells: one tagged ``solution`` that assigns the
answers to names starting with ``answer`` (``answer_ce = ...``), then one tagged ``check`` that
compares them with bertlab's own computation. In the student copy

- a solution cell keeps its leading comment lines (hints) and becomes one line per answer,
  ``answer_ce = ...  # your turn``; running the check below it then says "fill in your answer";
- solution and check cells lose their outputs (a check's output would give the answer away);
- every other cell, its outputs and figures included, stays as it is.

Standard library only (a notebook is JSON), so a lecturer needs nothing but Python to run it.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANSWER_PREFIX = "answer"


def source_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def answer_names(source: str, where: str) -> list[str]:
    """The names a solution cell assigns at top level that start with ``answer``, in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{where}: the solution cell is not valid Python ({e.msg}, line {e.lineno})") from None
    names: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id.startswith(ANSWER_PREFIX) and name.id not in names:
                    names.append(name.id)
    if not names:
        raise ValueError(f"{where}: a cell tagged 'solution' must assign a name starting with "
                         f"'{ANSWER_PREFIX}' (e.g. answer_ce = ...)")
    return names


def student_source(source: str, where: str) -> str:
    """The student's version of a solution cell: its leading comments, then ``answer_x = ...``."""
    hints = []
    for line in source.splitlines():
        if not line.lstrip().startswith("#"):
            break
        hints.append(line)
    return "\n".join(hints + [f"{name} = ...  # your turn" for name in answer_names(source, where)])


def strip_notebook(nb: dict, name: str = "notebook") -> tuple[dict, int]:
    """A copy of notebook ``nb`` (the parsed JSON) without solutions; returns it and how many
    solution cells were stripped."""
    out = json.loads(json.dumps(nb))
    stripped = 0
    for i, cell in enumerate(out["cells"]):
        cell_tags = tags(cell)
        if cell.get("cell_type") != "code" or not {"solution", "check"} & set(cell_tags):
            continue
        if "solution" in cell_tags:
            cell["source"] = student_source(source_text(cell), f"{name}, cell {i}")
            stripped += 1
        cell["outputs"] = []
        cell["execution_count"] = None
    return out, stripped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write student copies of the tutorial notebooks "
                                                 "(solutions replaced by `answer = ...  # your turn`).")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to strip (default: every NN_*.ipynb in docs/tutorials/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the student copies (created)")
    args = parser.parse_args(argv)
    # a bare name is looked up here too, so "01_losses_by_hand.ipynb" works from the repository root
    notebooks = [p if p.exists() or p.is_absolute() else HERE / p for p in args.notebooks] or sorted(
        HERE.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        parser.error("no notebooks found")
    for path in notebooks:
        if path.resolve().parent == args.out.resolve():
            parser.error(f"--out {args.out} is the folder of {path.name}: the copies would overwrite the originals")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in notebooks:
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
            student, stripped = strip_notebook(nb, path.name)
        except (OSError, json.JSONDecodeError, ValueError) as e:
            print(f"strip_solutions: {path}: {e}", file=sys.stderr)
            return 2
        target = args.out / path.name
        target.write_text(json.dumps(student, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{target}: {stripped} exercise(s) stripped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
