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

    study.json                       the expanded study: axes, baseline, report options, scale (and
                                     what it changes), the commands that trained in the folder
    results.jsonl                    one line per finished (run, decode); rebuilt from the folders
    report.md, figures/              bertlab.report
    lock-G.json                      while a process rewrites study.json / results.jsonl / the report
    <run_id>/                        e.g. sampler=btl__loss=focal__seed=1
        config.toml                  the TrainConfig this run was trained with
        run.json                     axis values, environment, train mention counts
        metrics.json, log.jsonl, predictions_<split>_<decode>.jsonl, best/   (bertlab.train)
        timing.json                  wall time summed over sessions (kept current while training)
        claim-G.json                 while a process trains it: host, pid, heartbeat
        .lock                        while bertlab.train writes the folder (one training at a time)

A run is finished iff its ``metrics.json`` exists. Re-running skips finished runs and resumes
interrupted ones from their checkpoint (``train(..., resume=True)``). The one config change a run
folder takes is ``train.epochs``: a finished run is then continued from its checkpoint, where that
is exactly the run the new config trains (``bertlab.train.change_epochs``). ``results.jsonl`` is a pure
function of the finished run folders, rewritten atomically after every run, so it can never hold
a duplicate or miss a finished run.

Any number of processes, on one machine (``--workers N``) or many (``--shard I/N``, e.g. a Slurm
array over a shared folder), may work on one study folder: a process trains a run only after
claiming its folder (a file created with O_EXCL), a claim is taken over only when its holder is
gone or its heartbeat is stale, and whichever process finishes last writes the report. Who
trains a run does not change its numbers: its seed and config are the study's, not the process's.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import platform
import re
import shlex
import signal
import socket
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bertlab.constrained import base_decode
from bertlab.errors import EXIT_INTERRUPTED, BertlabError, debug_requested, fail, one_line
from bertlab.files import FolderBusy, remove_path, write_bytes, write_text
from bertlab.results import read_json, read_results, result_rows, write_predictions, write_results  # noqa: F401

SCALES = ("smoke", "default", "full")
STUDY_KEYS = {"study", "base", "sweep", "scale", "report", "models", "gradflow"}
# axis key -> short name used in run ids and tables; anything else: its last dotted component
SHORT_NAMES = {"sampler.name": "sampler", "loss.name": "loss", "train.seed": "seed",
               "optim.lr": "lr", "sampler.batch_size": "bs", "data.name": "data",
               "model.head": "head", "loss.gamma": "gamma", "train.epochs": "epochs", "data.fold": "fold"}
# the axis [study] folds = K makes: which cross-validation fold a run tests on (bertlab.datasets.cross_validation_split)
FOLD_AXIS = "data.fold"
# the metrics a study may declare as its claim ([report] primary): what checkpoint selection can use
PRIMARY_METRICS = ("f1_micro", "f1_macro", "unweighted_accuracy")
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
# seconds without a heartbeat after which another process may take over a run's claim (--stale-after)
STALE_AFTER = 600.0
MIN_STALE_AFTER = 1.0  # the heartbeat comes every stale_after / 4 s: at most 4 times a second
# config keys that change how a run is watched, not what it computes: a run folder made with other
# values is still this run (bertlab.train resumes across them too)
NON_RESULT_KEYS = {"train.progress", "train.log_every", "train.checkpoint_every", "train.eval_batch_size",
                   "train.keep_checkpoint"}


class StudyError(BertlabError, ValueError):
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
    scale_overrides: dict = field(default_factory=dict)  # the file's [scale.SCALE] table, as applied
    overrides: list = field(default_factory=list)        # the --set items, as given
    folds: int = 0              # [study] folds: K-fold cross-validation (the fold axis); 0 = the corpus's split
    fold_seed: int = 0          # [study] fold_seed: seed s's partition uses fold_seed + s

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
    folder = Path(experiments_dir)
    p = folder / f"{name}.toml"
    if not p.exists():
        have = sorted(q.stem for q in folder.glob("*.toml")
                      if "\n[study]" in "\n" + q.read_text(encoding="utf-8"))
        if have:
            raise StudyError(f"{p}: no such study; available in {folder}/: {', '.join(have)} "
                             f"(--experiments DIR reads another folder)")
        # run outside the checkout: point at the checkout's studies when this is an editable install
        shipped = Path(__file__).resolve().parents[1] / "experiments"
        where = (f"pass --experiments {shipped} (the bertlab checkout's studies)"
                 if (shipped / f"{name}.toml").exists() else "pass --experiments DIR")
        raise StudyError(f"{p}: no such study, and no study files in {folder.resolve()}; run from "
                         f"the bertlab checkout or {where}")
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
    from bertlab.config import is_folder_name
    if not is_folder_name(study_name):
        raise StudyError(f"{where}: [study] name = {study_name!r}: expected a folder name (no '/', '\\' "
                         f"or '..'); the study's folder is RUNS/NAME, inside --runs")
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
    # a scale may cross-validate with fewer folds (smoke: folds = 3)
    folds, fold_seed = _check_folds({**head, **{k: v for k, v in scales.get(scale, {}).items()
                                                if k in ("folds", "fold_seed")}}, base, axes, where)
    if folds:  # the fold axis, like any other; --set data.fold=K pins it
        axes[FOLD_AXIS] = list(range(folds))
        base.setdefault("data", {})["folds"] = folds
    for key, value in scales.get(scale, {}).items():
        if key in ("folds", "fold_seed"):
            continue
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
            if key in ("data.folds", "data.fold_seed"):
                raise StudyError(f"--set {item}: a study cross-validates with [study] folds and fold_seed "
                                 f"(--set data.fold=K runs one fold)")
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
    for axis, short in short_names(axes).items():  # a run folder is RUNS/NAME/<short>=<value>__...
        if not is_folder_name(short):
            raise StudyError(f"{where}: [sweep] {axis!r}: an axis name becomes part of each run's folder "
                             f"name; expected a name without '/', '\\' or '..', not a path")
    # the fold and the seed last: a run id reads as the variant, then the fold, then the seed
    axes = {k: v for k, v in axes.items() if k not in (FOLD_AXIS, "train.seed")} | {
        k: axes[k] for k in (FOLD_AXIS, "train.seed") if k in axes}

    base.setdefault("eval", {}).setdefault("decode", ["argmax"])
    decodes = base["eval"]["decode"]
    if isinstance(decodes, str):
        base["eval"]["decode"] = decodes = [decodes]
    baseline = dict(head.get("baseline", {}))
    for key, value in baseline.items():
        if key == "decode":
            if value not in _all_decodes(decodes, axes):
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
    report = dict(raw.get("report", {}))
    from bertlab.families import REPORT_OPTIONS
    for key in report:
        if key not in REPORT_OPTIONS:
            raise StudyError(f"{where}: [report] {key}: unknown key; expected one of {', '.join(REPORT_OPTIONS)}")
    _check_primary(report, base, axes, where)
    _check_anova(report.get("anova"), axes, decodes, where)
    full_sweep = {k: [axis_value(k, v) for v in vs] for k, vs in raw.get("sweep", {}).items()
                  if k != "model" and isinstance(vs, list)}
    _check_compare(report.get("compare"), report.get("by_construction"), axes, decodes, where, full_sweep)
    return Study(name=study_name, path=path, scale=scale, description=head.get("description", ""),
                 base=base, axes=axes, baseline=baseline, report=report,
                 gradflow=raw.get("gradflow"), scale_overrides=dict(scales.get(scale, {})),
                 overrides=list(overrides), folds=folds, fold_seed=fold_seed)


