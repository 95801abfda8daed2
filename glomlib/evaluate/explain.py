"""Error analysis (notebook 05): where and why does a fine-tuned model err, in pictures a pathologist can judge.

Input: a fine-tune run folder (``predictions.csv`` with out-of-fold probabilities, the fold models under
``checkpoints/*/model.safetensors``; see CONTRACTS.md). The module gives

- per-image outcomes (TP/TN/FP/FN) with the model's confidence (:func:`load_predictions`),
- error rates per slide and per centre (:func:`error_rates`) and confidence histograms,
- galleries of false positives and false negatives ranked by confidence (:func:`error_gallery`),
- Grad-CAM heat maps (pytorch_grad_cam) with the glomerulus mask outline and the share of attribution that falls
  inside the mask (:func:`gradcam`, :func:`mask_share`, :func:`gradcam_figure`),
- an embedding map (UMAP, t-SNE fallback) coloured by label, prediction, correctness and centre
  (:func:`embed_2d`, :func:`embedding_figure`) and the nearest labelled neighbours of each error
  (:func:`nearest_neighbours`, :func:`neighbour_gallery`),
- an ipywidgets error browser in a live JupyterLab kernel and a static gallery otherwise
  (:func:`show_error_browser`), so a rendered HTML report never shows a dead widget.

What is explained: probabilities come from the cross-validated predictions (each image scored by a model that did
not see it), and Grad-CAM, embeddings and nearest neighbours use that same kind of model: for each image the fold
model (of the run's first seed) whose test fold held the image's slide (:func:`explain_models`). Runs written
before fold models were kept fall back, with a printed warning, to the final model, which did see the images.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from glomlib.core.config import ConfigError, StepConfig
from glomlib.evaluate.runs import fold_models
from glomlib.models.files import load_model

OUTCOMES = ("TP", "TN", "FP", "FN")


@dataclasses.dataclass
class ExplainConfig(StepConfig):
    """Parameters of notebook 05 (names == the notebook's ``parameters`` cell)."""

    run: str = "latest"  # fine-tune run folder (predictions.csv + fold models); "latest" = newest under runs/
    data: str = "data/glomeruli-pas/manifest.csv"  # manifest, for glomerulus masks (may lack masks)
    out: str = "auto"  # output folder; "auto" = runs/<stamp>-errors
    label_fraction: float = 1.0  # which label fraction's predictions to analyse (nearest available)
    threshold: float = 0.5  # probability at or above which an image is called positive
    n_gallery: int = 16  # images per error gallery (false positives, false negatives)
    n_gradcam: int = 8  # errors (per kind) shown with Grad-CAM
    k_neighbours: int = 5  # nearest labelled neighbours shown for each error
    n_neighbour_rows: int = 8  # errors shown with their neighbours
    embedding: str = "umap"  # "umap" or "tsne"
    interactive: bool = True  # widget browser in a live kernel; papermill / HTML always get the static gallery
    batch_size: int = 32  # images per forward pass
    seed: int = 0  # seed for the embedding map

    def validate(self) -> None:
        if self.embedding not in ("umap", "tsne"):
            raise ConfigError(f"embedding={self.embedding!r}: choose 'umap' or 'tsne'.")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold={self.threshold}: must be in (0, 1).")
        if self.k_neighbours < 1 or self.n_gallery < 1:
            raise ConfigError("k_neighbours and n_gallery must be at least 1.")


# ----------------------------------------------------------------------------------------------- inputs

def resolve_run(run: str | Path = "latest", root: str | Path = "runs") -> Path:
    """A fine-tune run folder: ``run`` itself, or (``"latest"``) the newest folder under ``root`` holding
    ``predictions.csv`` and a model (fold models under ``checkpoints/`` or a final ``model.safetensors``)."""
    if str(run) in ("latest", ""):
        root = Path(root)
        found = [p.parent for p in root.glob("**/predictions.csv")
                 if p.parent.parent.name != "checkpoints"  # a fold's own folder, not a run
                 and ((p.parent / "model.safetensors").is_file()
                      or any(p.parent.glob("checkpoints/*/model.safetensors")))] if root.exists() else []
        if not found:
            raise FileNotFoundError(
                f"run='latest' but no fine-tune run (a folder with predictions.csv and its models) exists "
                f"under {root.resolve()}. Run notebook 03 first, or pass run=<fine-tune run folder>.")
        return max(found, key=lambda d: (d / "predictions.csv").stat().st_mtime)
    p = Path(run)
    if p.is_file():
        p = p.parent
    if not (p / "predictions.csv").is_file():
        raise FileNotFoundError(f"run={str(run)!r}: {p / 'predictions.csv'} does not exist. Pass the output folder "
                                "of a fine-tune run (notebook 03), which holds predictions.csv and model.safetensors.")
    return p


def chosen_fraction(fractions: Sequence[float], label_fraction: float) -> float:
    """The available label fraction nearest to ``label_fraction``."""
    fr = np.unique(np.asarray(fractions, dtype=float))
    return float(fr[np.argmin(np.abs(fr - float(label_fraction)))])


def load_predictions(run_dir: str | Path, label_fraction: float = 1.0, threshold: float = 0.5) -> pd.DataFrame:
    """One row per image: path, slide, center, label, y, prob (mean over seeds), pred, outcome, confidence, error.

    ``confidence`` is the model's confidence in its own call (prob for a positive call, 1-prob for a negative one).
    """
    p = pd.read_csv(Path(run_dir) / "predictions.csv", keep_default_na=False)
    need = {"path", "y", "prob"}
    if not need <= set(p.columns):
        raise ValueError(f"{Path(run_dir) / 'predictions.csv'} lacks columns {sorted(need - set(p.columns))}; "
                         "expected the fine-tune output format (path, slide, center, label, y, prob, pred, fold, ...).")
    if "label_fraction" in p.columns and len(p):
        lf = p["label_fraction"].astype(float)
        p = p[lf == chosen_fraction(lf.unique(), label_fraction)]
    p = p[p["y"].astype(int) >= 0]
    agg: dict[str, Any] = {c: "first" for c in ("slide", "center", "label", "fold") if c in p.columns}
    agg.update(prob="mean")
    g = p.groupby("path", sort=False).agg(agg)
    g["y"] = p.groupby("path", sort=False)["y"].first().astype(int)
    g["n_seeds"] = p.groupby("path", sort=False)["prob"].size()
    g = g.reset_index()
    for c in ("slide", "center", "label"):
        if c not in g:
            g[c] = ""
    g["pred"] = (g["prob"] >= threshold).astype(int)
    g["outcome"] = np.select([(g.y == 1) & (g.pred == 1), (g.y == 0) & (g.pred == 0), (g.y == 0) & (g.pred == 1)],
                             ["TP", "TN", "FP"], "FN")
    g["confidence"] = np.where(g["pred"] == 1, g["prob"], 1 - g["prob"])
    g["error"] = g["outcome"].isin(["FP", "FN"])
    return g


def attach_masks(pred: pd.DataFrame, manifest: pd.DataFrame | None) -> pd.DataFrame:
    """Add the manifest's ``mask`` column (joined on path; "" where unknown)."""
    pred = pred.copy()
    if manifest is None or "mask" not in manifest:
        pred["mask"] = ""
        return pred
    m = dict(zip(manifest["path"].astype(str), manifest["mask"].astype(str)))
    pred["mask"] = [m.get(str(p), "") for p in pred["path"]]
    return pred


def prepare(cfg: ExplainConfig):
    """Resolve the run, read predictions (+ masks from the manifest when readable), create ``out``.

    Returns ``(pred, run_dir, out_dir)``.
    """
    from glomlib.core import io as runs

    run_dir = resolve_run(cfg.run)
    pred = load_predictions(run_dir, cfg.label_fraction, cfg.threshold)
    manifest = None
    data = Path(cfg.data)
    if not data.exists() and cfg.data == ExplainConfig.data:
        try:
            from glomlib.data.public import ensure_default_manifest

            ensure_default_manifest(data)
        except Exception as e:  # masks are optional: say so, carry on
            print(f"No manifest for masks ({e}); Grad-CAM shown without mask outlines.")
    if data.exists():
        from glomlib.data.manifest import read_manifest

        pos = pred.loc[pred["y"] == 1, "label"]
        positive = str(pos.iloc[0]) if len(pos) and str(pos.iloc[0]) else ""  # "": dataset.json names it
        try:
            manifest = read_manifest(data, positive_label=positive, require_labels=False)
        except Exception as e:  # masks are optional: say so, carry on
            print(f"Manifest {data} not usable for masks ({type(e).__name__}: {str(e)[:300]}); no mask outlines.")
    pred = attach_masks(pred, manifest)
    out = Path(runs.new_run_dir("runs", "errors") if cfg.out == "auto" else runs.ensure_new_dir(cfg.out))
    cfg.save(out / "config.json")
    runs.write_provenance(out, cfg, extra={"finetune_run": str(Path(run_dir).resolve())})
    return pred, Path(run_dir), out


# ----------------------------------------------------------------------------------------------- tables

def error_rates(pred: pd.DataFrame, by: str = "center") -> pd.DataFrame:
    """Per group: images, positives, errors, error rate, false positives and false negatives (worst first)."""
    g = pred.groupby(by)
    res = pd.DataFrame({
        "images": g.size(),
        "positives": g["y"].sum(),
        "errors": g["error"].sum(),
        "FP": g["outcome"].apply(lambda s: int((s == "FP").sum())),
        "FN": g["outcome"].apply(lambda s: int((s == "FN").sum())),
    })
    res["error_rate"] = (res["errors"] / res["images"]).round(3)
    return res.sort_values(["error_rate", "images"], ascending=[False, False])


def ranked_errors(pred: pd.DataFrame, kind: str, n: int | None = None) -> pd.DataFrame:
    """False positives (``kind="FP"``) or negatives (``"FN"``), most confident first."""
    e = pred[pred["outcome"] == kind].sort_values("confidence", ascending=False)
    return e if n is None else e.head(n)


# ----------------------------------------------------------------------------------------------- images

def load_display_images(paths: Sequence[str], size: int) -> np.ndarray:
    """uint8 (N,size,size,3) via the shared cache (decoded once)."""
    from glomlib.data.cache import load_images

    return np.asarray(load_images([str(p) for p in paths], size))


def load_display_masks(mask_paths: Sequence[str], size: int) -> list[np.ndarray | None]:
    from glomlib.evaluate.audit import load_mask

    return [load_mask(m, size) if m else None for m in mask_paths]


def caption(r: pd.Series, extra: str = "") -> str:
    """Two short lines: outcome and probability; slide (and centre unless the slide name starts with it)."""
    centre, slide = str(r.get("center", "") or ""), str(r.get("slide", ""))
    where = slide if not centre or slide.startswith(centre) else f"{slide} ({centre})"
    return f"{r['outcome']} p={r['prob']:.2f}{extra}\n{where}"


def error_gallery(pred: pd.DataFrame, kind: str, n: int = 16, size: int = 160, ncols: int = 8):
    """Gallery of the ``n`` most confident false positives or negatives with mask outlines."""
    from glomlib.evaluate import plots

    e = ranked_errors(pred, kind, n)
    imgs = load_display_images(e["path"].tolist(), size) if len(e) else []
    masks = load_display_masks(e["mask"].tolist(), size) if "mask" in e and len(e) else None
    what = {"FP": "False positives (called positive, truly negative)",
            "FN": "False negatives (called negative, truly positive)"}[kind]
    return plots.montage(list(imgs), [caption(r) for _, r in e.iterrows()], ncols=ncols, masks=masks,
                         title=f"{what}, most confident first (p = predicted probability of the positive class)",
                         caption_size=9)


def confidence_figure(pred: pd.DataFrame, threshold: float = 0.5, labels: tuple[str, str] = ("positive", "negative")):
    """Left: predicted probability per true class; right: confidence of correct calls vs errors."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate import plots

    fig, axes = plt.subplots(1, 2, figsize=(plots.REPORT_WIDTH, 3.8))
    bins = np.linspace(0, 1, 26)
    for y, name, colour in ((1, labels[0], "#d95f02"), (0, labels[1], "#1b9e77")):
        axes[0].hist(pred.loc[pred["y"] == y, "prob"], bins=bins, alpha=0.6, color=colour, label=f"truly {name}")
    axes[0].axvline(threshold, color="black", linestyle="--", label="threshold")
    axes[0].set_yscale("log")
    axes[0].set_xlabel(f"predicted probability of {labels[0]}")
    axes[0].set_ylabel("images (log scale)")
    axes[0].legend(fontsize=9, frameon=False)
    cb = np.linspace(0.5, 1, 21)
    for err, name, colour in ((False, "correct", "#7570b3"), (True, "errors", "#e7298a")):
        axes[1].hist(pred.loc[pred["error"] == err, "confidence"], bins=cb, alpha=0.6, color=colour, density=True,
                     label=f"{name} (n={int((pred['error'] == err).sum())})")
    axes[1].set_xlabel("confidence of the model in its call")
    axes[1].set_ylabel("density")
    axes[1].legend(fontsize=9, frameon=False)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("How sure is the model? (out-of-fold predictions)", fontsize=12)
    fig.tight_layout()
    return fig


def error_rate_figure(pred: pd.DataFrame):
    """Error rate per centre (left) and per slide (right), annotated with the number of images."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate import plots

    by_c, by_s = error_rates(pred, "center"), error_rates(pred, "slide")
    fig, axes = plt.subplots(1, 2, figsize=(plots.REPORT_WIDTH, max(3.6, 0.22 * len(by_s) + 1)),
                             gridspec_kw={"width_ratios": [1, 2]})
    for ax, t, title in ((axes[0], by_c, "per centre"), (axes[1], by_s, "per slide")):
        t = t.iloc[::-1]
        ax.barh(t.index.astype(str), t["FP"] / t["images"], color="#d95f02", label="false positives")
        ax.barh(t.index.astype(str), t["FN"] / t["images"], left=t["FP"] / t["images"], color="#e7298a",
                label="false negatives")
        for k, (_, r) in enumerate(t.iterrows()):
            ax.text(r["error_rate"] + 0.005, k, f"{int(r['errors'])}/{int(r['images'])}", va="center", fontsize=8)
        ax.set_title(f"Error rate {title}", fontsize=11)
        ax.set_xlabel("share of images misclassified")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, max(0.05, float(t["error_rate"].max()) * 1.3))
    axes[0].legend(fontsize=9, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- model

def load_run_model(run_dir: str | Path):
    """The final model of a fine-tune run: ``(model in eval mode, meta)``."""
    return load_model(Path(run_dir) / "model.safetensors")


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


def explain_models(run_dir: str | Path, pred: pd.DataFrame, label_fraction: float = 1.0,
                   seed: int | None = None) -> ExplainModels:
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
            raise ValueError(f"{run_dir} has no fold models for seed {seed}; its seeds: "
                             f"{sorted(set(fold_models(run_dir)['seed']))}.")
        by_slide = {}
        for _, r in table.iterrows():
            for sl in r["test_slides"]:
                by_slide[str(sl)] = Path(r["model"])
        missing = sorted({str(s) for s in pred["slide"]} - set(by_slide))
        if missing:
            raise ValueError(f"{run_dir}: slides {missing[:5]} are in no fold model's test fold (seed {seed}); "
                             "are these predictions from another run?")
        files = [by_slide[str(s)] for s in pred["slide"]]
        frac = float(table["label_fraction"].iloc[0])
        note = (f"Grad-CAM, embeddings and neighbours use the fold models of seed {seed} ({len(table)} folds, "
                f"{frac:.0%} labels): each image is explained by the model whose test fold held its slide.")
        return ExplainModels(files=files, source="fold", note=note)
    final = run_dir / "model.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{run_dir} has neither fold models (checkpoints/*/model.safetensors) nor a final "
                                "model.safetensors; re-run notebook 03 (fine-tuning) to explain its errors.")
    note = (f"NOTE: {run_dir} was written before fold models were kept, so Grad-CAM, embeddings and neighbours use "
            "the final model, which was trained on these very images; re-run notebook 03 to explain each error "
            "with the fold model that did not see it.")
    print(note)
    return ExplainModels(files=[final] * len(pred), source="final", note=note)


