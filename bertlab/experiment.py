"""Studies: one TOML file -> many training runs -> ``results.jsonl`` -> ``report.md``.

A study (``experiments/NAME.toml``) is a base training config plus sweep axes over its dotted
keys::

    [study]
    name = "btl_focal"
    baseline = { "sampler.name" = "atl", "loss.name" = "ce", decode = "argmax" }

    [base.data]                      # a TrainConfig, section by section (docs/architecture.md)
    name = "maccrobat"
    [base.model]
    builtin = "minilm"

    [sweep]                          # the cartesian product of these lists is the set of runs
    "sampler.name" = ["atl", "btl"]
    "loss.name" = ["ce", "weighted_ce", "focal"]
    "train.seed" = [0, 1, 2]         # seeds pair runs across variants for the paired tests

    [scale.smoke]                    # dotted-key overrides of [base] per scale;
    "data.max_documents" = 4         # [scale.smoke.sweep] may replace whole axes
    [report]                         # options for bertlab.report

Every run is trained once; each decode in ``eval.decode`` (argmax, knn) scores that same model,
so decode is an axis of *variants* (what the report compares) but not of *runs* (what is trained).

Layout of ``runs/NAME/`` (``runs/NAME-SCALE/`` for a scale other than ``default``)::

    study.json                       the expanded study: axes, baseline, report options, scale
    results.jsonl                    one line per finished (run, decode); rebuilt from the folders
    report.md, figures/              bertlab.report
    <run_id>/                        e.g. sampler=btl__loss=focal__seed=1
        config.toml                  the TrainConfig this run was trained with
        run.json                     axis values, environment, train mention counts
        metrics.json, log.jsonl, predictions_<split>_<decode>.jsonl, best/   (bertlab.train)
        timing.json                  wall time of this process's part of the run

A run is finished iff its ``metrics.json`` exists. Re-running skips finished runs and resumes
interrupted ones from their checkpoint (``train(..., resume=True)``). ``results.jsonl`` is a pure
function of the finished run folders, rewritten atomically after every run, so it can never hold
a duplicate or miss a finished run.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bertlab.files import write_text

SCALES = ("smoke", "default", "full")
STUDY_KEYS = {"study", "base", "sweep", "scale", "report", "models", "gradflow"}
# axis key -> short name used in run ids and tables; anything else: its last dotted component
SHORT_NAMES = {"sampler.name": "sampler", "loss.name": "loss", "train.seed": "seed",
               "optim.lr": "lr", "sampler.batch_size": "bs", "data.name": "data",
               "model.head": "head", "loss.gamma": "gamma", "train.epochs": "epochs"}
# where to get checkpoints that are not bundled, for the "missing checkpoint" message
HUB_HINTS = {"bio_clinicalbert": "emilyalsentzer/Bio_ClinicalBERT",
             "bert_base": "google-bert/bert-base-uncased",
             "distilbert": "distilbert/distilbert-base-uncased",
             "tinybert": "huawei-noah/TinyBERT_General_4L_312D"}
# keys of a model table that describe it for the runner, not for TrainConfig
# (``decode`` sets [eval] decode for that model, e.g. ["viterbi"] for a CRF head)
MODEL_META = ("name", "hub", "decode")
# sub-tables a [models.NAME] table may hold: that model's own training recipe
RECIPE_SECTIONS = ("data", "loss", "sampler", "optim", "train", "eval")
# sections that can be swept as a list of tables, e.g. loss = [{name="ce"}, {name="focal", gamma=1.0}]
# (the model table replaces [model]; any other merges into its section; ``label`` names the run)
TABLE_AXES = ("model", "data", "loss", "sampler", "optim", "train", "eval")
# classic taggers that bertlab.baselines fits directly (no training loop); they decode by Viterbi
DIRECT_BASELINES = ("hmm", "crf")


class StudyError(ValueError):
    """A study file is wrong: the message names the file and the key."""


# ---- reading a study ---------------------------------------------------------------------

@dataclass
class Study:
    """A parsed study file at one scale. ``axes`` maps dotted key -> list of values (the model
    axis, key ``"model"``, holds model tables); ``base`` is the TrainConfig as a nested dict."""
    name: str
    path: Path
    scale: str
    description: str
    base: dict
    axes: dict
    baseline: dict
    report: dict = field(default_factory=dict)
    gradflow: dict | None = None

    @property
    def decodes(self) -> list[str]:
        """Every decode some run is scored with, in order ([base.eval] first, then per model)."""
        out = list(self.base.get("eval", {}).get("decode", ["argmax"]))
        for m in self.axes.get("model", []):
            own = ["viterbi"] if m.get("arch") in DIRECT_BASELINES else m.get("decode", [])
            out += [d for d in own if d not in out]
        return out


@dataclass
class Run:
    """One training run of a study: its id (folder name), axis values and full config dict."""
    run_id: str
    axes: dict
    config: dict


def study_path(name: str | os.PathLike, experiments_dir: str | os.PathLike = "experiments") -> Path:
    """``NAME`` -> ``experiments/NAME.toml`` (a path to a .toml file is used as is)."""
    p = Path(name)
    if p.suffix == ".toml":
        if not p.exists():
            raise StudyError(f"{p}: study file not found")
        return p
    p = Path(experiments_dir) / f"{name}.toml"
    if not p.exists():
        have = sorted(q.stem for q in Path(experiments_dir).glob("*.toml")
                      if "\n[study]" in "\n" + q.read_text(encoding="utf-8"))
        raise StudyError(f"{p}: no such study; available: {', '.join(have) or '(none)'}")
    return p


def load_study(name: str | os.PathLike, scale: str = "default", overrides: list[str] = (),
               experiments_dir: str | os.PathLike = "experiments") -> Study:
    """Read ``experiments/NAME.toml`` at ``scale``, apply ``--set key=value`` ``overrides``
    (dotted keys into [base]; ``models.NAME.key=value`` into [models]) and check its shape."""
    path = study_path(name, experiments_dir)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path}: not valid TOML ({e})") from None
    where = str(path)
    unknown = set(raw) - STUDY_KEYS
    if unknown and "study" not in raw and "base" not in raw:
        raise StudyError(f"{where}: this is a training config, not a study (no [study] or [base]); "
                         f"run it with `bertlab train --config {where}`")
    if unknown:
        raise StudyError(f"{where}: unknown section(s) {sorted(unknown)}; expected {sorted(STUDY_KEYS)}")
    if scale not in SCALES:
        raise StudyError(f"unknown scale {scale!r}; expected one of {SCALES}")
    head = raw.get("study", {})
    study_name = head.get("name", path.stem)
    base = copy.deepcopy(raw.get("base", {}))
    if not isinstance(base, dict) or not base:
        raise StudyError(f"{where}: [base] is missing; it holds the TrainConfig sections "
                         f"([base.data], [base.model], ...)")
    models = copy.deepcopy(raw.get("models", {}))
    axes = {k: list(v) if isinstance(v, list) else v for k, v in raw.get("sweep", {}).items()}

    scales = raw.get("scale", {})
    for s in scales:
        if s not in SCALES:
            raise StudyError(f"{where}: [scale.{s}]: unknown scale; expected one of {SCALES}")
    for key, value in scales.get(scale, {}).items():
        if key == "sweep":
            for axis, values in value.items():
                axes[axis] = values
        else:
            _set_dotted(base, key, value, f"{where}: [scale.{scale}] {key!r}")
    for item in overrides:
        key, value = _parse_set(item)
        if key.startswith("models."):
            _set_dotted(models, key[len("models."):], value, f"--set {item}")
        elif key in axes:  # --set on a swept key pins the axis to one value
            axes[key] = [value]
        else:
            _set_dotted(base, key, value, f"--set {item}")

    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}: [sweep] {axis!r} must be a non-empty list of values")
        if axis == "model":
            axes[axis] = [_model_table(v, models, where) for v in values]
        elif "." not in axis:
            if not all(isinstance(v, dict) for v in values):
                raise StudyError(f"{where}: [sweep] {axis!r}: axes are dotted TrainConfig keys "
                                 f"(section.key, e.g. \"loss.name\"), a section ({', '.join(TABLE_AXES)}) "
                                 f"swept as a list of tables, or a named bundle of dotted keys "
                                 f"(setting = [{{label = \"a\", \"loss.name\" = \"ce\"}}, ...])")
            for v in values:
                if "label" not in v and "name" not in v:
                    raise StudyError(f"{where}: [sweep] {axis!r}: each table needs a name or label "
                                     f"(it names the run), got {v!r}")
                if axis not in TABLE_AXES and any("." not in k for k in v if k != "label"):
                    raise StudyError(f"{where}: [sweep] {axis!r}: a bundle axis holds dotted keys "
                                     f"(\"section.key\") and a label, got {v!r}")
        if axis == "eval.decode":
            raise StudyError(f"{where}: [sweep] 'eval.decode' is not a training axis: list the "
                             f"decodes in [base.eval] decode = [...]; every run is scored with each")
    # seeds last: a run id reads as the variant, then the seed
    axes = {k: v for k, v in axes.items() if k != "train.seed"} | (
        {"train.seed": axes["train.seed"]} if "train.seed" in axes else {})

    base.setdefault("eval", {}).setdefault("decode", ["argmax"])
    decodes = base["eval"]["decode"]
    if isinstance(decodes, str):
        base["eval"]["decode"] = decodes = [decodes]
    baseline = dict(head.get("baseline", {}))
    for key, value in baseline.items():
        if key == "decode":
            if value not in decodes + [d for m in axes.get("model", []) for d in m.get("decode", [])]:
                raise StudyError(f"{where}: [study] baseline decode={value!r} is not in "
                                 f"[base.eval] decode = {decodes}")
        elif key not in axes:
            raise StudyError(f"{where}: [study] baseline key {key!r} is not a [sweep] axis "
                             f"(axes: {', '.join(axes) or 'none'})")
        elif key == "model":
            if value not in [m["name"] for m in axes["model"]]:
                raise StudyError(f"{where}: [study] baseline model={value!r} is not a swept model")
        elif value not in [axis_value(key, v) for v in axes[key]]:
            raise StudyError(f"{where}: [study] baseline {key}={value!r} is not among the swept "
                             f"values {axes[key]}")
    return Study(name=study_name, path=path, scale=scale, description=head.get("description", ""),
                 base=base, axes=axes, baseline=baseline, report=dict(raw.get("report", {})),
                 gradflow=raw.get("gradflow"))


def _model_table(value, models: dict, where: str) -> dict:
    """A model axis entry -> a model table with a ``name``: a string names a [models] table."""
    if isinstance(value, str):
        if value not in models:
            raise StudyError(f"{where}: [sweep] model {value!r} is not defined in [models] "
                             f"(defined: {', '.join(models) or 'none'})")
        table = dict(models[value])
        table.setdefault("name", value)
        return table
    if isinstance(value, dict):
        if "name" not in value:
            raise StudyError(f"{where}: [sweep] model tables need a name (e.g. name = \"minilm\")")
        return dict(value)
    raise StudyError(f"{where}: [sweep] model entries are names from [models] or tables, not {value!r}")


def _parse_set(item: str) -> tuple[str, object]:
    """``key=value`` with the value parsed as TOML (bare words are strings)."""
    if "=" not in item:
        raise StudyError(f"--set {item!r}: expected key=value (e.g. train.epochs=2)")
    key, text = (s.strip() for s in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def _set_dotted(d: dict, key: str, value, where: str) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise StudyError(f"{where}: {p!r} is a value, not a section")
        d = nxt
    d[parts[-1]] = value


# ---- expanding a study into runs -----------------------------------------------------------

def short_names(axes) -> dict[str, str]:
    """Axis key -> the short name used in run ids and tables (unique within the study)."""
    names = {k: SHORT_NAMES.get(k, k.rsplit(".", 1)[-1]) for k in axes}
    clashes = {n for n in names.values() if list(names.values()).count(n) > 1}
    return {k: (k.replace(".", "-") if n in clashes else n) for k, n in names.items()}


def value_slug(value) -> str:
    """A file-name-safe spelling of an axis value: ``5e-05``, ``focal``, ``True``."""
    if isinstance(value, dict):
        value = axis_value("", value)
    if isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


def axis_value(key: str, value):
    """The value stored in results for an axis (a table is stored by its label or name)."""
    if isinstance(value, dict):
        return value.get("label", value.get("name"))
    return value


def expand(study: Study) -> list[Run]:
    """The runs of a study: the cartesian product of its axes, in file order (seed fastest).

    A model without random state (the HMM; the feature CRF fitted by full-batch L-BFGS from zero
    weights) is one run, at the first seed: more seeds would be identical copies."""
    keys = list(study.axes)
    names = short_names(keys)
    first_seed = study.axes["train.seed"][0] if "train.seed" in study.axes else None
    runs = []
    for combo in itertools.product(*(study.axes[k] for k in keys)):
        chosen = dict(zip(keys, combo))
        model = chosen.get("model", {})
        deterministic = model.get("arch") == "hmm" or (
            model.get("arch") == "crf" and model.get("overrides", {}).get("optimizer", "lbfgs") == "lbfgs")
        if deterministic and chosen.get("train.seed", first_seed) != first_seed:
            continue
        cfg = copy.deepcopy(study.base)
        axes = {}
        for key, value in zip(keys, combo):
            axes[key] = axis_value(key, value)
            if key == "model":
                table = {k: v for k, v in value.items() if k not in MODEL_META and k not in RECIPE_SECTIONS}
                # the model table replaces the base one, so builtin/path/preset never mix
                cfg["model"] = copy.deepcopy(table)
                if value.get("arch") in DIRECT_BASELINES:
                    if list(value.get("decode", ["viterbi"])) != ["viterbi"]:
                        raise StudyError(f"{study.path}: model {value.get('name', value['arch'])!r}: decode = "
                                         f"{list(value['decode'])}, but the HMM and feature CRF decode with "
                                         f"Viterbi only (decode = [\"viterbi\"])")
                    cfg.setdefault("eval", {})["decode"] = ["viterbi"]
                elif "decode" in value:
                    cfg.setdefault("eval", {})["decode"] = list(value["decode"])
                # a model's own training recipe (e.g. a BiLSTM's lr and epochs) updates the base
                for section in RECIPE_SECTIONS:
                    if isinstance(value.get(section), dict):
                        cfg.setdefault(section, {}).update(copy.deepcopy(value[section]))
            elif isinstance(value, dict) and key in TABLE_AXES:
                cfg.setdefault(key, {}).update({k: v for k, v in value.items() if k != "label"})
            elif isinstance(value, dict):  # a bundle: several dotted keys that vary together
                for k, v in value.items():
                    if k != "label":
                        _set_dotted(cfg, k, v, f"{study.path}: [sweep] {key!r}")
            else:
                _set_dotted(cfg, key, value, f"{study.path}: [sweep] {key!r}")
        run_id = "__".join(f"{names[k]}={value_slug(v)}" for k, v in zip(keys, combo)) or "run"
        runs.append(Run(run_id, axes, cfg))
    if len({r.run_id for r in runs}) != len(runs):
        raise StudyError(f"{study.path}: two runs got the same id; make the swept values distinct")
    return runs


def select(runs: list[Run], only: list[str], study: Study) -> list[Run]:
    """Keep the runs matching every ``--only key=value`` (key: dotted axis key or short name)."""
    names = short_names(study.axes)
    by_name = {n: k for k, n in names.items()}
    for item in only:
        if "=" not in item:
            raise StudyError(f"--only {item!r}: expected key=value (e.g. sampler=btl)")
        key, want = (s.strip() for s in item.split("=", 1))
        key = by_name.get(key, key)
        if key not in study.axes:
            raise StudyError(f"--only {item!r}: {key!r} is not an axis of {study.path} "
                             f"(axes: {', '.join(names.values())})")
        runs = [r for r in runs if value_slug(r.axes[key]) == want or str(r.axes[key]) == want]
    return runs


# ---- checks before any training -------------------------------------------------------------

def check_models(study: Study, runs: list[Run]) -> None:
    """Every checkpoint the runs need exists, or one error says how to get it (before training)."""
    seen = set()
    for run in runs:
        model = run.config.get("model", {})
        key = json.dumps(model, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        name = run.axes.get("model", model.get("builtin") or model.get("path") or model.get("preset"))
        if "builtin" in model:
            from bertlab.checkpoint import builtin_path
            try:
                builtin_path(model["builtin"])
            except (ValueError, ModuleNotFoundError) as e:
                raise StudyError(f"{study.path}: model {name!r}: {e}") from None
        elif "path" in model:
            folder = Path(os.path.expanduser(str(model["path"])))
            if not (folder / "config.json").exists():
                table = next((m for m in study.axes.get("model", []) if m["name"] == name), {})
                hub = table.get("hub") or HUB_HINTS.get(str(name).lower(), "<org>/<model>")
                target = (f"--set models.{name}.path=DIR" if "model" in study.axes
                          else "--set model.path=DIR")
                raise StudyError(
                    f"{study.path}: model {name!r}: checkpoint folder {folder} not found "
                    f"(no config.json). Get it with `huggingface-cli download {hub} --local-dir "
                    f"{folder}`, or point the study at your copy: `python -m bertlab experiment "
                    f"{study.name} {target}`")


def build_train_config(config: dict, source: str):
    """A nested config dict -> a validated ``bertlab.train.TrainConfig``; errors name ``source``
    and ``[section] key``. ``bertlab.train`` is the one validator of training configs, so a study
    accepts exactly what ``bertlab train`` accepts."""
    from bertlab.losses import build_loss
    from bertlab.train import ConfigError, config_from_dict
    try:
        cfg = config_from_dict(copy.deepcopy(config), source)
    except ConfigError as e:
        raise StudyError(str(e)) from None
    try:  # the loss checks its own field combinations (e.g. gamma only for focal): check them now
        build_loss(cfg.loss, [1, 1, 1])
    except ValueError as e:
        raise StudyError(f"{source}: [loss] {e}") from None
    return cfg


# ---- running ----------------------------------------------------------------------------------

def study_dir_for(name: str, scale: str, out: str | os.PathLike = "runs") -> Path:
    """``runs/NAME`` for the default scale, ``runs/NAME-SCALE`` otherwise (never mixed)."""
    return Path(out) / (name if scale == "default" else f"{name}-{scale}")


def run_experiment(name: str | os.PathLike, scale: str = "default", out: str | os.PathLike = "runs",
                   only: list[str] = (), overrides: list[str] = (), callbacks=(),
                   experiments_dir: str | os.PathLike = "experiments", report: bool = True,
                   progress=print) -> Path:
    """Run (or resume) a study; returns its folder. See the module docstring for the layout.

    ``callbacks`` are passed to every ``train`` call (in addition to the study's own, e.g. the
    gradient-flow recorder). ``report=False`` skips building report.md at the end."""
    study = load_study(name, scale, overrides, experiments_dir)
    runs = select(expand(study), list(only), study)
    if not runs:
        raise StudyError(f"{study.path}: no run matches --only {' '.join(only)}")
    check_models(study, runs)
    direct = [r for r in runs if r.config.get("model", {}).get("arch") in DIRECT_BASELINES]
    configs = {r.run_id: (None if r in direct else
                          build_train_config(r.config, f"{study.path} (run {r.run_id})")) for r in runs}

    sdir = study_dir_for(study.name, scale, out)
    sdir.mkdir(parents=True, exist_ok=True)
    _write_json(sdir / "study.json", {
        "name": study.name, "scale": scale, "source": str(study.path),
        "description": study.description, "axes": {k: [axis_value(k, v) for v in vs]
                                                    for k, vs in study.axes.items()},
        "short_names": short_names(study.axes), "baseline": study.baseline,
        "decodes": study.decodes, "report": study.report, "gradflow": study.gradflow is not None,
        "runs": [r.run_id for r in expand(study)]})
    env = environment()
    spent: list[float] = []  # wall seconds of the runs trained by this invocation, for the ETA
    for i, run in enumerate(runs, 1):
        rdir = sdir / run.run_id
        if (rdir / "metrics.json").exists():
            progress(f"[{i}/{len(runs)}] {run.run_id}: finished, skipped")
            continue
        if spent:
            left = sum(1 for r in runs[i - 1:] if not (sdir / r.run_id / "metrics.json").exists())
            eta = sum(spent) / len(spent) * left
            progress(f"    {len(spent)} run(s) took {sum(spent) / 60:.1f} min; about {eta / 60:.0f} min "
                     f"left for {left} run(s)")
        _check_snapshot(rdir, run, study)
        rdir.mkdir(parents=True, exist_ok=True)
        if not (rdir / "config.toml").exists():
            write_text(rdir / "config.toml", toml_dumps(run.config))
        _write_json(rdir / "run.json", {"study": study.name, "scale": scale, "run_id": run.run_id,
                                         "axes": run.axes, "env": env})
        resumed = any(rdir.glob("checkpoint*"))
        progress(f"[{i}/{len(runs)}] {run.run_id}: {'resuming' if resumed else 'training'}")
        t0 = time.perf_counter()
        try:
            if run in direct:
                _fit_direct_baseline(run.config, rdir)
            else:
                cbs = list(callbacks)
                recorder = _gradflow_recorder(study, rdir) if study.gradflow is not None else None
                if recorder is not None:
                    cbs.append(recorder)
                from bertlab.train import train
                train(configs[run.run_id], rdir, callbacks=cbs, resume=True)
                if recorder is not None:
                    _finish_gradflow(recorder, run.run_id)
        finally:  # an interrupted session's time counts too: wall time is the sum of sessions
            spent.append(time.perf_counter() - t0)
            timing = _read_json(rdir / "timing.json", {"wall_seconds": 0.0, "sessions": 0})
            _write_json(rdir / "timing.json", {
                "wall_seconds": timing["wall_seconds"] + time.perf_counter() - t0,
                "sessions": timing["sessions"] + 1, "resumed": resumed or timing.get("resumed", False)})
        if not (rdir / "metrics.json").exists():
            raise RuntimeError(f"{rdir}: training returned but wrote no metrics.json")
        write_results(sdir)
    write_results(sdir)
    if report:
        from bertlab.report import build_report
        path = build_report(sdir)
        progress(f"report: {path}")
    return sdir


def _check_snapshot(rdir: Path, run: Run, study: Study) -> None:
    """A half-finished run folder must come from the same config, or resuming would mix two."""
    snap = rdir / "config.toml"
    if not snap.exists():
        return
    old = tomllib.loads(snap.read_text(encoding="utf-8"))
    if old != tomllib.loads(toml_dumps(run.config)):
        diff = sorted(k for k in set(_flatten(old)) | set(_flatten(run.config))
                      if _flatten(old).get(k) != _flatten(run.config).get(k))
        raise StudyError(f"{snap}: this unfinished run was started with a different config "
                         f"(differs in {', '.join(diff)}) than {study.path} gives now; delete "
                         f"{rdir} to restart it, or use --out for a new study folder")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _gradflow_recorder(study: Study, rdir: Path):
    from bertlab.gradflow import GradFlowConfig, GradFlowRecorder
    try:
        cfg = GradFlowConfig.from_dict(dict(study.gradflow), source=str(study.path))
    except (ValueError, TypeError) as e:
        raise StudyError(str(e)) from None
    return GradFlowRecorder.from_config(cfg, rdir)


def _finish_gradflow(recorder, run_id: str) -> None:
    from bertlab.gradflow import write_figures
    recorder.close()
    write_figures(recorder.rows, recorder.out_dir, name=run_id)


def _fit_direct_baseline(config: dict, rdir: Path) -> None:
    """HMM / feature-CRF taggers (``bertlab.baselines``): fit on train, score dev and test
    (Viterbi decoding), and write what ``bertlab.train`` writes (metrics.json,
    predictions_<split>_viterbi.jsonl)."""
    import numpy as np

    from bertlab import baselines
    from bertlab.metrics import entity_report, token_report, unweighted_accuracy
    from bertlab.train import config_from_dict, load_splits, mention_counts
    data = config_from_dict({"data": dict(config.get("data", {}))}).data
    splits = load_splits(data)
    model = config["model"]
    options = dict(model.get("overrides", {}))
    if model["arch"] == "crf":
        options.setdefault("seed", int(config.get("train", {}).get("seed", 0)))
    tagger = (baselines.HMMTagger if model["arch"] == "hmm" else baselines.FeatureCRFTagger)(**options)
    train_sents = splits.train.sentences
    t0 = time.perf_counter()
    tagger.fit([s.tokens for s in train_sents], [s.tags for s in train_sents])
    train_seconds = time.perf_counter() - t0
    out = {}
    for split in ("dev", "test"):
        corpus = getattr(splits, split)
        if corpus is None:
            continue
        sents = corpus.sentences
        t0 = time.perf_counter()
        pred = tagger.predict([s.tokens for s in sents])
        seconds = time.perf_counter() - t0
        write_predictions(rdir / f"predictions_{split}_viterbi.jsonl", sents, pred)
        gold = [s.tags for s in sents]
        entity = entity_report(gold, pred, zero_division=0)
        out[split] = {"viterbi": {
            "decode": "viterbi", "micro_f1": entity["micro avg"]["f1-score"] if "micro avg" in entity else 0.0,
            "entity_report": dict(entity), "token": dict(token_report(gold, pred, zero_division=0)),
            "unweighted_accuracy": unweighted_accuracy(gold, pred),
            "tokens_per_second": sum(len(s.tokens) for s in sents) / max(seconds, 1e-9)}}
    if hasattr(tagger, "model"):  # the feature CRF: a torch module
        n_params = sum(p.numel() for p in tagger.model.parameters())
    else:  # the HMM: its probability tables (use_shape adds a second emission table)
        n_params = sum(int(np.size(getattr(tagger, a))) for a in ("pi", "A", "B", "B_shape") if hasattr(tagger, a))
    # no random state (counts; convex L-BFGS from zero weights): one run stands for every seed
    deterministic = model["arch"] == "hmm" or options.get("optimizer", "lbfgs") == "lbfgs"
    _write_json(rdir / "metrics.json", {
        **out, "config": config, "labels": getattr(tagger, "labels", None), "params": n_params,
        "epochs": 1, "train_seconds": train_seconds, "train_mentions": mention_counts(train_sents),
        "best_dev_f1": out.get("dev", {}).get("viterbi", {}).get("micro_f1"), "deterministic": deterministic})


def write_predictions(path: Path, sentences, pred_tags) -> None:
    """``predictions_<split>_<decode>.jsonl`` as bertlab.inference.evaluate writes it: one
    sentence a line, ``doc_id``, ``sentence`` (index in its document), ``tokens``, ``tags`` (gold), ``pred``."""
    lines, index, last = [], 0, None
    for s, p in zip(sentences, pred_tags):
        index = index + 1 if s.doc_id == last else 0
        last = s.doc_id
        lines.append(json.dumps({"doc_id": s.doc_id, "sentence": index, "tokens": list(s.tokens),
                                 "tags": list(s.tags), "pred": list(p)}))
    write_text(path, "".join(line + "\n" for line in lines))


# ---- results.jsonl ------------------------------------------------------------------------------

def result_rows(sdir: Path) -> list[dict]:
    """One row per finished (run, decode) of the study folder ``sdir``, runs in study order."""
    study = _read_json(sdir / "study.json", {})
    order = {r: i for i, r in enumerate(study.get("runs", []))}
    rows = []
    run_dirs = sorted((p for p in sdir.iterdir() if (p / "metrics.json").exists() and (p / "run.json").exists()),
                      key=lambda p: (order.get(p.name, len(order)), p.name))
    for rdir in run_dirs:
        meta = _read_json(rdir / "run.json")
        metrics = _read_json(rdir / "metrics.json")
        timing = _read_json(rdir / "timing.json", {})
        for decode, m in sorted(test_metrics(metrics).items(),
                                key=lambda kv: study.get("decodes", []).index(kv[0])
                                if kv[0] in study.get("decodes", []) else 99):
            rows.append(result_row(meta, metrics, timing, decode, m, rdir))
    return rows


def test_metrics(metrics: dict) -> dict[str, dict]:
    """``{decode: {...}}`` of the test split from a run's metrics.json."""
    test = metrics.get("test", {})
    if "entity" in test or "entity_report" in test:  # a single decode, not keyed by decode
        return {test.get("decode", "argmax"): test}
    return {d: m for d, m in test.items() if isinstance(m, dict)}


