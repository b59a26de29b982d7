"""``bertlab report``: the command line (``main``), publishing a study folder as committed under
docs/results (``publish``), and the hints an error gets (the study's other scales, its committed
result)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bertlab.errors import fail
from bertlab.report.build import build_report

# what a finished run folder keeps when published: everything but what only resuming and serving
# need (the checkpoint, the best models, dev predictions, claims, temp files) and gradflow.jsonl (the
# same rows as gradflow.csv, which the report reads); test predictions stay, the report's intervals
# and document-level tests are computed from them
_UNPUBLISHED_FILES = ("checkpoint", "claim-", "predictions_dev_", ".", "gradflow.jsonl")
_UNPUBLISHED_DIRS = ("best",)


def publish(study_dir: str | os.PathLike, dest: str | os.PathLike) -> tuple[Path, list[str]]:
    """Copy the finished runs of ``study_dir`` (a folder ``bertlab experiment`` writes) to ``dest``
    without their checkpoints, best models, dev predictions and claims, with ``study.json``; then
    rewrite ``dest``'s results.jsonl from its run folders and build its report there. Run folders
    already in ``dest`` stay (publishing a study in parts, e.g. across sessions, adds to it); a run
    still training in ``study_dir`` (no metrics.json) is not copied. Each run folder is written
    whole beside its place and swapped in (``bertlab.files.write_folder``), so an interrupted
    publish (a full disk, Ctrl-C) leaves each run folder the old one or the new one, never files of
    two runs in one folder; an OSError names the file it was writing. Returns ``(report path, run
    ids copied)``."""
    from bertlab.files import write_bytes, write_folder
    from bertlab.results import write_results
    src, dest = Path(study_dir), Path(dest)
    if not (src / "study.json").exists():
        raise FileNotFoundError(f"{src / 'study.json'}: not found; is {src} a study folder made by "
                                f"`bertlab experiment`?")
    if src.resolve() == dest.resolve():
        raise ValueError(f"--publish {dest}: the same folder as the study; give another one")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for rdir in sorted(p for p in src.iterdir() if p.is_dir() and (p / "metrics.json").exists()):
        files = [path.relative_to(rdir) for path in sorted(rdir.rglob("*")) if path.is_file()]
        files = [rel for rel in files if not (rel.parts[0].startswith(_UNPUBLISHED_DIRS)
                                              or any(part.startswith(_UNPUBLISHED_FILES) for part in rel.parts))]

        def write(tmp: Path, rdir=rdir, files=files) -> None:
            for rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    write_bytes(tmp / rel, (rdir / rel).read_bytes())
                except OSError as e:  # name the file as it will be, not the temp folder's copy
                    raise OSError(e.errno, e.strerror or str(e), str(dest / rdir.name / rel)) from e
        write_folder(dest / rdir.name, write)
        copied.append(rdir.name)
    write_bytes(dest / "study.json", (src / "study.json").read_bytes())
    write_results(dest)
    return build_report(dest), copied


def main(argv: list[str] | None = None) -> int:
    """``bertlab report NAME [--out runs] [--publish DEST]``: rebuild runs/NAME/report.md from its
    results, or publish the study to DEST and build the report there."""
    ap = argparse.ArgumentParser(prog="bertlab report", description=(
        "Rebuild a study's report.md, report.json and figures from its results.jsonl and prediction "
        "files; trains nothing (docs/experiments.md). A finished run (metrics.json) that has no row in "
        "results.jsonl gets one first: the file is rebuilt from the run folders."))
    ap.add_argument("name", help="a study folder under --runs (e.g. btl_focal, btl_focal-smoke) or a path "
                                 "to one (e.g. docs/results/btl_focal)")
    ap.add_argument("--runs", "--out", dest="out", default="runs", metavar="DIR",
                    help="the folder that holds study folders, where NAME is looked up (default runs/; "
                         "--out is the old name)")
    ap.add_argument("--publish", metavar="DEST", help=(
        "copy the study's finished runs to DEST without checkpoints, best models, dev predictions "
        "and claims (what docs/results/NAME commits), keep runs already there, and build the report in "
        "DEST; re-run it as more runs finish"))
    args = ap.parse_args(argv)
    folder = Path(args.name) if Path(args.name).is_dir() else Path(args.out) / args.name
    try:
        if args.publish:
            path, copied = publish(folder, args.publish)
            print(f"published {len(copied)} finished run(s) of {folder} to {args.publish}")
            print(path)
            return 0
        if (folder / "study.json").exists():
            from bertlab.results import complete_results
            missing = complete_results(folder)
            if missing:
                print(f"{folder / 'results.jsonl'}: {len(missing)} finished run(s) had no row ({missing[0]}"
                      f"{', ...' if len(missing) > 1 else ''}); rebuilt from the run folders", file=sys.stderr)
        print(build_report(folder))
    except Exception as e:  # OSError: also a full or read-only disk, named by its file
        hint = ""
        committed = committed_results(args.name)
        scaled = scale_folders(args.out, args.name)
        if isinstance(e, FileNotFoundError) and not (folder / "study.json").exists() and scaled:
            # runs/NAME is the default scale's folder; a smoke run wrote runs/NAME-smoke
            hint = (f" Other scales of this study are in {', '.join(str(f) + '/' for f in scaled)}; e.g. "
                    f"`bertlab report {scaled[0].name}` (`make report NAME={scaled[0].name}`).")
        elif isinstance(e, FileNotFoundError) and not (folder / "study.json").exists() and committed:
            hint = f" The committed result is in {committed}/; rebuild it with `bertlab report {committed}`."
        return fail("report", e, also=(ValueError,), hint=hint)
    return 0


def scale_folders(runs: str | Path, name: str) -> list[Path]:
    """The study folders ``runs/NAME-SCALE`` (e.g. ``btl_focal-smoke``) of a study name: those whose
    study.json names that study."""
    if not name or Path(name).name != name:  # a path, not a study name
        return []
    found = []
    for path in sorted(Path(runs).glob(f"{name}-*/study.json")):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("name") == name:
                found.append(path.parent)
        except (OSError, ValueError):
            continue  # a folder being written, or not a study's: no hint from it
    return found


def committed_results(name: str) -> str | None:
    """The committed result folder ``docs/results/NAME`` of this checkout, as a path to type (relative
    to the working directory when it is below it), or ``None`` when there is none."""
    if not name or Path(name).name != name:  # a path, not a study name
        return None
    folder = Path(__file__).resolve().parents[2] / "docs" / "results" / name
    if not (folder / "study.json").exists():
        return None
    try:
        return str(folder.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)