def _plan(model, precision: str):
    """The runtime plan on the model's device (embeddings: ``auto``; Grad-CAM keeps its gradients in fp32)."""
    from glomlib.core import runtime

    p = next(iter(model.parameters()), None)
    return runtime.plan(str(p.device) if p is not None else "cpu", precision)


def _normalise(images: np.ndarray, meta: dict[str, Any], plan=None):
    """uint8 NHWC images -> normalised float NCHW on the plan's device and memory format."""
    from glomlib.core import runtime

    return runtime.to_input(np.asarray(images, dtype=np.uint8), meta.get("mean", [0.485, 0.456, 0.406]),
                            meta.get("std", [0.229, 0.224, 0.225]), plan or runtime.plan("cpu", "fp32"))


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

    from glomlib.core import runtime

    p = _plan(model, "auto")
    feats: list[np.ndarray] = []
    hook = head_layer(model).register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().float().cpu().numpy()))
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                with runtime.autocast(p):
                    model(_normalise(np.asarray(images[i:i + batch_size]), meta, p))
    finally:
        hook.remove()
    return np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)


def target_layer(model, backbone: str | None = None):
    """Grad-CAM layer: ResNet ``layer4``; EfficientNet the last block of ``blocks``; else the last Conv2d."""
    import torch.nn as nn

    named = dict(model.named_modules())
    name = (backbone or "").lower()
    if name.startswith("resnet") or any(k.endswith("layer4") for k in named):
        for k, m in named.items():
            if k.endswith("layer4"):
                return m
    for k, m in named.items():
        if k.endswith("blocks") and isinstance(m, (nn.Sequential, nn.ModuleList)) and len(m):
            return m[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("No convolutional layer found for Grad-CAM.")
    return convs[-1]


class LogitTarget:
    """Grad-CAM target for a model with one logit (positive class) or two: explains ``cls`` (1 pos, 0 neg)."""

    def __init__(self, cls: int):
        self.cls = int(cls)

    def __call__(self, out):
        if out.ndim == 0 or out.shape[-1] == 1:
            v = out.reshape(())
            return v if self.cls == 1 else -v
        return out[..., self.cls]


def gradcam(model, meta: dict[str, Any], images: np.ndarray, classes: Sequence[int], layer=None,
            batch_size: int = 8) -> np.ndarray:
    """Grad-CAM maps (N,H,W) in [0,1] at the image size, each explaining the given class (1 = positive)."""
    import torch
    from pytorch_grad_cam import GradCAM

    layer = layer if layer is not None else target_layer(model, meta.get("backbone"))
    model.eval()
    p = _plan(model, "fp32")
    out = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i in range(0, len(images), batch_size):
            x = _normalise(np.asarray(images[i:i + batch_size]), meta, p).requires_grad_(True)
            with torch.enable_grad():
                out.append(cam(input_tensor=x, targets=[LogitTarget(c) for c in classes[i:i + batch_size]]))
    return np.concatenate(out) if out else np.zeros((0,) + tuple(np.asarray(images).shape[1:3]), np.float32)


def mask_share(cam: np.ndarray, mask: np.ndarray | None) -> float:
    """Share of the (non-negative) attribution inside the mask, in [0, 1]; NaN without a mask or attribution."""
    if mask is None:
        return float("nan")
    cam = np.clip(np.asarray(cam, float), 0, None)
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != cam.shape:
        import cv2

        m = cv2.resize(m.astype(np.uint8), cam.shape[::-1], interpolation=cv2.INTER_NEAREST)
    total = cam.sum()
    if total <= 0 or not np.any(m):
        return float("nan")
    return float(cam[m > 0].sum() / total)


def gradcam_errors(models: ExplainModels, pred: pd.DataFrame, n_per_kind: int = 8,
                   batch_size: int = 8) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list]:
    """Grad-CAM for the most confident FP and FN, each computed with its own model from ``models`` (the fold model
    that did not see it). Returns ``(rows with columns mask_share and model, images, cams, masks)``.

    The maps always explain the *positive* class: with a one-logit classifier the "negative" map is the exact
    negative of the positive one (all zero after Grad-CAM's ReLU wherever the positive map is positive), so
    "where did the model see positive evidence" is the informative question for both error kinds: for a false
    positive it shows what misled the model, for a false negative where the (too weak) evidence was."""
    size = int(models.meta["image_size"])
    rows = pd.concat([ranked_errors(pred, "FP", n_per_kind), ranked_errors(pred, "FN", n_per_kind)])
    if not len(rows):
        return (rows.assign(mask_share=[], model=[]), np.zeros((0, size, size, 3), np.uint8),
                np.zeros((0, size, size)), [])
    imgs = load_display_images(rows["path"].tolist(), size)
    positions = [pred.index.get_loc(i) for i in rows.index]
    cams = np.zeros(imgs.shape[:3], np.float32)
    for path, members in models.groups(positions).items():
        model, meta = models.load(path)
        sel = [positions.index(m) for m in members]
        cams[sel] = gradcam(model, meta, imgs[sel], [1] * len(sel), batch_size=batch_size)
    rows = rows.assign(model=[str(models.files[i]) for i in positions])
    masks = load_display_masks(rows["mask"].tolist() if "mask" in rows else [""] * len(rows), size)
    area = [float(np.mean(m)) if m is not None and np.any(m) else float("nan") for m in masks]
    rows = rows.assign(mask_share=[mask_share(c, m) for c, m in zip(cams, masks)], mask_area=area)
    # > 1: heat concentrated on the glomerulus more than a uniform map would be (share == area)
    rows["mask_enrichment"] = rows["mask_share"] / rows["mask_area"]
    return rows, imgs, cams, masks