STUDY_HEAD_KEYS = ("name", "description", "baseline", "folds", "fold_seed")


def _check_folds(head: dict, base: dict, axes: dict, where) -> tuple[int, int]:
    """``[study] folds`` and ``fold_seed``: an integer K >= 2 (K-fold cross-validation over the
    corpus's documents) and a seed; the fold itself is the study's to set, not [base] or [sweep]."""
    unknown = sorted(set(head) - set(STUDY_HEAD_KEYS))
    if unknown:
        raise StudyError(f"{where}: [study] {unknown[0]}: unknown key; expected one of {', '.join(STUDY_HEAD_KEYS)}")
    folds, fold_seed = head.get("folds", 0), head.get("fold_seed", 0)
    for key, value, least in (("folds", folds, 2), ("fold_seed", fold_seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or (value < least and not (key == "folds" and value == 0)):
            what = ("an integer >= 2, the number of cross-validation folds" if key == "folds"
                    else "an integer >= 0, the seed of the fold partition")
            raise StudyError(f"{where}: [study] {key}: expected {what}, got {value!r}")
    data = base.get("data", {}) if isinstance(base.get("data"), dict) else {}
    for key in ("folds", "fold", "fold_seed"):
        if key in data or f"data.{key}" in axes:
            raise StudyError(f"{where}: {'[sweep]' if f'data.{key}' in axes else '[base.data]'} {key}: a study "
                             f"cross-validates with [study] folds = K (and fold_seed), which makes the fold axis")
    if fold_seed and not folds:
        raise StudyError(f"{where}: [study] fold_seed: only used with [study] folds = K")
    return folds, fold_seed


def _check_primary(report: dict, base: dict, axes: dict, where) -> None:
    """``[report] primary`` names a metric every run selects its checkpoints and stops early on:
    it sets ``[eval] select``, which must not say otherwise (in [base.eval] or a model's recipe)."""
    primary = report.get("primary")
    target = report.get("target_difference")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not 0 < target < 1):
        raise StudyError(f"{where}: [report] target_difference: expected a difference between 0 and 1 "
                         f"(e.g. 0.02), got {target!r}")
    if primary is None:
        return
    if primary not in PRIMARY_METRICS:
        raise StudyError(f"{where}: [report] primary: {primary!r} is not a metric; expected one of "
                         f"{', '.join(PRIMARY_METRICS)} (a frequency band's F1 is reported, not selected on)")
    metrics = report.get("metrics")
    if metrics is not None and primary not in metrics:
        raise StudyError(f"{where}: [report] primary: {primary!r} is not among [report] metrics = {metrics}")
    tables = [("[base.eval]", base.get("eval", {}))] + [
        (f"model {m.get('name')!r}: eval", m.get("eval", {})) for m in axes.get("model", [])] + [
        (f"[sweep] {k!r}:", {"select": v.get("select", primary) if isinstance(v, dict) else v})
        for k, vs in axes.items() if k in ("eval", "eval.select") for v in vs]
    for table, section in tables:
        if isinstance(section, dict) and section.get("select", primary) != primary:
            raise StudyError(f"{where}: {table} select = {section['select']!r} contradicts [report] primary = "
                             f"{primary!r}: the primary metric selects checkpoints and stops early; drop select")
    base.setdefault("eval", {})["select"] = primary


def _check_compare(spec, rules, axes: dict, decodes: list, where, full_sweep: dict) -> None:
    """``[report.compare]`` and ``[[report.by_construction]]``: checked when the study is read, not
    hours later when its report is built (a rule's levels against ``full_sweep`` too: a smaller
    scale may leave some out)."""
    if not spec and not rules:
        return
    from bertlab.families import comparison_families, construction_rules
    levels = {k: [axis_value(k, v) for v in vs] for k, vs in axes.items()}
    study = {"source": str(where), "axes": levels, "decodes": _all_decodes(decodes, axes)}
    try:
        comparison_families(study, {"compare": spec})
        construction_rules(study, {"by_construction": rules}, full_sweep)
    except ValueError as e:
        raise StudyError(str(e)) from None


def _all_decodes(decodes: list, axes: dict) -> list:
    """The study's decodes: [base.eval] decode and those a swept model brings (e.g. Viterbi)."""
    return decodes + [d for m in axes.get("model", []) for d in m.get("decode", [])]


def _check_anova(spec, axes: dict, decodes: list, where) -> None:
    """``[report] anova``: a table (or a list of tables) whose ``a`` and ``b`` are [sweep] axes."""
    if spec is None:
        return
    for one in spec if isinstance(spec, list) else [spec]:
        if not isinstance(one, dict):
            raise StudyError(f"{where}: [report] anova must be a table {{ a = AXIS, b = AXIS, metric = ... }} "
                             f"or a list of them, not {one!r}")
        for key in ("a", "b"):
            if one.get(key) not in axes or one.get(key) == "train.seed":
                raise StudyError(f"{where}: [report] anova {key} = {one.get(key)!r} is not a [sweep] axis "
                                 f"(axes: {', '.join(k for k in axes if k != 'train.seed') or 'none'})")
        decode = one.get("decode", "argmax")
        if decode not in _all_decodes(decodes, axes):
            raise StudyError(f"{where}: [report] anova decode = {decode!r} is not in "
                             f"[base.eval] decode = {decodes}")


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
    """``key=value`` with the value parsed as TOML (bare words are strings): ``bertlab train``'s
    parser (``bertlab.config.parse_override``), so ``--set`` means the same in both commands."""
    from bertlab.config import parse_override
    try:
        return parse_override(item)
    except ValueError as e:
        raise StudyError(str(e)) from None


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
        # under cross-validation every seed has its own partition, so even these train per seed
        if deterministic and not study.folds and chosen.get("train.seed", first_seed) != first_seed:
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
        if study.folds:  # seed s is one K-fold cross-validation with its own partition
            cfg["data"]["fold_seed"] = study.fold_seed + int(cfg.get("train", {}).get("seed", 0))
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
        swept = [axis_value(key, v) for v in study.axes[key]]
        if not any(value_slug(v) == want or str(v) == want for v in swept):
            raise StudyError(f"--only {item!r}: {want!r} is not a value of {names[key]} in {study.path} "
                             f"at scale {study.scale} (values: {', '.join(map(str, swept))})")
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
        name = run.axes.get("model", model.get("path") or model.get("preset") or model.get("arch")
                            or model.get("builtin"))
        random_init = model.get("preset") or model.get("arch")
        if not model.get("path") and not (random_init and model.get("tokenizer")):
            # the builtin checkpoint: the model itself, or a random-init model's tokenizer
            from bertlab.checkpoint import builtin_path
            try:
                builtin_path(model.get("builtin") or "minilm")
            except (ValueError, ModuleNotFoundError) as e:
                raise StudyError(f"{study.path}: model {name!r}: {e}"
                                 + (" (a preset takes its tokenizer from it unless [model] tokenizer = DIR)"
                                    if random_init else "")) from None
        elif model.get("path"):
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


def check_folds(study: Study, runs: list[Run]) -> None:
    """``[study] folds`` fits every corpus the runs read (enough documents, and documents at all),
    checked by cutting fold 0 of each: one error naming ``[study] folds`` before anything is written."""
    if not study.folds:
        return
    from bertlab.config import DataConfig
    from bertlab.datasets.prepare import load_splits
    seen = set()
    for r in runs:
        data = {k: v for k, v in r.config.get("data", {}).items() if k not in ("fold", "fold_seed")}
        key = json.dumps(data, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            load_splits(DataConfig(**data))
        except (ValueError, OSError) as e:
            message = str(e).removeprefix(f"[data] folds = {study.folds}: ")
            raise StudyError(f"{study.path}: [study] folds = {study.folds}: {message}") from None


def build_train_config(config: dict, source: str):
    """A nested config dict -> a validated ``bertlab.train.TrainConfig``; errors name ``source``
    and ``[section] key``. ``bertlab.train`` is the one validator of training configs, so a study
    accepts exactly what ``bertlab train`` accepts."""
    from bertlab.losses import build_loss
    from bertlab.config import ConfigError, config_from_dict
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
                   progress=print, shard: tuple[int, int] | None = None, workers: int = 1,
                   threads: int = 0, stale_after: float = STALE_AFTER, reuse=()) -> Path:
    """Run (or resume) a study; returns its folder. See the module docstring for the layout.

    ``callbacks`` are passed to every ``train`` call (in addition to the study's own, e.g. the
    gradient-flow recorder); with ``workers > 1`` they must be picklable. ``report=False`` skips
    building report.md at the end.

    Scale-out: ``shard=(i, n)`` trains only part i of n of the runs (``shard_runs``); ``workers``
    processes share the runs on this machine (``run_workers``; ``threads`` torch threads each,
    0 = their share of the cores). Any number of such processes, on any hosts, may work in one
    study folder at once: each run is trained by the process that claims it (``take_claim``), a
    claim whose heartbeat is older than ``stale_after`` seconds may be taken over, and whichever
    process finishes last writes the report (``finish_study``).

    ``reuse``: other study folders; a run whose exact config (every key that changes a result) was
    trained and finished there is copied instead of trained again (``reuse_finished``)."""
    check_stale_after(stale_after)
    study = load_study(name, scale, overrides, experiments_dir)
    runs = select(expand(study), list(only), study)
    if not runs:
        raise StudyError(f"{study.path}: no run matches --only {' '.join(only)}")
    check_models(study, runs)
    for r in runs:  # every config is valid before anything trains
        if r.config.get("model", {}).get("arch") not in DIRECT_BASELINES:
            build_train_config(r.config, f"{study.path} (run {r.run_id})")
    check_folds(study, runs)
    sdir = study_dir_for(study.name, scale, out)
    for r in runs:
        _check_snapshot(sdir / r.run_id, r, study)
    position = {r.run_id: i for i, r in enumerate(runs, 1)}
    if shard is not None:
        runs = shard_runs(runs, *shard)
        progress(f"shard {shard[0]}/{shard[1]}: {len(runs)} of the {len(position)} runs")
    for folder in reuse:
        if not Path(folder).is_dir():
            raise StudyError(f"--reuse {folder}: no such study folder")
    job = Job(study=study, sdir=sdir, position=position, callbacks=list(callbacks), reuse=tuple(map(str, reuse)),
              stale_after=stale_after, invocation=f"{socket.gethostname()}:{os.getpid()}:{time.time():.6f}",
              # the longest first, so that workers end together; equal costs keep study order
              runs=sorted(runs, key=lambda r: (-run_cost(r), position[r.run_id])))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: one run across processes
        if workers > 1:
            raise StudyError(f"--workers {workers} under torchrun: each torchrun process already trains "
                             f"every run together with the others; use one or the other")
        _run_together(job, name, scale, overrides, only, experiments_dir, report, progress)
        return sdir
    sdir.mkdir(parents=True, exist_ok=True)
    unfinished = sum(not finished(sdir / r.run_id, r) for r in runs)
    with study_lock(sdir, stale_after, job.invocation):
        write_study_json(sdir, study, study_command(name, scale, overrides, only, experiments_dir), unfinished > 0)
    if workers > 1 and unfinished > 1:
        run_workers(dataclasses.replace(job, quiet=True), min(workers, unfinished), threads, progress)
    else:
        work(job, progress)
    finish_study(job, report, progress)
    return sdir


def _run_together(job: Job, name, scale, overrides, only, experiments_dir, report, progress) -> None:
    """``run_experiment``'s tail under torchrun: rank 0 keeps the study folder, every rank trains."""
    import torch
    import torch.distributed as dist
    here = not dist.is_initialized()
    if here:  # bertlab.train joins this group instead of making its own for every run
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    main = dist.get_rank() == 0
    try:
        if main:
            job.sdir.mkdir(parents=True, exist_ok=True)
            with study_lock(job.sdir, job.stale_after, job.invocation):
                trains = any(not finished(job.sdir / r.run_id, r) for r in job.runs)
                write_study_json(job.sdir, job.study, study_command(name, scale, overrides, only, experiments_dir),
                                 trains)
        work_together(job, progress if main else (lambda line: None))
        if main:
            finish_study(job, report, progress)
        dist.barrier()
    finally:
        if here:
            dist.destroy_process_group()


def _snapshot_diff(rdir: Path, run: Run) -> list[str]:
    """The keys (``section.key``) that change a result on which the run folder's config.toml and
    the config the study gives now differ."""
    snap = rdir / "config.toml"
    if not snap.exists():
        return []
    old = _flatten(tomllib.loads(snap.read_text(encoding="utf-8")))
    new = _flatten(tomllib.loads(toml_dumps(run.config)))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in NON_RESULT_KEYS)


