"""Which fold model explains which image, and the penultimate-layer embeddings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glomlib.core import runs, runtime
from glomlib.evaluate.runs import fold_models
from glomlib.models.files import load_model
from glomlib.review.explain.inputs import chosen_fraction


def load_run_model(run_dir: str | Path):
    """The final model of a fine-tune run: ``(model in eval mode, meta)``."""
    return load_model(Path(run_dir) / runs.MODEL)


@dataclasses.dataclass
class ExplainModels:
    """Which model explains which image. ``files[i]`` is the model file for row ``i`` of ``pred``: the fold model
    whose test fold held the image (``source == "fold"``), or the run's final model (``"final"``, old runs)."""

    files: list[Path]
    source: str
    note: str
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def load(self, path: Path):
        """``(model, meta)`` of one file, loaded once."""
        if path not in self._cache:
            self._cache[path] = load_model(path)
        return self._cache[path]

    @property
    def meta(self) -> dict[str, Any]:
        """Metadata of the first model (backbone, image size, class names are the same for every fold)."""
        return self.load(self.files[0])[1] if self.files else {}

    def groups(self, positions: Sequence[int]) -> dict[Path, list[int]]:
        """``{model file: [positions...]}`` for the given row positions, in first-seen order."""
        out: dict[Path, list[int]] = {}
        for i in positions:
            out.setdefault(self.files[int(i)], []).append(int(i))
        return out


def explain_models(
    run_dir: str | Path, pred: pd.DataFrame, label_fraction: float = 1.0, seed: int | None = None
) -> ExplainModels:
    """For every row of ``pred``: the fold model (of ``seed``, default the run's first seed, at the label fraction
    nearest ``label_fraction``) whose ``test_slides`` contain the image's slide — the model that did not see it.

    Runs written before fold models were kept get the final ``model.safetensors`` for every image, with a printed
    note saying so; a FileNotFoundError when neither exists."""
    run_dir = Path(run_dir)
    table = fold_models(run_dir)
    if len(table):
        table = table[table["label_fraction"] == chosen_fraction(table["label_fraction"], label_fraction)]
        seed = int(table["seed"].min()) if seed is None else int(seed)
        table = table[table["seed"] == seed]
        if not len(table):
            raise ValueError(
                f"{run_dir} has no fold models for seed {seed}; its seeds: {sorted(set(fold_models(run_dir)['seed']))}."
            )
        by_slide = {}
        for _, r in table.iterrows():
            for sl in r["test_slides"]:
                by_slide[str(sl)] = Path(r["model"])
        missing = sorted({str(s) for s in pred["slide"]} - set(by_slide))
        if missing:
            raise ValueError(
                f"{run_dir}: slides {missing[:5]} are in no fold model's test fold (seed {seed}); "
                "are these predictions from another run?"
            )
        files = [by_slide[str(s)] for s in pred["slide"]]
        frac = float(table["label_fraction"].iloc[0])
        note = (
            f"Grad-CAM, embeddings and neighbours use the fold models of seed {seed} ({len(table)} folds, "
            f"{frac:.0%} labels): each image is explained by the model whose test fold held its slide."
        )
        return ExplainModels(files=files, source="fold", note=note)
    final = run_dir / runs.MODEL
    if not final.is_file():
        raise FileNotFoundError(
            f"{run_dir} has neither fold models (checkpoints/*/model.safetensors) nor a final "
            "model.safetensors; re-run notebook 03 (fine-tuning) to explain its errors."
        )
    note = (
        f"NOTE: {run_dir} was written before fold models were kept, so Grad-CAM, embeddings and neighbours use "
        "the final model, which was trained on these very images; re-run notebook 03 to explain each error "
        "with the fold model that did not see it."
    )
    print(note)
    return ExplainModels(files=[final] * len(pred), source="final", note=note)


def _plan(model, precision: str):
    """The runtime plan on the model's device (embeddings: ``auto``; Grad-CAM keeps its gradients in fp32)."""
    p = next(iter(model.parameters()), None)
    return runtime.plan(str(p.device) if p is not None else "cpu", precision)


def _normalise(images: np.ndarray, meta: dict[str, Any], plan=None):
    """uint8 NHWC images -> normalised float NCHW on the plan's device and memory format."""
    return runtime.to_input(
        np.asarray(images, dtype=np.uint8),
        meta.get("mean", [0.485, 0.456, 0.406]),
        meta.get("std", [0.229, 0.224, 0.225]),
        plan or runtime.plan("cpu", "fp32"),
    )


def head_layer(model):
    """The classifier's last linear layer (its input is the image embedding)."""
    import torch.nn as nn

    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise ValueError("The model has no nn.Linear layer; cannot find the embedding that feeds the classifier.")
    return lin[-1]


def embeddings(model, meta: dict[str, Any], images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Penultimate features (input of the last linear layer) and logits for uint8 NHWC images -> (N, D)."""
    import torch

    p = _plan(model, "auto")
    feats: list[np.ndarray] = []
    hook = head_layer(model).register_forward_hook(
        lambda m, inp, out: feats.append(inp[0].detach().float().cpu().numpy())
    )
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                with runtime.autocast(p):
                    model(_normalise(np.asarray(images[i : i + batch_size]), meta, p))
    finally:
        hook.remove()
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
