"""Data audit (notebook 01): is the patch collection clean, balanced and consistent across centres?

One pass over the images (:func:`scan_images`) feeds every table, flag and figure; every flagged image is one row per
reason in ``<out>/flags.csv`` (:func:`write_outputs`)."""

from glomlib.review import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__, ("config", "scan", "tables", "duplicates", "quality", "montage", "labels")
)
