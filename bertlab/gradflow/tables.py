"""Gradient-flow rows on disk (``gradflow.csv`` / ``.jsonl``) and the summaries read from them."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from bertlab.files import write_jsonl, write_text


COLUMNS = ("step", "layer", "component", "statistic", "value")
STATE_FILE = "state.json"  # the recorder's running state at the last checkpoint (for resume)


def layer_sort_key(layer: str) -> tuple:
    """Bottom to top: embeddings, layer.0, layer.1, ..., head, other, all."""
    if layer.startswith("layer."):
        return (1, int(layer.split(".")[1]))
    return ({"embeddings": 0, "head": 2, "other": 3}.get(layer, 4), 0)


def write_rows(rows: list[dict], out_dir, jsonl: bool = True) -> Path:
    """Write rows to ``out_dir/gradflow.csv`` (and ``out_dir/gradflow.jsonl``), each atomically
    (a crash mid-write leaves the previous file); returns the CSV path. Values are written with
    ``repr``, so :func:`read_rows` gives back the same floats."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gradflow.csv"
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({**r, "value": repr(r["value"])})
    write_text(path, buf.getvalue())
    if jsonl:
        write_jsonl(out_dir / "gradflow.jsonl", rows)
    return path


def read_rows(path) -> list[dict]:
    """Read a ``gradflow.csv`` back into rows (step int, value float)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{**r, "step": int(r["step"]), "value": float(r["value"])} for r in csv.DictReader(f)]


def _select(rows, statistic, layer=None, component=None) -> list[dict]:
    return [r for r in rows if r["statistic"] == statistic
            and (layer is None or r["layer"] == layer) and (component is None or r["component"] == component)]


def _mean_by(rows, key) -> dict:
    acc: dict = {}
    for r in rows:
        acc.setdefault(key(r), []).append(r["value"])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def layer_means(rows, statistic: str = "grad_norm") -> dict[str, float]:
    """Per layer (component ``all``; not the whole-model ``all`` or the ``logits`` rows), the mean
    of ``statistic`` over the recorded steps."""
    return _mean_by([r for r in _select(rows, statistic, component="all") if r["layer"] not in ("all", "logits")],
                    lambda r: r["layer"])


def class_share_table(rows) -> tuple[list[str], list[str], list[list[float]]]:
    """Mean ``class_grad_share`` per (layer, class) over the steps with a per-class split.

    A class absent from a step's batch counts as 0 there (its contribution is exactly 0), so each
    layer's row still sums to 1. Returns ``(layers bottom to top, classes, values[layer][class])``
    (NaN where a layer/class pair never occurs). Classes are ordered O first, then by decreasing
    token count (summed over the logit statistics) when those are present.
    """
    sel = _select(rows, "class_grad_share")
    n_steps = max(len({r["step"] for r in sel}), 1)
    share: dict = {}
    for r in sel:  # a class absent from a step's batch contributed exactly 0 to it
        key = (r["layer"], r["component"])
        share[key] = share.get(key, 0.0) + r["value"] / n_steps
    layers = sorted({l for l, _ in share if l != "all"}, key=layer_sort_key) + (["all"] if any(l == "all" for l, _ in share) else [])
    tokens: dict = {}
    for r in _select(rows, "tokens", layer="logits"):
        tokens[r["component"]] = tokens.get(r["component"], 0.0) + r["value"]
    classes = sorted({c for _, c in share}, key=lambda c: (c != "O", -tokens.get(c, 0.0), c))
    values = [[share.get((l, c), float("nan")) for c in classes] for l in layers]
    return layers, classes, values


def markdown_summary(rows) -> str:
    """A Markdown rendering of the same data the figures show (for machines without matplotlib)."""
    lines = []
    norms = _mean_by(_select(rows, "grad_norm", component="all"), lambda r: r["layer"])
    ratios = _mean_by(_select(rows, "update_ratio", component="all"), lambda r: r["layer"])
    if norms:
        lines += ["| layer | mean grad norm | mean update/weight |", "|---|---:|---:|"]
        for layer in sorted(norms, key=layer_sort_key):
            lines.append(f"| {layer} | {norms[layer]:.3g} | {ratios.get(layer, float('nan')):.3g} |")
        lines.append("")
    layers, classes, values = class_share_table(rows)
    if classes:
        lines += ["Mean share of the gradient per class (`<g_k, g>/‖g‖²`; a row sums to 1):", "",
                  "| layer | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
        for layer, vals in zip(layers, values):
            lines.append(f"| {layer} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        lines.append("")
    return "\n".join(lines)
