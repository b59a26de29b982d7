"""A claim's verdict in the project's categories, from a built study folder, by the rules that
docs/experiments.md fixed before the cross-validated studies printed any test ("How the
cross-validated studies will re-decide these rows").

A claim says "A raises metric m over B": one family of the study's ``[report.compare]`` (e.g.
``sampler``), the level claimed to win (``btl``), the level it is compared with (``atl``), and the
fields that pick the comparison of record out of that family (the decode of record,
``{"decode": "knn"}``). Every other comparison of the same two levels, under another decode or on
another tested metric, is a *reading* of the same trained models. With "established" meaning Holm
p < the study's alpha on the test of record (the report's ``p_holm``):

* **supported**: a gain established on the comparison of record, and a loss on no reading;
* **not supported**: a loss established on it, or its 95% interval ends below the study's
  ``target_difference`` (a gain of the claimed size is ruled out), and a gain on no reading;
* **mixed**: one reading establishes a gain and another a loss;
* **inconclusive**: anything else (the verdict carries the report's MDD, so that "not established"
  is not read as "no effect of that size");
* **not tested**: the comparison of record has no test yet (a study whose folds are not all in).

An arm whose mean dev curve on the primary metric (over its runs: folds and seeds) has not
plateaued by its last epoch, by the plateau rule of ``[report] plateau`` (``training.plateau_epoch``:
no epoch e whose next 3 epochs all stay within 0.005 of it), marks the verdict "at this budget".
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from bertlab.report.compute import report_options
from bertlab.report.rows import group_variants, load_study_results, variant_label
from bertlab.report.training import curve_key, curves_of, plateau_epoch, seed_mean_curve

CATEGORIES = ("supported", "not supported", "mixed", "inconclusive", "not tested")


@dataclass(frozen=True)
class Claim:
    """"``variant`` raises ``metric`` over ``baseline``" in report family ``family``; ``record``:
    the label fields (short names, as report labels print them) that pick the comparison of record,
    e.g. ``{"decode": "knn"}``; ``within``: fields every reading keeps (e.g. ``{"sampler": "atl"}``
    for a decode claim made under ATL only). ``metric`` None: the study's primary metric (without one, the first it tests)."""
    family: str
    variant: str
    baseline: str
    record: dict = field(default_factory=dict)
    within: dict = field(default_factory=dict)
    metric: str | None = None


@dataclass
class Verdict:
    """A claim's category; the comparison of record (``record``: report.json's, None when the
    study has no such comparison yet) and the other readings (``others``); the readings that
    establish a gain or a loss (``gains``, ``losses``: "variant vs baseline: metric diff (Holm p)");
    each compared variant's budget (``plateaued``: variant label -> whether its mean dev curve
    plateaued; variants without curves are absent); the study's alpha and target."""
    claim: Claim
    category: str
    record: dict | None
    others: list[dict]
    gains: list[str]
    losses: list[str]
    plateaued: dict
    alpha: float
    target: float | None

    @property
    def at_this_budget(self) -> bool:
        """Whether an arm of the comparison of record had no dev plateau by its last epoch."""
        return not all(self.plateaued.values())

    def sentence(self) -> str:
        """The verdict in one line: category, difference, interval, Holm p, MDD, the readings."""
        c = self.claim
        words = f"{c.variant} over {c.baseline} ({c.family}"
        words += "".join(f", {k}={v}" for k, v in {**c.within, **c.record}.items()) + ")"
        if self.record is None:
            return f"{words}: not tested (the study has no such comparison yet)"
        r = self.record
        head = f"{words}, {r['metric']}: {self.category}"
        if self.at_this_budget and self.category != "not tested":
            head += " at this budget"
        if self.category == "not tested":
            return f"{head} (diff {r['diff']:+.4f}: {r.get('excluded') or 'no test of record yet'})"
        lo, hi = r["ci"]
        text = (f"{head}: diff {r['diff']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], Holm p {r['p_holm']:.3g} "
                f"(alpha {self.alpha:g})")
        if self.category == "inconclusive":
            text += f"; MDD {r['mdd']:.4f}" if _finite(r.get("mdd")) else "; MDD unknown"
        if self.gains:
            text += "; gain established on " + "; ".join(self.gains)
        if self.losses:
            text += "; loss established on " + "; ".join(self.losses)
        still = [v for v, ok in self.plateaued.items() if not ok]
        if still:
            text += "; no dev plateau by the last epoch: " + "; ".join(still)
        return text


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def parse_label(label: str) -> dict:
    """A report variant label (``sampler=btl, decode=knn``) as ``{short name: value}``."""
    return dict(part.split("=", 1) for part in label.split(", "))


def readings(comparisons: list[dict], claim: Claim, metric: str) -> tuple[dict | None, list[dict]]:
    """``(record, others)``: the claim's comparison of record (its family, its two levels, the
    fields of ``record`` and ``within``, on ``metric``; None if the report has none yet) and the
    other readings of the same trained models: the comparisons of the same two levels whose labels
    agree with the record's in every field but the decode, on every tested metric. A record that
    more than one comparison matches is an error naming the fields that differ; so is a field or
    level that no comparison of the family has (a typo would otherwise read "not tested" forever)."""
    family = [c for c in comparisons if c.get("family") == claim.family]
    _check_names(family, claim)
    pair = []
    for c in family:
        a, b = parse_label(c["variant"]), parse_label(c["baseline"])
        varied = [k for k in a if a.get(k) != b.get(k)]
        if len(varied) == 1 and (a[varied[0]], b[varied[0]]) == (claim.variant, claim.baseline) and \
                all(a.get(k) == str(v) for k, v in claim.within.items()):
            pair.append((c, a))
    fixed = {**claim.within, **claim.record}
    records = [c for c, a in pair if c["metric"] == metric and all(a.get(k) == str(v) for k, v in fixed.items())]
    if len(records) > 1:
        cells = sorted({c["variant"] for c in records})
        raise ValueError(f"claim {claim.variant} over {claim.baseline} in family {claim.family!r}: its record "
                         f"matches {len(records)} comparisons ({'; '.join(cells)}); name the fields that tell "
                         f"them apart in its record or within")
    if not records:
        return None, []
    record = records[0]
    models = {k: v for k, v in parse_label(record["variant"]).items() if k != "decode"}
    others = [c for c, a in pair if c is not record and {k: v for k, v in a.items() if k != "decode"} == models]
    return record, others


