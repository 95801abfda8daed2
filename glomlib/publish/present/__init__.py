"""Reader-facing presentation, the one formatting layer every notebook's report uses.

A pathologist reads the rendered pages without Python, so numbers, tables, sentences and figures go through here:
counts as integers, shares as %, p-values as "< 0.0001", CIs next to every comparison, tables without index columns
and with headers in words, a reason instead of NaN, one colour-blind-safe palette, a real alt text on every figure
and photographs as JPEG. Developer output (paths, configs, logs) stays in cells tagged ``dev``: JupyterLab shows it,
the report drops it (:data:`glomlib.publish.report.pages.REMOVE_OUTPUT_TAGS`).
"""

from glomlib.publish.present.figures import (
    CLASS_COLORS,
    ERROR_COLORS,
    INIT_COLORS,
    PALETTE,
    class_colors,
    figure,
    tiles,
)
from glomlib.publish.present.numbers import ci, count, num, pvalue, share
from glomlib.publish.present.tables import table
from glomlib.publish.present.text import budget_claim, budget_list, claim_order, network_name, note, summary, warning

__all__ = [
    "CLASS_COLORS",
    "ERROR_COLORS",
    "INIT_COLORS",
    "PALETTE",
    "ci",
    "budget_claim",
    "budget_list",
    "claim_order",
    "class_colors",
    "count",
    "figure",
    "network_name",
    "note",
    "num",
    "pvalue",
    "share",
    "summary",
    "table",
    "tiles",
    "warning",
]
