"""``glomlib finetune``: the options are FinetuneConfig's fields."""

from __future__ import annotations

from glomlib.core.config import add_config_arguments, config_from_args
from glomlib.train.finetune.config import FinetuneConfig
from glomlib.train.finetune.cv import run_finetune

DESCRIPTION = "Fine-tune a classifier from one initialisation and evaluate it with slide-grouped cross-validation."


def _run(args) -> int:
    res = run_finetune(config_from_args(FinetuneConfig, args))
    print(f"run folder: {res.out}")
    for m in ("auc", "accuracy", "f1_weighted"):
        print(f"{m:>12}: {res.summary[m]['text']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune + slide-grouped cross-validation for one init", description=DESCRIPTION
    )
    add_config_arguments(p, FinetuneConfig)
    p.set_defaults(func=_run)