def _continues(rdir: Path, run: Run) -> bool:
    """The study changed nothing of the run but ``train.epochs`` and its checkpoint is there:
    ``bertlab.train`` continues it (``change_epochs``: where that is exactly the run the new config
    trains, e.g. a constant schedule without warmup) or says why it cannot."""
    return (rdir / "checkpoint.pt").exists() and _snapshot_diff(rdir, run) == ["train.epochs"]


def finished(rdir: Path, run: Run) -> bool:
    """The run's metrics.json exists and no changed ``train.epochs`` asks to continue it."""
    return (rdir / "metrics.json").exists() and not _continues(rdir, run)


def _check_snapshot(rdir: Path, run: Run, study: Study) -> None:
    """A run folder must come from the config the study gives now: resuming would mix two configs,
    and a finished run would silently stand for a study it was not trained in (e.g. after --set).
    The one change allowed is ``train.epochs`` with the run's checkpoint there (``_continues``)."""
    snap = rdir / "config.toml"
    diff = _snapshot_diff(rdir, run)
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
        changes += [f"{k} = {_toml_value(v)}" for k, v in items]
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
    old = _read_json(sdir / "study.json", {})
    commands = old.get("commands", [])
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise StudyError(f"{sdir / 'study.json'}: \"commands\" is not a list of command lines; the file is "
                         f"damaged: delete it and re-run the study (it is rewritten from the study file)")
    if trains or not commands:
        commands = [c for c in commands if c != command] + [command]
    _write_json(sdir / "study.json", {
        "name": study.name, "scale": study.scale, "source": str(study.path),
        "description": study_description(study), "axes": {k: [axis_value(k, v) for v in vs]
                                                           for k, vs in study.axes.items()},
        "short_names": short_names(study.axes), "baseline": study.baseline,
        "decodes": study.decodes, "report": study.report, "gradflow": study.gradflow is not None,
        "runs": [r.run_id for r in expand(study)], "scale_overrides": study.scale_overrides,
        "overrides": study.overrides, "commands": commands,
        **({"folds": {"k": study.folds, "fold_seed": study.fold_seed, "axis": FOLD_AXIS}} if study.folds else {})})


