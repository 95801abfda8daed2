"""``glomlib finetune``: the options are FinetuneConfig's fields."""

from __future__ import annotations

from glomlib.train.finetune.config import FinetuneConfig
from glomlib.train.finetune.cv import run_finetune


def cli_run(cfg: FinetuneConfig) -> int:
    res = run_finetune(cfg)
    print(f"run folder: {res.out}")
    for m in ("auc", "accuracy", "f1_weighted"):
        print(f"{m:>12}: {res.summary[m]['text']}")
    return 0
