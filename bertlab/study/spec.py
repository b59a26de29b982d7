"""Reading a study file: ``experiments/NAME.toml`` at a scale -> ``Study`` -> its ``Run``s.

``load_study`` parses and checks the file (every error names the file and the key), ``expand``
makes the runs (the cartesian product of the [sweep] axes), ``select`` keeps those ``--only``
names, and ``check_models`` / ``check_folds`` / ``build_train_config`` check, before anything
trains, that every run can: its checkpoint is there, its corpus has enough documents for the
folds, its config is one ``bertlab train`` accepts. The file's format is in docs/experiments.md.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bertlab.errors import BertlabError

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
# what [report] metrics may test (bertlab.report.rows.METRICS): f1_tail is tested, not selected on
TESTED_METRICS = PRIMARY_METRICS + ("f1_tail",)
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
# classic taggers fitted directly, with no training loop (bertlab.baselines.direct); they decode by Viterbi
DIRECT_BASELINES = ("hmm", "crf")
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
        shipped = Path(__file__).resolve().parents[2] / "experiments"  # bertlab/study/spec.py -> the checkout
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
    where = str(path)
    raw = _read_study_file(path, scale)
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
    _apply_scale(scales.get(scale, {}), base, axes, f"{where}: [scale.{scale}]")
    _apply_overrides(overrides, base, axes, models)
    axes = _checked_axes(axes, models, where)

    base.setdefault("eval", {}).setdefault("decode", ["argmax"])
    decodes = base["eval"]["decode"]
    if isinstance(decodes, str):
        base["eval"]["decode"] = decodes = [decodes]
    baseline = dict(head.get("baseline", {}))
    _check_baseline(baseline, axes, decodes, where)
    report = dict(raw.get("report", {}))
    _check_report(report, base, axes, decodes, where, raw.get("sweep", {}))
    return Study(name=study_name, path=path, scale=scale, description=head.get("description", ""),
                 base=base, axes=axes, baseline=baseline, report=report,
                 gradflow=raw.get("gradflow"), scale_overrides=dict(scales.get(scale, {})),
                 overrides=list(overrides), folds=folds, fold_seed=fold_seed)


def _read_study_file(path: Path, scale: str) -> dict:
    """The study file as a dict: valid TOML with only study sections, read at a known ``scale``."""
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
    return raw


def _apply_scale(table: dict, base: dict, axes: dict, where: str) -> None:
    """A ``[scale.SCALE]`` table: dotted keys set [base] values, its ``sweep`` replaces whole axes
    (``folds`` and ``fold_seed`` are read with [study]'s)."""
    for key, value in table.items():
        if key in ("folds", "fold_seed"):
            continue
        if key == "sweep":
            for axis, values in value.items():
                axes[axis] = values
        else:
            _set_dotted(base, key, value, f"{where} {key!r}")


def _apply_overrides(overrides, base: dict, axes: dict, models: dict) -> None:
    """``--set key=value`` items: ``models.NAME.key`` into [models], a swept key pins its axis to
    the one value, any other dotted key into [base]."""
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


def _checked_axes(axes: dict, models: dict, where: str) -> dict:
    """The [sweep] axes checked (non-empty lists; a model axis resolved to model tables; table and
    bundle axes named; names that fit in a folder name), with the fold and the seed moved last."""
    from bertlab.config import is_folder_name
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
    return {k: v for k, v in axes.items() if k not in (FOLD_AXIS, "train.seed")} | {
        k: axes[k] for k in (FOLD_AXIS, "train.seed") if k in axes}


def _check_baseline(baseline: dict, axes: dict, decodes: list, where: str) -> None:
    """``[study] baseline``: each key a [sweep] axis (or ``decode``) and each value one it sweeps."""
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


def _check_report(report: dict, base: dict, axes: dict, decodes: list, where: str, sweep: dict) -> None:
    """``[report]``: known keys, then its primary metric, ANOVA and comparisons (``sweep``: the
    file's own [sweep], before a scale or --set narrowed it)."""
    from bertlab.families import REPORT_OPTIONS
    for key in report:
        if key not in REPORT_OPTIONS:
            raise StudyError(f"{where}: [report] {key}: unknown key; expected one of {', '.join(REPORT_OPTIONS)}")
    _check_metrics(report, where)
    _check_primary(report, base, axes, where)
    _check_anova(report.get("anova"), axes, decodes, where)
    full_sweep = {k: [axis_value(k, v) for v in vs] for k, vs in sweep.items()
                  if k != "model" and isinstance(vs, list)}
    _check_compare(report.get("compare"), report.get("by_construction"), axes, decodes, where, full_sweep)


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


def _check_metrics(report: dict, where) -> None:
    """``[report] metrics``: a list of metric names (``TESTED_METRICS``); ``f1_tail`` needs ``[report]
    tail_types``, the tail class set named before the runs (a list of entity types)."""
    metrics = report.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, list) or not metrics:
            raise StudyError(f"{where}: [report] metrics: expected a list of metrics, some of "
                             f"{', '.join(TESTED_METRICS)}; got {metrics!r}")
        for m in metrics:
            if m not in TESTED_METRICS:
                raise StudyError(f"{where}: [report] metrics: {m!r} is not a metric; expected some of "
                                 f"{', '.join(TESTED_METRICS)}")
    tail = report.get("tail_types")
    if tail is not None and (not isinstance(tail, list) or not tail
                             or not all(isinstance(t, str) and t for t in tail)):
        raise StudyError(f"{where}: [report] tail_types: expected a list of entity types (e.g. "
                         f"[\"Shape\", \"Texture\"]), got {tail!r}")
    if "f1_tail" in (metrics or []) and tail is None:
        raise StudyError(f"{where}: [report] metrics: 'f1_tail' needs [report] tail_types, the entity types of "
                         f"the tail, named before the runs")


def _check_primary(report: dict, base: dict, axes: dict, where) -> None:
    """``[report] primary`` names a metric every run selects its checkpoints and stops early on:
    it sets ``[eval] select``, which must not say otherwise (in [base.eval] or a model's recipe).
    ``co_primary`` names the claim's other metrics (e.g. a tail F1), tested as primary too; they
    select nothing, and sharing α among the primaries (``[report] alpha``) is the study's call."""
    primary = report.get("primary")
    target = report.get("target_difference")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not 0 < target < 1):
        raise StudyError(f"{where}: [report] target_difference: expected a difference between 0 and 1 "
                         f"(e.g. 0.02), got {target!r}")
    co = report.get("co_primary")
    if co is not None:
        if primary is None:
            raise StudyError(f"{where}: [report] co_primary: needs [report] primary, the metric that selects "
                             f"checkpoints; co_primary names the claim's other metrics")
        if not isinstance(co, list) or not all(isinstance(m, str) for m in co):
            raise StudyError(f"{where}: [report] co_primary: expected a list of metric names, got {co!r}")
        metrics = report.get("metrics") or []
        for m in co:
            if m not in TESTED_METRICS or m not in metrics or m == primary or co.count(m) > 1:
                raise StudyError(f"{where}: [report] co_primary: {m!r} must be a metric of [report] metrics = "
                                 f"{metrics}, other than primary {primary!r} and named once")
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