# ---- sharing a study between processes and hosts ------------------------------------------------

@dataclass
class Job:
    """What a study process (or each of its workers) needs to train its share of the runs."""
    study: Study
    runs: list                  # Run, in the order to try them
    sdir: Path
    position: dict              # run_id -> its number among the selected runs, for "[3/18]"
    callbacks: list
    stale_after: float
    invocation: str             # host:pid:time of the command; its workers share it
    quiet: bool = False         # no tqdm bars (several workers share one terminal)
    reuse: tuple = ()           # study folders whose finished runs of the same config are copied (--reuse)


class RunError(BertlabError, RuntimeError):
    """Training one run of a study failed; the message names the run folder and the cause."""


class ClaimLost(RuntimeError):
    """Another process took over this process's claim on a run (its heartbeat looked stale)."""


def shard_runs(runs: list[Run], index: int, count: int) -> list[Run]:
    """Part ``index`` of ``count`` of ``runs``, in study order. Longest first, each run goes to
    the part with the least estimated cost so far (``run_cost``; ties to the lower part), so the
    parts are balanced and, since only the configs decide, the same on every machine. Runs of
    equal cost are dealt out round-robin in study order."""
    costs = [run_cost(r) for r in runs]
    load, part = [0.0] * count, {}
    for i in sorted(range(len(runs)), key=lambda i: (-costs[i], i)):
        part[i] = min(range(count), key=lambda k: (load[k], k))
        load[part[i]] += costs[i]
    return [r for i, r in enumerate(runs) if part[i] == index]


def run_cost(run: Run) -> float:
    """A rough relative cost of training ``run``, read from its config alone: epochs x encoder
    size (layers x hidden², relative to MiniLM's 6 x 384²) x 1.5 with a KNN decode (one more pass
    over the training split). The HMM, feature CRF and BiLSTMs count as 0.1 of MiniLM; the size
    of the corpus is not in it."""
    cfg = run.config
    epochs = int(cfg.get("train", {}).get("epochs", 3))
    knn = 1.5 if "knn" in map(base_decode, cfg.get("eval", {}).get("decode", [])) else 1.0
    return epochs * _encoder_size(cfg.get("model", {})) * knn


def _encoder_size(model: dict) -> float:
    if model.get("arch"):
        return 0.1
    dims: dict = {}
    try:
        if model.get("preset"):
            from bertlab.models import BERT_PRESETS, DISTILBERT_PRESETS
            dims = dict({**BERT_PRESETS, **DISTILBERT_PRESETS}.get(model["preset"], {}))
        else:
            from bertlab.checkpoint import builtin_path
            folder = (Path(os.path.expanduser(str(model["path"]))) if model.get("path")
                      else builtin_path(model.get("builtin", "minilm")))
            dims = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, ModuleNotFoundError):
        pass  # unknown size: count it as MiniLM
    dims.update(model.get("overrides", {}))
    layers = dims.get("num_hidden_layers", dims.get("n_layers"))
    hidden = dims.get("hidden_size", dims.get("dim"))
    return layers * hidden ** 2 / (6 * 384 ** 2) if layers and hidden else 1.0


# A claim is a file PREFIX-G.json in the claimed folder (a run folder; the study folder for its
# lock), holding {"host", "pid", "invocation", "since", "heartbeat"}. It is created with O_EXCL,
# so of several processes (on any hosts sharing the folder) exactly one gets it. To take over a
# stale claim a process creates generation G+1: again only one can, and the old holder sees the
# newer generation at its next heartbeat and stops.

def claim_files(folder: Path, prefix: str = "claim") -> list[tuple[int, Path]]:
    """``[(generation, path)]`` of the claim files in ``folder``, oldest first."""
    found = []
    for p in folder.glob(f"{prefix}-*.json"):
        generation = p.name[len(prefix) + 1:-len(".json")]
        if generation.isdigit():
            found.append((int(generation), p))
    return sorted(found)


def read_claim(folder: Path, prefix: str = "claim") -> tuple[int, dict] | None:
    """The newest claim on ``folder`` as ``(generation, holder)``, or None."""
    for generation, path in reversed(claim_files(folder, prefix)):
        try:
            text, mtime = path.read_text(encoding="utf-8"), path.stat().st_mtime
        except FileNotFoundError:  # released just now
            continue
        try:
            return generation, json.loads(text)
        except json.JSONDecodeError:  # created an instant ago, not written yet: as fresh as its file
            return generation, {"heartbeat": mtime}
    return None


