"""The report's two-way ANOVA tables (``[report] anova``): Type II sums of squares of one metric over
two factors of the study, the seed as a block factor by default (``bertlab.stats.anova_two_way``)."""
from __future__ import annotations

import math

from bertlab import stats
from bertlab.report.rows import metric_value


def anova_table(rows: list[dict], spec: dict) -> dict:
    """One ``[report] anova`` table ``spec`` (``a``, ``b``, ``metric``, ``decode``, ``block``) over the
    results ``rows``. With a block factor, only the blocks (seeds) that have every cell are used (a
    study in progress). Returns the spec's names and ``status``: ``"no runs"`` (no finished run has
    the metric), ``"no complete block"``, ``"one run per cell"`` (no residual to test against; with
    ``have``, the blocks there are), or ``"table"`` with ``json`` (report.json's ``anova`` entry:
    ``a``, ``b``, ``metric``, ``decode``, ``table``), the runs used, whether the block was used and
    the blocks left out (``incomplete``)."""
    a, b = spec["a"], spec["b"]
    metric, decode = spec.get("metric", "dev_f1_micro"), spec.get("decode", "argmax")
    block = spec.get("block", "train.seed")
    out = {"a": a, "b": b, "metric": metric, "decode": decode, "block": block}
    use = [r for r in rows if r["decode"] == decode and math.isfinite(metric_value(r, metric))]
    if not use:
        return {**out, "status": "no runs"}
    blocks = [r["axes"].get(block) for r in use] if block else []
    use_block = bool(block) and None not in blocks and len(set(map(str, blocks))) > 1
    incomplete = []
    if use_block:  # a complete block design: keep the seeds that every cell has (a study in progress)
        cells = {(str(r["axes"][a]), str(r["axes"][b])) for r in use}
        have = {}
        for r in use:
            have.setdefault(str(r["axes"][block]), set()).add((str(r["axes"][a]), str(r["axes"][b])))
        incomplete = sorted(k for k, c in have.items() if c != cells)
        use = [r for r in use if str(r["axes"][block]) not in incomplete]
        blocks = [r["axes"][block] for r in use]
        use_block = len(set(map(str, blocks))) > 1
        if not use:
            return {**out, "status": "no complete block"}
    table = stats.anova_two_way([metric_value(r, metric) for r in use], [str(r["axes"][a]) for r in use],
                                [str(r["axes"][b]) for r in use],
                                block=[str(k) for k in blocks] if use_block else None)
    if table["Residual"]["df"] == 0:  # one run per cell (one seed so far): nothing to test against
        return {**out, "status": "one run per cell", "runs": len(use),
                "have": sorted({str(r["axes"].get(block)) for r in use}) if block else []}
    return {**out, "status": "table", "runs": len(use), "use_block": use_block, "incomplete": incomplete,
            "json": {"a": a, "b": b, "metric": metric, "decode": decode, "table": dict(table)}}
