"""``glomlib finetune``: the options are FinetuneConfig's fields."""

from __future__ import annotations

from glomlib.train.finetune.config import FinetuneConfig
from glomlib.train.finetune.cv import run_finetune


def cli_run(cfg: FinetuneConfig) -> int:
    res = run_finetune(cfg)
    print(f"run folder: {res.out}")
    if (res.out / "bundle.safetensors").exists():  # glomlib.models.bundle: the final models (+ fold models), one file
        print(f"model: {res.model_path}; the model to use, its bundle: {res.out / 'bundle.safetensors'}")
    for m in ("auc", "accuracy", "f1_weighted"):
        print(f"{m:>12}: {res.summary[m]['text']}")
    return 0