def result_row(meta: dict, metrics: dict, timing: dict, decode: str, m: dict, rdir: Path) -> dict:
    """One results.jsonl line: axis values, test scores, per-type scores and compute cost."""
    report = m["entity_report"] if "entity_report" in m else m["entity"]
    per_type = {t: {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"],
                    "support": r["support"]}
                for t, r in report.items() if t not in ("micro avg", "macro avg", "weighted avg")}
    epochs = metrics.get("epochs") or 1
    train_seconds = metrics.get("train_seconds", timing.get("wall_seconds"))
    # dev F1 of the best model with this decode (the ANOVA's response), else the loop's best dev F1
    dev = metrics.get("dev", {}).get(decode, {})
    dev_f1 = dev.get("micro_f1", metrics.get("best_dev_f1"))
    pred_file = f"predictions_test_{decode}.jsonl"
    # this decode's learning curve, so a report can draw curves without the run folders
    history = metrics.get("history") or []
    curve = None
    if any(h.get("dev") for h in history):
        def dev_of(h, key):
            return ((h.get("dev") or {}).get(decode) or {}).get(key)
        curve = {"epoch": [h["epoch"] for h in history],
                 "train_loss": [h.get("train_loss") for h in history],
                 "dev_loss": [h.get("dev_loss") for h in history],
                 "dev_f1_micro": [dev_of(h, "f1_micro") for h in history],
                 "dev_f1_macro": [dev_of(h, "f1_macro") for h in history],
                 "dev_unweighted_accuracy": [dev_of(h, "unweighted_accuracy") for h in history]}
    return {
        "study": meta["study"], "scale": meta["scale"], "run_id": meta["run_id"],
        "axes": meta["axes"], "seed": meta["axes"].get("train.seed", 0), "decode": decode,
        "f1_micro": report["micro avg"]["f1-score"], "f1_macro": report["macro avg"]["f1-score"],
        "precision_micro": report["micro avg"]["precision"], "recall_micro": report["micro avg"]["recall"],
        "unweighted_accuracy": m.get("unweighted_accuracy"),
        "unweighted_accuracy_variants": m.get("unweighted_accuracy_variants"),
        "per_type": per_type, "dev_f1_micro": dev_f1,
        "train_seconds": train_seconds, "epochs": epochs,
        "best_epoch": m.get("best_epoch"), "select": metrics.get("select"), "curve": curve,
        "seconds_per_epoch": None if train_seconds is None else train_seconds / epochs,
        "inference_tokens_per_s": m.get("tokens_per_second"),  # words of the split per second
        "params": metrics.get("params"), "train_mentions": metrics.get("train_mentions", {}),
        "wall_seconds": timing.get("wall_seconds"), "resumed": timing.get("resumed", False),
        "predictions": f"{meta['run_id']}/{pred_file}" if (rdir / pred_file).exists() else None,
        "env": meta.get("env", {}),
    }