def claim_is_live(holder: dict, stale_after: float) -> bool:
    """Whether a claim still holds: not if its process is gone (checked on its own host), nor if
    its heartbeat is older than ``stale_after`` seconds (another host's process, or a hung one).
    Hosts are compared by name, so their clocks should agree to well under ``stale_after``."""
    if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
        return False
    return time.time() - float(holder.get("heartbeat", 0)) < stale_after


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):  # another user's process, or no pid recorded
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class Claim:
    """This process's claim on a folder (``take_claim``)."""
    path: Path
    prefix: str
    generation: int
    holder: dict
    took_over: dict | None = None  # the stale holder it replaced
    lost: bool = False

    def beat(self) -> bool:
        """Refresh the heartbeat; False (and ``lost``) once another process took the claim over."""
        if self.lost or claim_files(self.path.parent, self.prefix)[-1:] != [(self.generation, self.path)]:
            self.lost = True
            return False
        self.holder["heartbeat"] = time.time()
        write_text(self.path, json.dumps(self.holder))
        return True

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def take_claim(folder: Path, stale_after: float = STALE_AFTER, invocation: str = "",
               prefix: str = "claim") -> Claim | None:
    """Claim ``folder`` for this process; None if a live process holds it (``claim_is_live``)."""
    folder.mkdir(parents=True, exist_ok=True)
    current = read_claim(folder, prefix)
    if current is not None and claim_is_live(current[1], stale_after):
        return None
    generation = 0 if current is None else current[0] + 1
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "invocation": invocation,
              "since": now, "heartbeat": now}
    path = folder / f"{prefix}-{generation}.json"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another process was faster
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(holder))
    for g, p in claim_files(folder, prefix):
        if g < generation:  # the stale holder's file
            p.unlink(missing_ok=True)
        elif g > generation:  # a fresh claim raced a takeover: the newer generation wins
            path.unlink(missing_ok=True)
            return None
    return Claim(path, prefix, generation, holder, took_over=current[1] if current else None)


def heartbeat_period(stale_after: float) -> float:
    return min(30.0, stale_after / 4)


