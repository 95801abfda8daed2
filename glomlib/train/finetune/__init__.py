"""Fine-tune a classifier from one initialisation and evaluate it with slide-grouped cross-validation.

Initialisations (``init``):

* ``glom`` — the SSL encoder from notebook 02 (``ssl_checkpoint``: a file, an SSL run folder, or ``latest`` =
  the newest ``runs/**/encoder.safetensors``); its backbone must match ``backbone``.
* ``imagenet`` — ImageNet weights, offline (see :mod:`glomlib.models.backbones`).
* ``scratch`` — random weights.

Protocol (identical for every init, so the comparison is fair):

1. Folds: ``glomlib.data.splits.assign_folds`` — slide-grouped (patient-grouped when patients differ), stratified,
   ``folds`` folds, repeated for each seed in ``seeds``. ``folds.csv`` records which slide is in which fold.
2. For each label fraction in ``label_fractions``, seed and fold (the same folds for every fraction): the training
   folds are subsampled to that fraction of their images (stratified by label, by seed; the test fold is never
   touched); a validation split (``val_fraction``, grouped by slide) is carved from the remaining training
   images; the model (backbone + dropout + linear head) is trained with AdamW + warm-up/cosine schedule,
   class-weighted BCE (``pos_weight = n_neg / n_pos``), light augmentation (flips, 90° rotations, colour
   jitter). Step budget: when ``epochs`` passes over a small training set would make fewer optimiser steps than
   the budget (``min_steps=-1``: as many as the same fold makes with all labels), each epoch makes several passes
   (:func:`passes_per_epoch`), so every fraction gets as many updates and the same ``epochs`` validation checks.
   After every epoch the validation loss is measured; the best epoch's weights are kept and training stops after
   ``patience`` epochs without improvement.
   The test fold is predicted once, with the selected weights.
3. Every fold model is kept: ``checkpoints/<seed{s}-fold{k} | frac{f}-seed{s}-fold{k}>/model.safetensors``
   (float16 unless that moves a test probability by more than 1e-3, then float32; metadata as the final model's
   plus ``seed``, ``fold``, ``test_slides``, ``label_fraction``), next to that fold's predictions, history and
   result.json. Folds are checkpointed after each epoch (atomic writes); with ``resume=True`` finished folds are
   read back, an interrupted fold continues from its last epoch.
4. A final model is trained on all labelled images (the largest fraction) for the median of the folds' selected
   epoch counts and saved as a self-describing ``model.safetensors`` (see :mod:`glomlib.evaluate.predict`).

Outputs in ``out``: config.json, provenance.json, folds.csv, predictions.csv (out-of-fold, every image, seed and
label fraction), metrics.json (per fold + mean ± std; ``by_fraction`` for every fraction), model.safetensors,
checkpoints/ (per-fold models, predictions and results).

Modules: config (FinetuneConfig), encoder (the initial backbone, SSL encoder files), train (:func:`train_one`),
save (model files), cv (:func:`run_finetune`: folds, metrics, final model), cli.
"""

from glomlib.evaluate.runs import INITS, load_run
from glomlib.models.heads import build_classifier
from glomlib.train.augment import light_augment
from glomlib.train.finetune.cli import register
from glomlib.train.finetune.config import MODEL_FORMAT, FinetuneConfig
from glomlib.train.finetune.cv import FinetuneResult, fold_dir_name, run_finetune
from glomlib.train.finetune.encoder import (
    build_initial_backbone,
    find_latest_encoder,
    resolve_ssl_checkpoint,
    ssl_encoders,
)
from glomlib.train.finetune.save import FOLD_MODEL_TOLERANCE, save_fold_model, zero_nonfinite_weights
from glomlib.train.finetune.train import passes_per_epoch, subsample_labels, train_one

__all__ = [
    "FOLD_MODEL_TOLERANCE",
    "INITS",
    "MODEL_FORMAT",
    "FinetuneConfig",
    "FinetuneResult",
    "build_classifier",
    "build_initial_backbone",
    "find_latest_encoder",
    "fold_dir_name",
    "light_augment",
    "load_run",
    "passes_per_epoch",
    "register",
    "resolve_ssl_checkpoint",
    "run_finetune",
    "save_fold_model",
    "ssl_encoders",
    "subsample_labels",
    "train_one",
    "zero_nonfinite_weights",
]
