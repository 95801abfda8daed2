"""Label review for a pathologist: rank glomeruli whose label looks suspicious, with the reason, as HTML + CSV.

The ``glomlib review`` command (see :mod:`glomlib.review.labels`)."""

from __future__ import annotations

from glomlib.review.labels.config import ReviewConfig
from glomlib.review.labels.page import run_review
from glomlib.review.labels.reasons import REASONS


def cli_run(cfg: ReviewConfig) -> int:
    review, paths = run_review(cfg)
    counts = {x: int(review.ranked["reasons"].str.contains(x).sum()) for x in REASONS}
    print(f"{len(review.ranked)} of {len(review.items)} images flagged: {counts}")
    for k, v in paths.items():
        print(f"{k:>5}: {v}")
    return 0