@contextlib.contextmanager
def heartbeat(period: float, beat):
    """Call ``beat()`` every ``period`` seconds on a background thread while the block runs."""
    stopped = threading.Event()

    def loop():
        while not stopped.wait(period):
            with contextlib.suppress(OSError):  # a shared file system's hiccup: the next beat retries
                beat()

    thread = threading.Thread(target=loop, name="bertlab-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


@contextlib.contextmanager
def study_lock(sdir: Path, stale_after: float = STALE_AFTER, invocation: str = ""):
    """Hold the study folder's lock (a claim named ``lock-G.json``) while the block runs: processes
    rewriting study.json, results.jsonl or the report take turns."""
    while (claim := take_claim(sdir, stale_after, invocation, prefix="lock")) is None:
        time.sleep(0.2)
    try:
        with heartbeat(heartbeat_period(stale_after), claim.beat):
            yield
    finally:
        claim.release()


def busy_runs(sdir: Path, stale_after: float = STALE_AFTER) -> dict[str, dict]:
    """``{run_id: holder}`` of the unfinished runs in ``sdir`` that a live process is training."""
    busy = {}
    for rdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
        current = read_claim(rdir)
        if current and claim_is_live(current[1], stale_after) and not (rdir / "metrics.json").exists():
            busy[rdir.name] = current[1]
    return busy


@contextlib.contextmanager
def run_session(rdir: Path, claim: Claim, stale_after: float):
    """This process's turn at a run: beats its claim's heartbeat and keeps ``timing.json`` current
    (``wall_seconds`` summed over sessions, ``sessions``, ``resumed``) from the start and at every
    beat, so a session that is killed still counts, up to its last beat."""
    before = _read_json(rdir / "timing.json", {"wall_seconds": 0.0, "sessions": 0})
    resumed = any(rdir.glob("checkpoint*")) or before.get("resumed", False)
    t0 = time.perf_counter()

    def write_timing():
        _write_json(rdir / "timing.json", {"wall_seconds": before["wall_seconds"] + time.perf_counter() - t0,
                                           "sessions": before["sessions"] + 1, "resumed": resumed})

    def beat():
        if claim.beat():
            write_timing()

    write_timing()
    try:
        with heartbeat(heartbeat_period(stale_after), beat):
            yield
    finally:
        if not claim.lost:
            write_timing()


class StopIfClaimLost:
    """A training callback: stop when another process has taken this run over, so that two
    processes never keep training one run."""

    def __init__(self, claim: Claim):
        self.claim = claim

    def after_optimizer_step(self, step, model, optimizer):
        if self.claim.lost:
            raise ClaimLost(f"another process took this run over at step {step} (its claim "
                            f"{self.claim.path.name} looked stale); stopped here")


def work(job: Job, progress=print, stop=lambda: False, event=None) -> None:
    """Train the job's runs in order, skipping finished ones and those a live process holds: the
    loop of the study command and of each of its workers. ``event(kind, ...)`` hears
    ``("start", run_id)`` and ``("done", run_id, seconds)``."""
    env = environment()
    spent: list[float] = []  # wall seconds of the runs trained here, for the ETA
    for run in job.runs:
        if stop():
            return
        rdir = job.sdir / run.run_id
        tag = f"[{job.position[run.run_id]}/{len(job.position)}] {run.run_id}"
        if finished(rdir, run):
            progress(f"{tag}: finished, skipped")
            continue
        claim = take_claim(rdir, job.stale_after, job.invocation)
        if claim is None:
            holder = (read_claim(rdir) or (0, {}))[1]
            if holder.get("invocation") != job.invocation:  # a sibling worker's run is no news
                progress(f"{tag}: being trained by {holder.get('host')} pid {holder.get('pid')}, skipped")
            continue
        try:
            if finished(rdir, run):  # finished between the check and the claim
                progress(f"{tag}: finished, skipped")
                continue
            if spent and event is None:
                left = sum(1 for r in job.runs if not finished(job.sdir / r.run_id, r))
                progress(f"    {len(spent)} run(s) took {sum(spent) / 60:.1f} min; about "
                         f"{sum(spent) / len(spent) * left / 60:.0f} min left for {left} run(s)")
            resumed = any(rdir.glob("checkpoint*"))
            source = None if resumed else reuse_finished(job, run, rdir)
            if source is not None:
                progress(f"{tag}: the same config finished in {source}: copied, not trained")
                with study_lock(job.sdir, job.stale_after, job.invocation):
                    write_results(job.sdir)
                continue
            was = claim.took_over
            progress(f"{tag}: {'resuming' if resumed else 'training'}"
                     + (f" (taken over from {was.get('host')} pid {was.get('pid')})" if was else ""))
            if event:
                event("start", run.run_id)
            t0 = time.perf_counter()
            try:
                train_run(job, run, claim, env)
            except (ClaimLost, FolderBusy) as e:  # FolderBusy: e.g. a `bertlab train --out` into the run
                progress(f"{tag}: {e}; skipped")
                continue
            spent.append(time.perf_counter() - t0)
            if event:
                event("done", run.run_id, spent[-1])
        finally:
            claim.release()
        with study_lock(job.sdir, job.stale_after, job.invocation):
            write_results(job.sdir)


def _result_config(config: dict, source: str) -> dict:
    """A run's config as the flat dict of everything that can change its result: the full
    TrainConfig (defaults filled in, so a key left out equals its default written out), or the raw
    config of a direct baseline; without the keys that only change logging and checkpointing."""
    if config.get("model", {}).get("arch") in DIRECT_BASELINES:
        flat = _flatten(config)
    else:
        flat = _flatten(dataclasses.asdict(build_train_config(config, source)))
    return {k: v for k, v in flat.items() if k not in NON_RESULT_KEYS}


def reuse_finished(job: Job, run: Run, rdir: Path) -> Path | None:
    """If a finished run folder in one of ``job.reuse`` was trained with this run's config (equal
    on every key that changes a result, ``_result_config``), copy it into ``rdir`` and return it;
    else None. The copy is what training this run again would give: training is deterministic on
    one machine for a config and seed (tests/test_experiment.py). Not for a study that records the
    gradient flow (its runs carry instruments a plain run lacks). The run folder keeps this study's
    identity (run.json, config.toml) and says where it came from (``reused_from``: the source study
    folder's name and run id, e.g. ``btl_focal/sampler=atl__seed=0``, never a machine's path); model folders
    are hard links where the file system allows, the resume checkpoint and claims are left out.
    metrics.json is written last, so an interrupted copy is an unfinished run, copied again."""
    import shutil
    if not job.reuse or job.study.gradflow is not None:
        return None
    mine = _result_config(run.config, f"{job.study.path} (run {run.run_id})")
    for folder in job.reuse:
        for src in sorted(Path(folder).iterdir()):
            if src.resolve() == rdir.resolve() or not (src / "metrics.json").exists() \
                    or not (src / "config.toml").exists():
                continue
            try:
                theirs = _result_config(tomllib.loads((src / "config.toml").read_text(encoding="utf-8")), str(src))
            except (StudyError, ValueError, TypeError, tomllib.TOMLDecodeError):
                continue
            if theirs != mine:
                continue

            def link_or_copy(a, b):
                try:
                    os.link(a, b)
                except OSError:
                    shutil.copy2(a, b)

            rdir.mkdir(parents=True, exist_ok=True)
            for path in sorted(src.iterdir()):  # metrics.json, the mark of a finished run, comes last
                if path.name.startswith(("claim-", "checkpoint", ".", "run.json", "config.toml", "metrics.json")):
                    continue
                if path.is_dir():
                    remove_path(rdir / path.name)
                    shutil.copytree(path, rdir / path.name, copy_function=link_or_copy)
                else:
                    write_bytes(rdir / path.name, path.read_bytes())
            write_text(rdir / "config.toml", toml_dumps(run.config))
            _write_json(rdir / "run.json", {**_read_json(src / "run.json", {}), "study": job.study.name,
                                            "scale": job.study.scale, "run_id": run.run_id, "axes": run.axes,
                                            "reused_from": f"{src.parent.name}/{src.name}"})
            write_bytes(rdir / "metrics.json", (src / "metrics.json").read_bytes())
            return src
    return None


def train_run(job: Job, run: Run, claim: Claim, env: dict, together: bool = False) -> None:
    """Train (or resume) one claimed run in its folder. A failure is a RunError naming the folder.
    ``together``: under torchrun, as rank 0 of the processes that train it (``work_together``)."""
    study, rdir = job.study, job.sdir / run.run_id
    _check_snapshot(rdir, run, study)
    if not (rdir / "config.toml").exists():
        write_text(rdir / "config.toml", toml_dumps(run.config))
    _write_json(rdir / "run.json", {"study": study.name, "scale": study.scale, "run_id": run.run_id,
                                     "axes": run.axes, "env": env})
    with run_session(rdir, claim, job.stale_after):
        # one rank alone must not stop: the others would wait for it forever
        _fit(job, run, rdir, [] if together else [StopIfClaimLost(claim)])
    if not (rdir / "metrics.json").exists():
        raise RunError(f"{rdir}: training returned but wrote no metrics.json")
    if _snapshot_diff(rdir, run):  # continued under a changed train.epochs: the folder now holds this config
        write_text(rdir / "config.toml", toml_dumps(run.config))
    precision = _read_json(rdir / "metrics.json", {}).get("precision")
    if precision:  # the precision the run resolved ("auto" -> fp32 / bf16) belongs with its environment
        _write_json(rdir / "run.json", {**_read_json(rdir / "run.json", {}), "precision": precision})


def _fit(job: Job, run: Run, rdir: Path, callbacks: list, main: bool = True) -> None:
    """The training itself: bertlab.train, or a direct baseline's fit (``main`` process only)."""
    try:
        if run.config.get("model", {}).get("arch") in DIRECT_BASELINES:
            if main:
                _fit_direct_baseline(run.config, rdir)
            return
        from bertlab.train import train
        cfg = build_train_config(run.config, f"{job.study.path} (run {run.run_id})")
        if job.quiet and cfg.train.progress == "auto":
            cfg.train = dataclasses.replace(cfg.train, progress="off")
        callbacks = list(job.callbacks) + list(callbacks)
        recorder = _gradflow_recorder(job.study, rdir) if job.study.gradflow is not None and main else None
        if recorder is not None:
            callbacks.append(recorder)
        train(cfg, rdir, callbacks=callbacks, resume=True)
        if recorder is not None:
            _finish_gradflow(recorder, run.run_id)
    except (StudyError, ClaimLost, FolderBusy):
        raise
    except Exception as e:
        raise RunError(f"{rdir}: {one_line(e)}") from e


def work_together(job: Job, progress=print) -> None:
    """``work`` under torchrun (``WORLD_SIZE > 1``, e.g. ``torchrun --nnodes 2 ...``): all the
    processes train each run together, data parallel (bertlab.train); rank 0 claims the runs,
    keeps their files and tells the others, over a gloo group, whether a run is theirs to train."""
    import torch.distributed as dist
    group = dist.new_group(backend="gloo")
    main = dist.get_rank() == 0
    env = environment() | {"world_size": dist.get_world_size()}
    for run in job.runs:
        rdir = job.sdir / run.run_id
        tag = f"[{job.position[run.run_id]}/{len(job.position)}] {run.run_id}"
        claim = None
        if main and finished(rdir, run):
            progress(f"{tag}: finished, skipped")
        elif main:
            claim = take_claim(rdir, job.stale_after, job.invocation)
            if claim is None:
                holder = (read_claim(rdir) or (0, {}))[1]
                progress(f"{tag}: being trained by {holder.get('host')} pid {holder.get('pid')}, skipped")
        go = [claim is not None]
        dist.broadcast_object_list(go, src=0, group=group)
        if not go[0]:
            continue
        try:
            if main:
                progress(f"{tag}: {'resuming' if any(rdir.glob('checkpoint*')) else 'training'} "
                         f"with {dist.get_world_size()} processes")
                train_run(job, run, claim, env, together=True)
            else:
                _fit(job, run, rdir, [], main=False)
        except FolderBusy as e:  # every rank hears it from bertlab.train: all skip the run together
            progress(f"{tag}: {e}; skipped")
            continue
        finally:
            if claim is not None:
                claim.release()
        if main:
            with study_lock(job.sdir, job.stale_after, job.invocation):
                write_results(job.sdir)


def finish_study(job: Job, report: bool = True, progress=print) -> None:
    """Rewrite ``results.jsonl`` from the finished run folders and, unless a live process is still
    training a run of this study (it will do this in turn), the report: so whichever process
    finishes last writes it. ``bertlab report`` rebuilds it at any time."""
    with study_lock(job.sdir, job.stale_after, job.invocation):
        write_results(job.sdir)
        if not report:
            return
        busy = busy_runs(job.sdir, job.stale_after)
        if busy:
            run_id, holder = next(iter(busy.items()))
            progress(f"report: left to the last process to finish ({len(busy)} run(s) still training, "
                     f"e.g. {run_id} on {holder.get('host')} pid {holder.get('pid')}); "
                     f"`bertlab report {job.sdir}` builds it now")
            return
        from bertlab.report import build_report
        progress(f"report: {build_report(job.sdir)}")


def run_workers(job: Job, n: int, threads: int = 0, progress=print) -> None:
    """Train ``job`` with ``n`` worker processes on this machine, each taking the next unclaimed
    run (``work``), and print their progress prefixed ``[wI]``. Each is pinned to its place
    (``worker_places``). If one fails or dies, the others finish their current run and stop,
    then RunError says what happened; re-running resumes."""
    import multiprocessing
    from multiprocessing.connection import wait
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited torch threads or CUDA state
    # "stop after your current run", as one shared byte: an Event is five named semaphores, which
    # the resource tracker reports as leaked when this process is killed (SIGKILL, OOM killer)
    stop = ctx.RawValue("b", 0)
    procs, readers, current, skipped = [], {}, {}, set()
    failures: list[str] = []
    spent: list[float] = []
    try:
        for i, place in enumerate(worker_places(n, threads)):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(job, i, place, writer, stop), name=f"bertlab-w{i}")
            with _environ(CUDA_VISIBLE_DEVICES=place["gpu"]):
                proc.start()
            writer.close()
            procs.append(proc)
            readers[reader] = i
            progress(f"[w{i}] pid {proc.pid}: {place['text']}")
        while readers:
            for reader in wait(list(readers)):
                i = readers[reader]
                try:
                    kind, *msg = reader.recv()
                except (EOFError, OSError):  # the worker has exited, or died
                    del readers[reader]
                    procs[i].join()
                    code = procs[i].exitcode
                    if code != 0 and not any(f.startswith(f"[w{i}]") for f in failures):
                        how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                               else f"exited with status {code}")
                        failures.append(f"[w{i}] pid {procs[i].pid} {how}"
                                        + (f" while training {current[i]}" if i in current else ""))
                        stop.value = 1
                    continue
                if kind == "line":
                    if msg[0].endswith("skipped"):  # every worker passes every run: say it once
                        if msg[0] in skipped:
                            continue
                        skipped.add(msg[0])
                    progress(f"[w{i}] {msg[0]}")
                elif kind == "start":
                    current[i] = msg[0]
                elif kind == "done":
                    current.pop(i, None)
                    spent.append(msg[1])
                    left = sum(1 for r in job.runs if not finished(job.sdir / r.run_id, r))
                    busy = max(1, sum(p.is_alive() for p in procs))
                    progress(f"    {len(spent)} run(s) done here, {left} left: about "
                             f"{sum(spent) / len(spent) * left / min(busy, max(left, 1)) / 60:.0f} min "
                             f"with {busy} worker(s)")
                elif kind == "failed":
                    failures.append(f"[w{i}] {msg[0]}")
                    stop.value = 1
    except BaseException:  # Ctrl-C (the workers get it too) or an error here: let them stop cleanly
        stop.value = 1
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        raise
    if failures:
        raise RunError(f"{'; '.join(failures)}; the other workers stopped after their current run; "
                       f"re-run the same command to resume")


