"""How the report prints a number, a p-value and a table (Markdown)."""
from __future__ import annotations

import math


def fmt_number(x, digits: int = 4) -> str:
    """``x`` to ``digits`` decimals; "–" for ``None`` or NaN (nothing to print)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_p(x) -> str:
    """A p-value to 4 decimals; one that would print as 0.0000 is "<0.0001" (a p-value is never 0)."""
    return "<0.0001" if x is not None and not math.isnan(x) and x < 0.00005 else fmt_number(x, 4)


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A Markdown table's lines (header, rule, one line per row of ``body``) and a blank line."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return out + [""]
