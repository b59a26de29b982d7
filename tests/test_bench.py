"""The benchmark machinery produces well-formed rows (never the timings: those are `make bench`'s)."""
from __future__ import annotations

import math

import pytest

from bertlab.bench import format_row, main

KEYS = {"name", "unit", "bertlab", "reference", "ratio"}


def check_rows(rows: list[dict]) -> None:
    assert rows, "no rows"
    for r in rows:
        assert KEYS <= set(r), f"row {r} lacks {KEYS - set(r)}"
        assert isinstance(r["name"], str) and r["name"] and isinstance(r["unit"], str)
        for k in ("bertlab", "reference", "ratio"):
            assert r[k] is None or (isinstance(r[k], float | int) and math.isfinite(r[k])), (k, r)
        format_row(r)  # printable


def test_row_format_and_printing():
    rows = [{"name": "x", "unit": "tokens/s", "bertlab": 2000.0, "reference": 1000.0, "ratio": 2.0},
            {"name": "y", "unit": "MiB", "bertlab": 1.5, "reference": None, "ratio": None}]
    check_rows(rows)
    assert format_row(rows[0]) == "| x | tokens/s | 2,000 | 1,000 | 2.00x |"
    assert format_row(rows[1]) == "| y | MiB | 1.5 | - | - |"


def test_unknown_area_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["--only", "nosuch"])
    assert "unknown area" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("area", ["models", "btl"])
def test_quick_run_gives_well_formed_rows(area):
    import importlib
    rows = importlib.import_module(f"bertlab.bench.{area}").run(quick=True)
    check_rows(rows)
    assert any(r["ratio"] is not None for r in rows)
