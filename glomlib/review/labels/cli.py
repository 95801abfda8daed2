"""Label review for a pathologist: rank glomeruli whose label looks suspicious, with the reason, as HTML + CSV.

The ``glomlib review`` subcommand (see :mod:`glomlib.review.labels`)."""

from __future__ import annotations

import argparse

from glomlib.core.config import add_config_arguments, config_from_args
from glomlib.review.labels.config import ReviewConfig
from glomlib.review.labels.page import run_review
from glomlib.review.labels.reasons import REASONS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "review", help="label review sheet (HTML + CSV) from a fine-tune run", description=__doc__.splitlines()[0]
    )
    add_config_arguments(p, ReviewConfig)

    def _run(args: argparse.Namespace) -> int:
        cfg = config_from_args(ReviewConfig, args)
        review, paths = run_review(cfg)
        counts = {x: int(review.ranked["reasons"].str.contains(x).sum()) for x in REASONS}
        print(f"{len(review.ranked)} of {len(review.items)} images flagged: {counts}")
        for k, v in paths.items():
            print(f"{k:>5}: {v}")
        return 0

    p.set_defaults(func=_run)
