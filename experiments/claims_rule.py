"""The claims table's rules (docs/experiments.md, "How the cross-validated studies will re-decide
these rows", fixed before any of their tests), applied to the published study folders.

Each row names the studies that decide it and the claim each tests (``bertlab.report.verdicts``
gives one claim's category); this file adds what joins them into a row:

* **BTL row**: ``btl_cv`` decides it (BTL - ATL, macro F1 read by KNN); ``btl_paper_sum`` gives the
  paper's recipe, and counts only if that recipe trains (``trains``: ATL's best dev macro F1 under
  argmax, mean over its seeds, at least 0.25). The two *disagree* when one is supported and the
  other not supported: the row is then mixed. Otherwise the row is ``btl_cv``'s verdict.
* **focal row**: ``focal_cv``'s focal - CE (argmax).
* **ablation row**: weighted CE - CE (``focal_cv``, argmax) and KNN / calibrated - argmax under ATL
  (``btl_cv``), each its own verdict.
* **imbalance row**: per method of ``imbalance_cv``, against CE under argmax: it *helps rare types*
  when its tail F1 difference is established above 0 (Holm p < 0.025, the study file's rule); its
  macro F1 verdict is given beside it, and its cost to frequent types is read (head-band and micro
  F1 against CE), not decided; the post-hoc logit adjustment is CE's decode against argmax.

A study folder that is missing (not yet published) prints as such.

    python experiments/claims_rule.py docs/results
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from bertlab.report.verdicts import Claim, established, verdict
from bertlab.results import read_results

TRAINS_AT = 0.25  # btl_paper_sum's criterion: half of btl_focal's AdamW ATL dev macro F1 (0.50-0.51)

BTL = Claim("sampler", "btl", "atl", record={"decode": "knn"})
ROWS = {
    "BTL raises macro F1 over ATL": [("btl_cv", BTL), ("btl_paper_sum", BTL)],
    "focal loss raises macro F1 over CE": [("focal_cv", Claim("loss", "focal", "ce", record={"decode": "argmax"}))],
    "weighted CE, BTL and KNN each contribute": [
        ("focal_cv", Claim("loss", "weighted_ce", "ce", record={"decode": "argmax"})),
        ("btl_cv", Claim("decode", "knn", "argmax", within={"sampler": "atl"})),
        ("btl_cv", Claim("decode", "calibrated", "argmax", within={"sampler": "atl"})),
    ],
}
IMBALANCE_METHODS = ("wce_effective", "focal", "logit_adjusted", "balanced_softmax", "ldam_drw", "dice",
                     "label_smoothing", "resample_scrd")


def trains(study_dir: Path, at: float = TRAINS_AT) -> tuple[bool, float, int]:
    """``(trains, value, runs)`` for ``btl_paper_sum``: the mean over ATL's runs of each run's best
    dev macro F1 under argmax (its learning curve's maximum), against ``at``."""
    best = [max(v for v in row["curve"]["dev_f1_macro"] if v is not None)
            for row in read_results(study_dir / "results.jsonl")
            if row["axes"].get("sampler.name") == "atl" and row["decode"] == "argmax" and row.get("curve")]
    value = sum(best) / len(best) if best else math.nan
    return value >= at, value, len(best)


def frequent_cost(study_dir: Path, method: str, baseline: str = "ce") -> str:
    """What ``imbalance_cv``'s rule reads, without deciding, for a method's cost to frequent types:
    its head-band F1 (types with >= 500 training mentions) and micro F1 against CE under argmax."""
    report = json.loads((study_dir / "report.json").read_text(encoding="utf-8"))

    def label(setting):
        return f"setting={setting}, decode=argmax"
    mine, base = report["variants"].get(label(method)), report["variants"].get(label(baseline))
    if not mine or not base:
        return "not pooled yet"
    head = mine["bands"]["head"]["f1"] - base["bands"]["head"]["f1"]
    head_text = f"{head:+.4f} (untested)" if math.isfinite(head) else "none (no head-band type has test mentions)"
    micro = next((c for c in report["comparisons"] if c["family"] == "method" and c["metric"] == "f1_micro"
                  and c["variant"] == label(method)), None)
    if micro and math.isfinite(micro.get("p_holm", math.nan)):
        tested = f" (Holm p {micro['p_holm']:.3g})"
    else:
        tested = f" (not tested: {(micro or {}).get('excluded') or 'no test of record yet'})"
    return (f"head-band F1 {head_text}, micro F1 {mine['f1_micro']['mean'] - base['f1_micro']['mean']:+.4f}"
            f"{tested}")


def btl_row(cv, paper, paper_trains: bool) -> str:
    """The BTL row's category from ``btl_cv``'s and ``btl_paper_sum``'s verdicts (either None when
    that study is not published)."""
    if cv is None:
        return "not tested"
    if paper is not None and paper_trains and {cv.category, paper.category} == {"supported", "not supported"}:
        return "mixed"
    return cv.category


def main(results: Path) -> None:
    def one(study: str, claim: Claim):
        folder = results / study
        if not (folder / "report.json").exists():
            print(f"  {study}: not published")
            return None
        v = verdict(folder, claim)
        print(f"  {study}: {v.sentence()}")
        return v

    for row, tests in ROWS.items():
        print(row)
        found = [one(study, claim) for study, claim in tests]
        if row.startswith("BTL"):
            paper_ok = False
            if found[1] is not None:
                paper_ok, value, n = trains(results / "btl_paper_sum")
                print(f"  btl_paper_sum trains: {'yes' if paper_ok else 'no'} (ATL best dev macro F1, argmax, "
                      f"mean of {n} runs: {value:.4f}; criterion {TRAINS_AT})")
            category = btl_row(found[0], found[1], paper_ok)
            budget = found[0] is not None and category != "not tested" and found[0].at_this_budget
            print(f"  row: {category}{' at this budget' if budget else ''}")
    print("imbalance_cv: which methods help rare types (tail F1 vs CE, argmax)")
    if not (results / "imbalance_cv" / "report.json").exists():
        print("  imbalance_cv: not published")
        return
    for method in IMBALANCE_METHODS:
        tail = verdict(results / "imbalance_cv", Claim("method", method, "ce", {"decode": "argmax"}, metric="f1_tail"))
        macro = verdict(results / "imbalance_cv", Claim("method", method, "ce", {"decode": "argmax"}))
        helps = tail.record is not None and established(tail.record, tail.alpha) == 1
        print(f"  {method}: helps rare types: {'yes' if helps else 'no'}\n    {tail.sentence()}\n    {macro.sentence()}")
        print(f"    cost to frequent types (read, not decided): {frequent_cost(results / 'imbalance_cv', method)}")
    for metric in ("f1_tail", "f1_macro"):
        print("  " + verdict(results / "imbalance_cv", Claim("posthoc", "logit_adjusted", "argmax", metric=metric)).sentence())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results"))