def _check_names(family: list[dict], claim: Claim) -> None:
    """ValueError when the family has comparisons but none with a field of ``claim.record`` or
    ``claim.within``, one of their values, or the claim's two levels."""
    if not family:
        return  # nothing tested yet (a study still running): nothing to check against
    labels = [parse_label(c[side]) for c in family for side in ("variant", "baseline")]
    values: dict = {}
    for label in labels:
        for k, v in label.items():
            values.setdefault(k, set()).add(v)
    where = f"claim {claim.variant} over {claim.baseline} in family {claim.family!r}"
    for k, v in {**claim.within, **claim.record}.items():
        if k not in values:
            raise ValueError(f"{where}: no field {k!r} in its comparisons; they have {sorted(values)}")
        if str(v) not in values[k]:
            raise ValueError(f"{where}: {k}={v} is in none of its comparisons; {k} is one of {sorted(values[k])}")
    levels = {v for vs in values.values() for v in vs}
    for level in (claim.variant, claim.baseline):
        if level not in levels:
            raise ValueError(f"{where}: no comparison has the level {level!r}")


def established(c: dict, alpha: float) -> int:
    """+1 for a gain established by comparison ``c`` (Holm p < alpha, difference above 0), -1 for a
    loss, 0 otherwise (untested comparisons, e.g. by construction, have no Holm p)."""
    p = c.get("p_holm")
    if not _finite(p) or not p < alpha or not _finite(c.get("diff")) or c["diff"] == 0:
        return 0
    return 1 if c["diff"] > 0 else -1


def categorize(record: dict | None, others: list[dict], alpha: float, target: float | None) -> str:
    """The category of a claim from its comparison of record and its other readings (the module
    docstring's rules)."""
    if record is None or not _finite(record.get("p_holm")):
        return "not tested"
    signs = [established(c, alpha) for c in [record, *others]]
    gain, loss = 1 in signs, -1 in signs
    own = signs[0]
    ruled_out = target is not None and record.get("ci") is not None and record["ci"][1] < target
    if own == 1 and not loss:
        return "supported"
    if (own == -1 or ruled_out) and not gain:
        return "not supported"
    if gain and loss:
        return "mixed"
    return "inconclusive"


def _describe(c: dict) -> str:
    return f"{c['variant']} vs {c['baseline']}: {c['metric']} {c['diff']:+.4f} (Holm p {c['p_holm']:.3g})"


def dev_plateaus(study_dir: str | Path) -> dict:
    """``{variant label: plateaued}`` of every variant with learning curves: the plateau rule on its
    mean dev curve of the primary metric over its runs (every fold and seed)."""
    return _plateaus(*load_study_results(study_dir))


def _plateaus(study: dict, rows: list[dict]) -> dict:
    opts = report_options(study)
    key = curve_key(opts)
    spec = opts.get("plateau") or {}
    short = {**study.get("short_names", {}), "decode": "decode"}
    out = {}
    for k, group in group_variants(rows, list(study.get("axes", {}))).items():
        curves = curves_of(group)
        mean = seed_mean_curve(curves, key) if curves else []
        if len(mean):
            out[variant_label(k, short)] = plateau_epoch(mean, float(spec.get("delta", 0.005)),
                                                         int(spec.get("window", 3)))[1]
    return out


def verdict(study_dir: str | Path, claim: Claim) -> Verdict:
    """``claim``'s verdict from the built study folder ``study_dir`` (its report.json, study.json
    and results.jsonl; run ``bertlab report`` first). Reads, writes nothing."""
    study_dir = Path(study_dir)
    report_file = study_dir / "report.json"
    if not report_file.exists():
        raise FileNotFoundError(f"{report_file}: not found; build the report first (`bertlab report {study_dir}`)")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    study, rows = load_study_results(study_dir)
    opts = report_options(study)
    families = [f["name"] for f in report.get("families", [])]
    if claim.family not in families:
        raise ValueError(f"{report_file}: no comparison family {claim.family!r}; the study's are {families}")
    metric = claim.metric or opts["metrics"][0]  # the primary metric, or the first one tested
    record, others = readings(report["comparisons"], claim, metric)
    found = [record, *others] if record else []
    alpha, target = float(opts["alpha"]), opts.get("target_difference")
    category = categorize(record, others, alpha, target)
    signs = {id(c): established(c, alpha) for c in found}
    plateaus = _plateaus(study, rows)
    compared = [record["variant"], record["baseline"]] if record else []
    return Verdict(claim, category, record, others,
                   gains=[_describe(c) for c in found if signs[id(c)] == 1],
                   losses=[_describe(c) for c in found if signs[id(c)] == -1],
                   plateaued={v: plateaus[v] for v in compared if v in plateaus},
                   alpha=alpha, target=target)