def worker_places(n: int, threads: int = 0) -> list[dict]:
    """Where each of ``n`` workers runs: a CUDA device round-robin where CUDA is present
    (``gpu``: a CUDA_VISIBLE_DEVICES entry), and its equal share of the cores this process may
    use (``os.sched_getaffinity``: a Slurm allocation's, not the whole node's), with that many torch
    threads unless ``threads`` is given."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = _visible_gpus()
    places = []
    for i in range(n):
        share = cores[i * len(cores) // n:(i + 1) * len(cores) // n] or [cores[i % len(cores)]]
        gpu = gpus[i % len(gpus)] if gpus else None
        t = threads or len(share)
        places.append({"gpu": gpu, "cores": share, "threads": t,
                       "text": (f"CUDA device {gpu}, " if gpu is not None else "")
                               + f"cores {','.join(map(str, share))}, {t} torch thread(s)"})
    return places


def _visible_gpus() -> list[str]:
    import torch
    if not torch.cuda.is_available():
        return []
    listed = [s.strip() for s in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    return (listed or [str(i) for i in range(torch.cuda.device_count())])[:torch.cuda.device_count()]


@contextlib.contextmanager
def _environ(**values):
    """Set (or, for None, leave alone) environment variables while the block runs: a spawned
    worker inherits them from birth, before torch reads them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ParentGone(Exception):
    """The study process a worker reports to has gone (killed): the worker stops quietly."""


