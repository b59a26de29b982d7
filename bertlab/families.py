"""A study's comparison families (``[report.compare]``), read and checked without numpy or scipy:
``bertlab.experiment`` checks them when it reads a study file, ``bertlab.report`` tests them."""
from __future__ import annotations


def comparison_families(study: dict, opts: dict) -> list[dict]:
    """The study's questions, each a family of comparisons with its own Holm correction.

    ``[report.compare]`` declares them, ``NAME = { vary = AXIS, baseline = LEVEL }``
    (``vary = "decode"`` for the decoder): every level of AXIS is compared with LEVEL within every
    combination of the other factors (factorial contrasts); or ``NAME = { vary = AXIS, pairs =
    [[LEVEL, ITS_BASELINE], ...] }``: only those levels, each against its own baseline level (e.g.
    each model with a CRF layer against the same model without). Without ``[report.compare]``, the
    single family ``baseline`` compares every variant with ``[study] baseline`` (the older form)."""
    declared = opts.get("compare") or {}
    where = f"{study.get('source') or 'study.json'}: [report.compare]"
    expected = "{ vary = \"axis\", baseline = level } or { vary = \"axis\", pairs = [[level, baseline], ...] }"
    if not isinstance(declared, dict):
        raise ValueError(f"{where} must be a table of families, NAME = {expected}")
    levels = {k: list(v) for k, v in study.get("axes", {}).items() if k != "train.seed"}
    levels["decode"] = list(study.get("decodes", []))
    families = []
    for name, spec in declared.items():
        if not isinstance(spec, dict) or sorted(spec) not in (["baseline", "vary"], ["pairs", "vary"]):
            raise ValueError(f"{where} {name}: expected {expected}, got {spec!r}")
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
    if not families and study.get("baseline"):
        families.append({"name": "baseline", "vary": None, "baseline": dict(study["baseline"])})
    return families
