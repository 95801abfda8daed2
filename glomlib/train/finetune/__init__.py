"""Fine-tune a classifier from one initialisation and evaluate it with slide-grouped cross-validation.

``init``: ``glom`` (the SSL encoder of notebook 02: a file, an SSL run folder or ``latest``; one per held-out centre
with ``{centre}``), ``imagenet`` (offline weights) or ``scratch``. The same protocol for every init: slide-grouped
folds per seed (``folds.csv``); per label fraction, seed and fold the training folds are subsampled, a validation
split is carved out by slide, and backbone + head train with AdamW, warm-up + cosine, class-weighted BCE and light
augmentation, with the same step budget for every fraction, best-epoch selection and early stopping. Every fold
model is kept under ``checkpoints/`` (resumable); a final model trains on all labelled images. Outputs in ``out``:
config.json, provenance.json, folds.csv, predictions.csv, metrics.json, model.safetensors, checkpoints/.

Modules: config, encoder (initial backbone, SSL encoder files), train (:func:`train_one`), save (model files), cv
(:func:`run_finetune`: folds, metrics, final model), cli.
"""

# ruff: noqa: F401 (the package re-exports its public names)
from glomlib.evaluate.runs import INITS, load_run
from glomlib.models.heads import build_classifier
from glomlib.train.finetune.cli import cli_run
from glomlib.train.finetune.config import FinetuneConfig
from glomlib.train.finetune.cv import FinetuneResult, run_finetune
from glomlib.train.finetune.encoder import ssl_encoders
from glomlib.train.finetune.save import zero_nonfinite_weights
from glomlib.train.finetune.train import passes_per_epoch, subsample_labels, train_one
