"""A study's folder on disk: where it is, what ``study.json`` says, and whether a run folder
still belongs to the study (its ``config.toml`` against the config the study gives now).

The layout (run folders, claim files, study.json, results.jsonl) is in bertlab.study's docstring;
``results.jsonl`` itself is bertlab.results'.
"""
from __future__ import annotations

import json
import os
import shlex
import tomllib
from pathlib import Path

from bertlab.files import write_text
from bertlab.results import read_json, toml_dumps, toml_value
from bertlab.study.spec import (FOLD_AXIS, NON_RESULT_KEYS, Run, Study, StudyError, axis_value, expand,
                                short_names)


def study_dir_for(name: str, scale: str, out: str | os.PathLike = "runs") -> Path:
    """``runs/NAME`` for the default scale, ``runs/NAME-SCALE`` otherwise (never mixed)."""
    return Path(out) / (name if scale == "default" else f"{name}-{scale}")


def snapshot_diff(rdir: Path, run: Run) -> list[str]:
    """The keys (``section.key``) that change a result on which the run folder's config.toml and
    the config the study gives now differ."""
    snap = rdir / "config.toml"
    if not snap.exists():
        return []
    old = flatten(tomllib.loads(snap.read_text(encoding="utf-8")))
    new = flatten(tomllib.loads(toml_dumps(run.config)))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in NON_RESULT_KEYS)


def _continues(rdir: Path, run: Run) -> bool:
    """The study changed nothing of the run but ``train.epochs`` and its checkpoint is there:
    ``bertlab.train`` continues it (``change_epochs``: where that is exactly the run the new config
    trains, e.g. a constant schedule without warmup) or says why it cannot."""
    return (rdir / "checkpoint.pt").exists() and snapshot_diff(rdir, run) == ["train.epochs"]


def finished(rdir: Path, run: Run) -> bool:
    """The run's metrics.json exists and no changed ``train.epochs`` asks to continue it."""
    return (rdir / "metrics.json").exists() and not _continues(rdir, run)


def check_snapshot(rdir: Path, run: Run, study: Study) -> None:
    """A run folder must come from the config the study gives now: resuming would mix two configs,
    and a finished run would silently stand for a study it was not trained in (e.g. after --set).
    The one change allowed is ``train.epochs`` with the run's checkpoint there (``_continues``)."""
    snap = rdir / "config.toml"
    diff = snapshot_diff(rdir, run)
    if not diff or _continues(rdir, run):
        return
    given = f"{study.path}" + "".join(f" --set {s}" for s in study.overrides)
    if (rdir / "metrics.json").exists():
        # more epochs continue a finished run from its checkpoint; [train] keep_checkpoint = false dropped it
        dropped = (" (more epochs continue a finished run from its checkpoint.pt, which this run deleted: "
                   "[train] keep_checkpoint = false)" if diff == ["train.epochs"] else "")
        raise StudyError(f"{snap}: this finished run was trained with a different config (differs in "
                         f"{', '.join(diff)}) than {given} gives now{dropped}; use --out DIR for a new study "
                         f"folder, or delete {rdir} to train it again")
    raise StudyError(f"{snap}: this unfinished run was started with a different config "
                     f"(differs in {', '.join(diff)}) than {given} gives now; delete "
                     f"{rdir} to restart it, or use --out for a new study folder")


def study_command(name, scale: str, overrides, only, experiments_dir) -> str:
    """The command that makes this study folder, for the report's "Made by" line (no --shard,
    --workers or --out: they change who trains the runs, not what they compute)."""
    args = ["bertlab", "experiment", str(name), "--scale", scale]
    if str(experiments_dir) != "experiments" and Path(str(name)).suffix != ".toml":
        args += ["--experiments", str(experiments_dir)]
    for item in overrides:
        args += ["--set", item]
    for item in only:
        args += ["--only", item]
    return shlex.join(args)


def study_description(study: Study) -> str:
    """The study file's description, plus a line on what this scale and --set change in the design
    (so a smoke report does not read as the default-scale study)."""
    changes = []
    for key, value in study.scale_overrides.items():
        items = value.items() if key == "sweep" else [(key, value)]
        changes += [f"{k} = {toml_value(v)}" for k, v in items]
    lines = [study.description.strip()] if study.description.strip() else []
    if changes:
        lines.append(f"At scale `{study.scale}` the study file's [scale.{study.scale}] changes this "
                     f"design: {', '.join(changes)}.")
    if study.overrides:
        lines.append(f"Changed on the command line: {', '.join('--set ' + s for s in study.overrides)}.")
    return "\n\n".join(lines)


def write_study_json(sdir: Path, study: Study, command: str, trains: bool = True) -> None:
    """``sdir/study.json``: the expanded study, and every distinct command that trained in it, in
    the order they last trained. A command that ``trains`` nothing (every run it selects has
    finished: re-reading a study file, publishing) is not added, so it cannot pose as the last
    command that made the results."""
    old = read_json(sdir / "study.json", {})
    commands = old.get("commands", [])
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise StudyError(f"{sdir / 'study.json'}: \"commands\" is not a list of command lines; the file is "
                         f"damaged: delete it and re-run the study (it is rewritten from the study file)")
    if trains or not commands:
        commands = [c for c in commands if c != command] + [command]
    write_json(sdir / "study.json", {
        "name": study.name, "scale": study.scale, "source": str(study.path),
        "description": study_description(study), "axes": {k: [axis_value(k, v) for v in vs]
                                                           for k, vs in study.axes.items()},
        "short_names": short_names(study.axes), "baseline": study.baseline,
        "decodes": study.decodes, "report": study.report, "gradflow": study.gradflow is not None,
        "runs": [r.run_id for r in expand(study)], "scale_overrides": study.scale_overrides,
        "overrides": study.overrides, "commands": commands,
        **({"folds": {"k": study.folds, "fold_seed": study.fold_seed, "axis": FOLD_AXIS}} if study.folds else {})})


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict as ``{"section.key": value}`` (an empty table stays one key, ``{}``)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_json(path: Path, obj) -> None:
    """A study or run folder's JSON file (study.json, run.json, timing.json, a direct baseline's
    metrics.json), indented, written atomically; NumPy numbers and arrays and paths as plain JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_plain_json) + "\n")


def _plain_json(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
