"""A study's comparison families (``[report.compare]``), read and checked without numpy or scipy:
``bertlab.study`` checks them when it reads a study file, ``bertlab.report`` tests them."""
from __future__ import annotations

# the keys of a study's [report] table (bertlab.report.rows.DEFAULTS holds their defaults)
REPORT_OPTIONS = ("metrics", "compare", "by_construction", "alpha",
                  "permutation_resamples", "permutation_seed", "bands", "min_support", "anova", "figures",
                  "confusion", "type_shares", "plateau", "primary", "co_primary", "target_difference", "tail_types")


def comparison_families(study: dict, opts: dict) -> list[dict]:
    """The study's questions, each a family of comparisons with its own Holm correction.

    ``[report.compare]`` declares them, ``NAME = { vary = AXIS, baseline = LEVEL }``
    (``vary = "decode"`` for the decoder): every level of AXIS is compared with LEVEL within every
    combination of the other factors (factorial contrasts); or ``NAME = { vary = AXIS, pairs =
    [[LEVEL, ITS_BASELINE], ...] }``: only those levels, each against its own baseline level (e.g.
    each model with a CRF layer against the same model without). Either form takes ``within = {
    AXIS = LEVEL, ... }`` (``decode`` included): only the combinations with those levels, e.g. the
    losses against CE under argmax only, where a second decoder would otherwise double the family.
    Without ``[report.compare]``, the single family ``baseline`` compares every variant with
    ``[study] baseline`` (the older form)."""
    declared = opts.get("compare") or {}
    where = f"{study.get('source') or 'study.json'}: [report.compare]"
    expected = ("{ vary = \"axis\", baseline = level } or { vary = \"axis\", pairs = [[level, baseline], ...] }, "
                "either with an optional within = { axis = level, ... }")
    if not isinstance(declared, dict):
        raise ValueError(f"{where} must be a table of families, NAME = {expected}")
    levels = {k: list(v) for k, v in study.get("axes", {}).items() if k not in ("train.seed", "data.fold")}
    levels["decode"] = list(study.get("decodes", []))
    families = []
    for name, spec in declared.items():
        if not isinstance(spec, dict) or sorted(set(spec) - {"within"}) not in (["baseline", "vary"], ["pairs", "vary"]):
            raise ValueError(f"{where} {name}: expected {expected}, got {spec!r}")
        within = spec.get("within", {})
        if not isinstance(within, dict) or ("within" in spec and not within):
            raise ValueError(f"{where} {name}: within must be a non-empty table {{ axis = level, ... }}, got {within!r}")
        for axis, level in within.items():
            if axis not in levels or axis == spec["vary"]:
                raise ValueError(f"{where} {name}: within: {axis!r} is not an axis of the study other than "
                                 f"vary (axes: {', '.join(a for a in levels if a != spec['vary'])})")
            if str(level) not in map(str, levels[axis]):
                raise ValueError(f"{where} {name}: within: {level!r} is not a level of {axis} "
                                 f"(levels: {', '.join(map(str, levels[axis]))})")
        vary = spec["vary"]
        if vary not in levels:
            raise ValueError(f"{where} {name}: vary = {vary!r} is not an axis of the study "
                             f"(axes: {', '.join(levels)})")
        pairs = spec.get("pairs", [])
        if "pairs" in spec and (not isinstance(pairs, list) or not pairs or not all(
                isinstance(pair, list) and len(pair) == 2 and pair[0] != pair[1] for pair in pairs)
                or len({pair[0] for pair in pairs}) < len(pairs)):
            raise ValueError(f"{where} {name}: pairs must be a non-empty list of [level, baseline level] "
                             f"pairs of two different levels, each level once, got {pairs!r}")
        for level in [spec["baseline"]] if "baseline" in spec else [v for pair in pairs for v in pair]:
            if level not in levels[vary]:
                what = "baseline" if "baseline" in spec else "pairs"
                raise ValueError(f"{where} {name}: {what}: {level!r} is not a level of {vary} "
                                 f"(levels: {', '.join(map(str, levels[vary]))})")
        families.append({"name": name, "vary": vary, "baseline": spec.get("baseline"),
                         "pairs": [tuple(pair) for pair in pairs]})
        if within:  # only when declared: report.json of the studies without it stays as it was
            families[-1]["within"] = {axis: str(level) for axis, level in within.items()}
    if not families and study.get("baseline"):
        families.append({"name": "baseline", "vary": None, "baseline": dict(study["baseline"])})
    return families


def construction_rules(study: dict, opts: dict, other_levels: dict | None = None) -> list[dict]:
    """The variants whose comparisons follow from the design, not from a measurement
    (``[[report.by_construction]]``), each ``{where = {AXIS = LEVEL or [LEVEL, ...], ...}, why =
    "..."}``: a comparison whose variant or baseline matches every key of a ``where`` (``decode``
    included) is shown with ``why`` and left out of its Holm family, like the constants the report
    finds itself. E.g. BTL read out by argmax, a decoder its objective rules out where a corpus has
    more than one entity type. Returned with every level as a list.

    Each level must be one of the study's, or of ``other_levels`` (``{axis: [level, ...]}``: the
    full sweep, read beside a scale that sweeps fewer levels; the report, which sees one scale,
    passes ``None`` and then checks only the axes: a level that this scale does not sweep matches
    nothing)."""
    declared = opts.get("by_construction") or []
    where = f"{study.get('source') or 'study.json'}: [[report.by_construction]]"
    levels = {k: [str(x) for x in v] for k, v in study.get("axes", {}).items() if k not in ("train.seed", "data.fold")}
    levels["decode"] = [str(d) for d in study.get("decodes", [])]
    if not isinstance(declared, list):
        raise ValueError(f"{where} must be a list of tables {{ where = {{ AXIS = LEVEL, ... }}, why = \"...\" }}")
    rules = []
    for i, rule in enumerate(declared):
        at = f"{where} entry {i + 1}"
        if not isinstance(rule, dict) or sorted(rule) != ["where", "why"]:
            raise ValueError(f"{at}: expected {{ where = {{ AXIS = LEVEL, ... }}, why = \"...\" }}, got {rule!r}")
        if not isinstance(rule["why"], str) or not rule["why"].strip():
            raise ValueError(f"{at}: why must say, in words, why the difference follows from the design")
        if not isinstance(rule["where"], dict) or not rule["where"]:
            raise ValueError(f"{at}: where must be a non-empty table {{ AXIS = LEVEL, ... }}")
        match = {}
        for axis, value in rule["where"].items():
            if axis not in levels:
                raise ValueError(f"{at}: where: {axis!r} is not an axis of the study (axes: {', '.join(levels)})")
            values = value if isinstance(value, list) else [value]
            known = levels[axis] + [str(x) for x in (other_levels or {}).get(axis, [])]
            for v in values if other_levels is not None else []:
                if str(v) not in known:
                    raise ValueError(f"{at}: where: {v!r} is not a level of {axis} "
                                     f"(levels: {', '.join(dict.fromkeys(known))})")
            match[axis] = [str(v) for v in values]
        rules.append({"where": match, "why": rule["why"].strip()})
    return rules


def by_construction(key: tuple, rules: list[dict]) -> list[str]:
    """The ``why`` of every rule whose ``where`` a variant (its ``((axis, level), ...)`` key) matches."""
    values = {axis: str(level) for axis, level in key}
    return [r["why"] for r in rules if all(values.get(axis) in levels for axis, levels in r["where"].items())]