def _worker_main(job: Job, index: int, place: dict, conn, stop) -> None:
    """One worker of ``run_workers``: pin to its place, then ``work`` on the shared job, sending
    progress to the parent through ``conn``. ``stop``: a shared byte the parent sets to 1. When
    the parent is gone (its end of ``conn`` closed), the worker stops at its next message without
    a BrokenPipeError traceback; its run keeps its checkpoint, and the claim is released."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _die_with_parent()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, place["cores"])
    import torch
    torch.set_num_threads(place["threads"])

    def send(*message) -> None:
        try:
            conn.send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise ParentGone from None

    try:
        work(job, progress=lambda line: send("line", line), stop=lambda: bool(stop.value), event=send)
    except KeyboardInterrupt:
        sys.exit(130)
    except ParentGone:
        sys.exit(1)
    except Exception as e:
        try:
            send("failed", one_line(e))
        except ParentGone:
            pass
        sys.exit(2)


def _die_with_parent() -> None:
    """SIGTERM this worker when the study process that started it dies, however it dies (a
    SIGKILL runs none of the parent's own cleanup): the worker then stops its run and releases its
    claim (``_exit_on_sigterm``), so a re-run resumes the run at once instead of finding it held by
    an orphan that trains on unseen and dies at its next message to the parent. Linux:
    ``prctl(PR_SET_PDEATHSIG)``, the kernel's signal at the parent's death; elsewhere a thread
    that waits on the parent's sentinel."""
    import multiprocessing
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing
        return
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if not armed:
        def watch():
            from multiprocessing.connection import wait
            wait([parent.sentinel])
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=watch, name="bertlab-parent-watch", daemon=True).start()
    elif os.getppid() != parent.pid:  # the parent died before prctl: its signal will never come
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_on_sigterm(signum, frame):
    """SIGTERM (Slurm's scancel, a time limit) as SystemExit: claims are released on the way out."""
    sys.exit(128 + signum)


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
    from bertlab.config import config_from_dict
    from bertlab.datasets.prepare import load_splits, mention_counts, tag_counts
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
        "train_tags": tag_counts(train_sents), "best_dev_f1": out.get("dev", {}).get("viterbi", {}).get("micro_f1"), "deterministic": deterministic,
        **({"fold": splits.test.notes["fold"]} if splits.test is not None and "fold" in splits.test.notes else {})})


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
    commit = git_commit()
    if commit:
        env["git"] = commit
    return env


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    """The commit of the bertlab source this process runs (``+dirty`` when its ``bertlab/`` has
    uncommitted changes), or None outside a git checkout (an installed wheel) or without git: so a
    study trained across sessions shows in its report whether every run had the same code.
    ``root``: the checkout (default: the one this module is in)."""
    import subprocess
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "bertlab"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


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
    return read_json(path, default)


# ---- command line -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``bertlab experiment NAME [--scale S] [--only k=v ...] [--set k=v ...] [--out runs]
    [--shard I/N] [--workers N]``."""
    ap = argparse.ArgumentParser(prog="bertlab experiment", description=(
        "Run (or resume) a study: every run of experiments/NAME.toml at a scale, then its report "
        "(docs/experiments.md). Re-running the same command resumes where it stopped."))
    ap.add_argument("name", help="study name (experiments/NAME.toml) or a path to a study .toml")
    ap.add_argument("--scale", default="default", choices=SCALES,
                    help="smoke (a few documents, seconds a run), default, or full (default: default); "
                         "writes OUT/NAME, or OUT/NAME-SCALE for a non-default scale")
    ap.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                    help="run only the runs with this axis value (repeatable), e.g. --only seed=0")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override a base config key (TOML value), e.g. --set train.epochs=1 or "
                         "--set models.bio_clinicalbert.path=/models/Bio_ClinicalBERT")
    ap.add_argument("--runs", "--out", dest="out", default="runs", metavar="DIR",
                    help="the folder that holds study folders: the study goes to RUNS/NAME (default runs/; "
                         "--out is the old name)")
    ap.add_argument("--experiments", default="experiments", help="folder of study files (default experiments/)")
    ap.add_argument("--list", action="store_true", help="print the runs and exit")
    ap.add_argument("--no-report", action="store_true", help="do not build report.md at the end")
    ap.add_argument("--reuse", action="append", default=[], metavar="DIR",
                    help="another study folder (repeatable): a run whose exact config finished there is "
                         "copied instead of trained (e.g. --reuse runs/btl_focal for btl_ablation's runs); "
                         "not for studies that record the gradient flow")
    ap.add_argument("--shard", metavar="I/N",
                    help="train only part I of N of the runs (0 <= I < N), e.g. --shard "
                         "$SLURM_ARRAY_TASK_ID/8; parts are balanced by estimated cost and the same on "
                         "every machine")
    ap.add_argument("--workers", type=int, default=1, metavar="N",
                    help="N processes on this machine, each taking the next unclaimed run, each on "
                         "its own CUDA device (round-robin) or its share of the CPU cores")
    ap.add_argument("--threads", type=int, default=0, metavar="T",
                    help="torch threads per process (default: with --workers N, cores / N; "
                         "otherwise torch's default)")
    ap.add_argument("--stale-after", type=float, default=STALE_AFTER, metavar="SECONDS",
                    help=f"take over a run whose claim's heartbeat is older than this (default "
                         f"{STALE_AFTER:.0f}, at least {MIN_STALE_AFTER:.0f}); on its own host a claim is taken "
                         f"over once its process is gone")
    ap.add_argument("--debug", action="store_true",
                    help="print the traceback of an error (also: environment BERTLAB_DEBUG=1)")
    args = ap.parse_args(argv)
    debug = args.debug or debug_requested()
    on_term = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a killed study releases its claims
    try:
        shard = parse_shard(args.shard) if args.shard else None
        if args.workers < 1 or args.threads < 0:
            raise StudyError(f"--workers {args.workers} --threads {args.threads}: expected --workers >= 1 "
                             f"and --threads >= 0")
        check_stale_after(args.stale_after)
        if args.list:
            study = load_study(args.name, args.scale, args.overrides, args.experiments)
            runs = select(expand(study), args.only, study)
            for run in shard_runs(runs, *shard) if shard else runs:
                print(run.run_id)
            return 0
        if args.threads and args.workers == 1:
            import torch
            torch.set_num_threads(args.threads)
        run_experiment(args.name, args.scale, args.out, args.only, args.overrides,
                       experiments_dir=args.experiments, report=not args.no_report, shard=shard,
                       workers=args.workers, threads=args.threads, stale_after=args.stale_after,
                       reuse=args.reuse)
    except KeyboardInterrupt as e:  # a run trained here says where it stopped (bertlab.train.TrainingInterrupted)
        from bertlab.train import TrainingInterrupted
        said = str(e) if isinstance(e, TrainingInterrupted) else "interrupted; re-run the same command to resume"
        print(f"bertlab experiment: {said}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `bertlab experiment NAME --list | head`: the reader left; bertlab.cli exits quietly
        raise
    except Exception as e:  # one line for a human (bertlab.errors); the traceback on request
        return fail("experiment", e, debug)
    finally:
        signal.signal(signal.SIGTERM, on_term)
    return 0


def check_stale_after(seconds: float) -> None:
    """``--stale-after``: a finite number of seconds, at least ``MIN_STALE_AFTER``. Zero, a negative
    number or NaN made every claim look stale (processes took each other's runs over) and the
    heartbeat, every ``stale_after / 4`` seconds, spin."""
    if not (math.isfinite(seconds) and seconds >= MIN_STALE_AFTER):
        raise StudyError(f"--stale-after {seconds:g}: expected a number of seconds >= {MIN_STALE_AFTER:g} "
                         f"(default {STALE_AFTER:g}): a claim whose heartbeat is older is taken over")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise StudyError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/8 "
                         f"(--shard $SLURM_ARRAY_TASK_ID/8 in an `sbatch --array=0-7` job)")
    return int(m.group(1)), int(m.group(2))
