"""Numbers as a reader meets them: counts as integers, shares as %, p-values with a floor, fixed significant digits.

Every function returns a string and turns a missing value (None, NaN) into ``missing`` (default an em dash): a page
says why a value is absent in its caption or table note, it never prints NaN.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def _absent(x: Any) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def count(x: Any, missing: str = MISSING) -> str:
    """An integer with thousands separators: 3.0 -> "3", 1234 -> "1,234"."""
    return missing if _absent(x) else f"{round(float(x)):,}"


def share(x: Any, digits: int = 1, missing: str = MISSING) -> str:
    """A share in [0, 1] as a percentage: 0.0151 -> "1.5 %"."""
    return missing if _absent(x) else f"{100 * float(x):.{digits}f} %"


def num(x: Any, digits: int = 3, missing: str = MISSING) -> str:
    """A measurement with ``digits`` decimals (AUCs, ECE, errors): 0.91234 -> "0.912", 100.188477 -> "100.188"."""
    return missing if _absent(x) else f"{float(x):.{digits}f}"


def pvalue(p: Any, missing: str = MISSING) -> str:
    """A p-value as a reader expects it: "< 0.0001", "0.003", "0.04", "0.52"."""
    if _absent(p):
        return missing
    p = float(p)
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def ci(estimate: Any, low: Any, high: Any, digits: int = 3, signed: bool = False, missing: str = MISSING) -> str:
    """ "0.912 (95 % CI 0.871 to 0.950)"; ``signed`` writes differences as "+0.012"."""
    if _absent(estimate):
        return missing
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if _absent(low) or _absent(high):
        return f.format(float(estimate))
    return f"{f.format(float(estimate))} (95 % CI {f.format(float(low))} to {f.format(float(high))})"