def gradcam_figure(rows: pd.DataFrame, images: np.ndarray, cams: np.ndarray, masks: list, pairs_per_row: int = 4,
                   positive: str = "positive"):
    """Image and Grad-CAM overlay side by side (yellow = glomerulus mask outline), captioned with the share of
    attribution inside the mask."""
    from glomlib.evaluate import plots

    tiles, caps, mks = [], [], []
    for (_, r), img, cam, m in zip(rows.iterrows(), images, cams, masks):
        share = "" if not np.isfinite(r["mask_share"]) else \
            f"\n{100 * r['mask_share']:.0f}% heat in mask ({100 * r.get('mask_area', np.nan):.0f}% of area)"
        tiles += [np.asarray(img), plots.cam_overlay(np.asarray(img), cam)]
        caps += [caption(r), f"Grad-CAM: evidence for {positive}{share}"]
        mks += [m, m]
    return plots.montage(tiles, caps, ncols=2 * pairs_per_row, masks=mks, caption_size=8,
                         title=f"Where the model saw {positive}: errors with Grad-CAM (red = strongest evidence, "
                               "scaled per image)")


# ----------------------------------------------------------------------------------------------- embeddings

def embeddings_by_model(models: ExplainModels, images: np.ndarray, positions: Sequence[int] | None = None,
                        batch_size: int = 32) -> dict[Path, np.ndarray]:
    """``{model file: embeddings of every image (N, D)}`` for the models that explain ``positions`` (default: all
    rows): each model's own embedding space, for nearest neighbours as that model sees them."""
    positions = range(len(models.files)) if positions is None else positions
    out = {}
    for path in models.groups(positions):
        model, meta = models.load(path)
        out[path] = embeddings(model, meta, images, batch_size)
    return out