def write_results(sdir: Path) -> Path:
    """Rewrite ``sdir/results.jsonl`` from the finished run folders (temp file + os.replace)."""
    rows = result_rows(sdir)
    path = sdir / "results.jsonl"
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results.jsonl; a line for the same (run, decode) twice keeps the last."""
    rows = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            rows[(row["run_id"], row["decode"])] = row
    return list(rows.values())


# ---- environment ----------------------------------------------------------------------------------

def environment() -> dict:
    """Versions, CPU, threads and GPU of this process: recorded in every run folder."""
    import numpy
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "gpu": None}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import bertlab
        env["bertlab"] = bertlab.__version__
    except AttributeError:
        pass
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- small file helpers -------------------------------------------------------------------------

def toml_dumps(d: dict) -> str:
    """A nested dict of plain values as TOML (tables for dicts, inline values otherwise)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        out += _toml_table(_toml_key(k), v)
    return out


def _toml_table(name: str, d: dict) -> str:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    subs = {k: v for k, v in d.items() if isinstance(v, dict)}
    out = f"\n[{name}]\n" + "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in scalars.items())
    for k, v in subs.items():
        out += _toml_table(f"{name}.{_toml_key(k)}", v)
    return out


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _read_json(path: Path, default=None):
    if not Path(path).exists():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path}: not found")
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---- command line -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``bertlab experiment NAME [--scale S] [--only k=v ...] [--set k=v ...] [--out runs]``."""
    ap = argparse.ArgumentParser(prog="bertlab experiment", description=main.__doc__)
    ap.add_argument("name", help="study name (experiments/NAME.toml) or a path to a study .toml")
    ap.add_argument("--scale", default="default", choices=SCALES)
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                    help="run only the runs with this axis value (repeatable), e.g. --only seed=0")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override a base config key (TOML value), e.g. --set train.epochs=1 or "
                         "--set models.bio_clinicalbert.path=/models/Bio_ClinicalBERT")
    ap.add_argument("--out", default="runs", help="parent folder of study folders (default runs/)")
    ap.add_argument("--experiments", default="experiments", help="folder of study files")
    ap.add_argument("--list", action="store_true", help="print the runs and exit")
    ap.add_argument("--no-report", action="store_true", help="do not build report.md at the end")
    args = ap.parse_args(argv)
    try:
        if args.list:
            study = load_study(args.name, args.scale, args.overrides, args.experiments)
            for run in select(expand(study), args.only, study):
                print(run.run_id)
            return 0
        run_experiment(args.name, args.scale, args.out, args.only, args.overrides,
                       experiments_dir=args.experiments, report=not args.no_report)
    except StudyError as e:
        print(f"bertlab experiment: {e}", file=sys.stderr)
        return 2
    return 0