def oof_embeddings(models: ExplainModels, by_model: dict[Path, np.ndarray]) -> np.ndarray:
    """(N, D): each image's embedding from the model that did not see it, standardised per model (the fold models'
    spaces differ in scale; the map shows structure within them, not offsets between them)."""
    first = next(iter(by_model.values()))
    out = np.zeros(first.shape, np.float32)
    for path, members in models.groups(range(len(models.files))).items():
        e = by_model[path]
        z = (e - e.mean(0)) / np.maximum(e.std(0), 1e-6)
        out[members] = z[members]
    return out


def neighbours_by_model(models: ExplainModels, by_model: dict[Path, np.ndarray], errors: Sequence[int],
                        k: int = 5) -> np.ndarray:
    """(len(errors), k): each error's k nearest images in the embedding space of the model that explains it."""
    if not len(errors):
        return np.zeros((0, k), int)
    return np.stack([nearest_neighbours(by_model[models.files[e]], [e], k)[0] for e in errors])


def embed_2d(emb: np.ndarray, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D map of the embeddings: UMAP (cosine) or t-SNE (also the fallback when UMAP fails or is missing)."""
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(emb)
    if method == "umap" and len(x) > 15:
        try:
            import umap

            return umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed,
                             n_jobs=1).fit_transform(x), "UMAP"
        except Exception as e:  # fall back, but say so
            print(f"UMAP failed ({type(e).__name__}: {e}); using t-SNE.")
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x), "t-SNE"


def embedding_figure(xy: np.ndarray, pred: pd.DataFrame, method: str = "UMAP"):
    """2x2 maps coloured by true label, prediction, correctness (outcome) and centre; errors drawn on top."""
    import matplotlib.pyplot as plt

    from glomlib.evaluate import plots

    fig, axes = plt.subplots(2, 2, figsize=(plots.REPORT_WIDTH, 10))
    lab = pred["label"].astype(str).where(pred["label"].astype(str) != "", pred["y"].astype(str))
    predicted = np.where(pred["pred"] == 1, "called positive", "called negative")
    panels = [("true label", lab.to_numpy()), ("prediction", predicted),
              ("outcome", pred["outcome"].to_numpy()), ("centre", pred["center"].astype(str).to_numpy())]
    err = pred["error"].to_numpy()
    for ax, (title, values) in zip(axes.flat, panels):
        cats = sorted(set(values))
        cmap = plt.get_cmap("tab10")
        for k, c in enumerate(cats):
            sel = values == c
            colour = plots.OUTCOME_COLOURS.get(c, cmap(k % 10))
            ax.scatter(xy[sel & ~err, 0], xy[sel & ~err, 1], s=9, alpha=0.6, color=colour, label=f"{c} ({sel.sum()})")
            ax.scatter(xy[sel & err, 0], xy[sel & err, 1], s=40, alpha=0.95, color=colour, edgecolors="black",
                       linewidths=0.8)
        ax.set_title(f"coloured by {title}", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=9, frameon=False, markerscale=1.5, loc="best")
    fig.suptitle(f"{method} map of the model's image embeddings (black-edged dots = errors)", fontsize=12)
    fig.tight_layout()
    return fig


def nearest_neighbours(emb: np.ndarray, query: Sequence[int], k: int = 5) -> np.ndarray:
    """Indices (len(query), k) of the k nearest other images by cosine similarity of the embeddings."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    q = np.asarray(query, int)
    sim = x[q] @ x.T
    sim[np.arange(len(q)), q] = -np.inf
    return np.argsort(-sim, axis=1)[:, :k]


def neighbour_gallery(pred: pd.DataFrame, nn_idx: np.ndarray, errors: Sequence[int], size: int = 140):
    """One row per error: the error, then its nearest neighbours ``nn_idx`` (from :func:`neighbours_by_model`;
    label and probability in the caption; red caption = neighbour of the other class than the error's true label)."""
    from glomlib.evaluate import plots

    nn_idx = np.asarray(nn_idx, int).reshape(len(errors), -1)
    k = nn_idx.shape[1]
    order = [i for row, e in zip(nn_idx, errors) for i in (e, *row)]
    imgs = load_display_images(pred["path"].iloc[order].tolist(), size) if order else []
    caps, cols = [], []
    for row, e in zip(nn_idx, errors):
        er = pred.iloc[e]
        caps.append("ERROR " + caption(er))
        cols.append("#d95f02")
        for j in row:
            r = pred.iloc[j]
            caps.append(f"{r['label'] or r['y']} p={r['prob']:.2f}\n{r['slide']}")
            cols.append("#c0392b" if r["y"] != er["y"] else "black")
    return plots.montage(list(imgs), caps, ncols=k + 1, caption_size=8, caption_colours=cols,
                         title=f"Each error (first column) and its {k} nearest neighbours in embedding space")


# ----------------------------------------------------------------------------------------------- browser

def live_frontend(interactive: bool = True) -> bool:
    """True when widgets can work: ``interactive`` is on and the kernel was started by a Jupyter server
    (JupyterLab/Notebook set ``JPY_SESSION_NAME``) or VS Code. papermill/nbclient set neither, so rendered
    reports get the static gallery. ``GLOMLIB_INTERACTIVE=0/1`` overrides the detection."""
    if not interactive:
        return False
    env = os.environ.get("GLOMLIB_INTERACTIVE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    try:
        from IPython import get_ipython

        if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
            return False
    except ImportError:  # pragma: no cover
        return False
    return bool(os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID"))


def filter_errors(pred: pd.DataFrame, kind: str = "errors", centre: str = "all",
                  confidence: tuple[float, float] = (0.5, 1.0)) -> pd.DataFrame:
    """Rows to browse: kind in {"errors", "FP", "FN", "all"} (or a class label), one centre or "all", and a
    confidence range; most confident first."""
    d = pred
    if kind == "errors":
        d = d[d["error"]]
    elif kind in OUTCOMES:
        d = d[d["outcome"] == kind]
    elif kind != "all":
        d = d[d["label"].astype(str) == kind]
    if centre != "all":
        d = d[d["center"].astype(str) == centre]
    d = d[(d["confidence"] >= confidence[0]) & (d["confidence"] <= confidence[1])]
    return d.sort_values("confidence", ascending=False)


def static_gallery(pred: pd.DataFrame, max_images: int = 48, size: int = 140):
    """All errors (up to ``max_images``), most confident first: the report's stand-in for the browser."""
    from glomlib.evaluate import plots

    d = filter_errors(pred).head(max_images)
    imgs = load_display_images(d["path"].tolist(), size) if len(d) else []
    masks = load_display_masks(d["mask"].tolist(), size) if "mask" in d and len(d) else None
    cols = [plots.OUTCOME_COLOURS[o] for o in d["outcome"]]
    n_all = int(pred["error"].sum())
    return plots.montage(list(imgs), [caption(r) for _, r in d.iterrows()], ncols=8, masks=masks,
                         caption_colours=cols, caption_size=8,
                         title=f"All errors, most confident first ({len(d)} of {n_all} shown)")


def error_browser(pred: pd.DataFrame, page_size: int = 12, size: int = 160):
    """An ipywidgets browser: filter by outcome/class, centre and confidence; page through the images."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from glomlib.evaluate import plots

    labels = sorted(set(pred["label"].astype(str)) - {""})
    kind = w.Dropdown(options=["errors", "FP", "FN", "all", *labels], value="errors", description="show")
    centre = w.Dropdown(options=["all", *sorted(set(pred["center"].astype(str)) - {""})], value="all",
                        description="centre")
    conf = w.FloatRangeSlider(value=(0.5, 1.0), min=0.5, max=1.0, step=0.01, description="confidence",
                              continuous_update=False)
    prev_b, next_b = w.Button(description="◀ previous"), w.Button(description="next ▶")
    info, out = w.Label(), w.Output()
    state = {"page": 0}

    def render(*_):
        d = filter_errors(pred, kind.value, centre.value, conf.value)
        pages = max(1, -(-len(d) // page_size))
        state["page"] = min(state["page"], pages - 1)
        chunk = d.iloc[state["page"] * page_size:(state["page"] + 1) * page_size]
        info.value = f"{len(d)} images · page {state['page'] + 1}/{pages}"
        with out:
            out.clear_output(wait=True)
            if len(chunk):
                imgs = load_display_images(chunk["path"].tolist(), size)
                masks = load_display_masks(chunk["mask"].tolist(), size) if "mask" in chunk else None
                fig = plots.montage(list(imgs), [caption(r) for _, r in chunk.iterrows()], ncols=6, masks=masks,
                                    caption_colours=[plots.OUTCOME_COLOURS[o] for o in chunk["outcome"]])
                display(fig)
                plt.close(fig)
            else:
                print("No images match these filters.")

    def reset(*_):
        state["page"] = 0
        render()

    def step(delta):
        def f(*_):
            state["page"] = max(0, state["page"] + delta)
            render()
        return f

    for c in (kind, centre, conf):
        c.observe(reset, names="value")
    prev_b.on_click(step(-1))
    next_b.on_click(step(+1))
    render()
    return w.VBox([w.HBox([kind, centre, conf]), w.HBox([prev_b, next_b, info]), out])


def show_error_browser(pred: pd.DataFrame, out: str | Path | None = None, interactive: bool = True) -> str:
    """Widget browser in a live kernel; otherwise the static gallery (saved as ``error_gallery``).
    Returns "widget" or "static"."""
    from IPython.display import display

    from glomlib.evaluate import plots

    if live_frontend(interactive):
        display(error_browser(pred))
        if out is not None:  # the figures folder stays complete in interactive sessions too
            import matplotlib.pyplot as plt

            fig = static_gallery(pred)
            plots.save_figure(fig, out, "error_gallery")
            plt.close(fig)
        return "widget"
    plots.show(static_gallery(pred), out, "error_gallery",
               "every error (up to 48), most confident first; caption colour = outcome (orange FP, pink FN).")
    return "static"


# ----------------------------------------------------------------------------------------------- outputs

def write_outputs(out: str | Path, pred: pd.DataFrame, gradcam_rows: pd.DataFrame | None = None,
                  neighbours: pd.DataFrame | None = None) -> dict[str, Path]:
    """``errors.csv`` (every misclassified image with outcome, prob, confidence, mask share when computed),
    ``error_rates_by_center.csv``, ``error_rates_by_slide.csv`` and ``neighbours.csv``."""
    out = Path(out)
    e = pred[pred["error"]].sort_values("confidence", ascending=False)
    if gradcam_rows is not None and len(gradcam_rows):
        cols = [c for c in ("path", "mask_share", "mask_area", "mask_enrichment") if c in gradcam_rows]
        e = e.merge(gradcam_rows[cols], on="path", how="left")
    paths = {"errors": out / "errors.csv", "by_center": out / "error_rates_by_center.csv",
             "by_slide": out / "error_rates_by_slide.csv"}
    e.to_csv(paths["errors"], index=False)
    error_rates(pred, "center").to_csv(paths["by_center"])
    error_rates(pred, "slide").to_csv(paths["by_slide"])
    if neighbours is not None:
        paths["neighbours"] = out / "neighbours.csv"
        neighbours.to_csv(paths["neighbours"], index=False)
    return paths


def neighbour_table(pred: pd.DataFrame, nn_idx: np.ndarray, errors: Sequence[int]) -> pd.DataFrame:
    """For each error: its nearest neighbours' (``nn_idx``) paths, labels and whether they share its true label."""
    nn_idx = np.asarray(nn_idx, int).reshape(len(errors), -1)
    recs = []
    for row, e in zip(nn_idx, errors):
        for rank, j in enumerate(row, 1):
            recs.append({"error_path": pred["path"].iloc[e], "outcome": pred["outcome"].iloc[e], "rank": rank,
                         "neighbour_path": pred["path"].iloc[j], "neighbour_label": pred["label"].iloc[j],
                         "neighbour_y": int(pred["y"].iloc[j]),
                         "same_true_label": bool(pred["y"].iloc[j] == pred["y"].iloc[e])})
    return pd.DataFrame(recs)


def error_indices(pred: pd.DataFrame, n: int) -> list[int]:
    """Positions (in ``pred``) of up to ``n`` errors, most confident first, alternating FP and FN."""
    fp = [pred.index.get_loc(i) for i in ranked_errors(pred, "FP").index]
    fn = [pred.index.get_loc(i) for i in ranked_errors(pred, "FN").index]
    out: list[int] = []
    while (fp or fn) and len(out) < n:
        for lst in (fp, fn):
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


def class_names(meta: dict[str, Any] | None, pred: pd.DataFrame) -> tuple[str, str]:
    """(positive, negative) class names from the model meta or the predictions."""
    if meta and meta.get("positive_label"):
        return str(meta["positive_label"]), str(meta.get("negative_label") or "negative")
    pos = pred.loc[pred["y"] == 1, "label"]
    neg = pred.loc[pred["y"] == 0, "label"]
    return (str(pos.iloc[0]) if len(pos) else "positive", str(neg.iloc[0]) if len(neg) else "negative")

