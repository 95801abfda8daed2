"""SimCLR pretraining of a glomerulus encoder (notebook 02, ``glomlib ssl``).

One config (:class:`SSLConfig`, fields == notebook 02's parameters) drives :func:`run_ssl`, which

1. reads the manifest, fingerprints the data and loads the patches from the uint8 cache,
2. trains backbone + lightly's ``SimCLRProjectionHead`` with lightly's ``NTXentLoss`` on two augmented views
   per image (:mod:`glomlib.train.augment`: crop, flips, any-angle rotation, colour jitter, CLAHE, resize),
3. logs per epoch loss, images/s, learning rate and a collapse monitor (spread of the L2-normalised
   embeddings vs 1/sqrt(d), and kNN accuracy/AUC on labeled patches with slide-grouped folds) to
   ``history.csv``,
4. checkpoints every epoch atomically (``checkpoint.pt``, loadable with ``weights_only=True``; ``resume``
   continues after the last completed epoch with model, optimiser, scheduler and RNG state),
5. saves the backbone alone as ``encoder.safetensors`` for fine-tuning's ``init=glom``.

Devices: CPU (all cores, optional bf16 autocast) and CUDA (bf16 autocast where supported, channels_last,
pinned memory, data-loader workers). Several GPUs: launch the same command with
``torchrun --nproc_per_node=N -m glomlib.train.simclr ...``; negatives are gathered across ranks
(``NTXentLoss(gather_distributed=True)``), the data are sharded per rank, and the batch size is per rank.

Modules: config (SSLConfig), model (SimCLR, loss, optimiser, BatchNorm), data (patches, batches, loader, history),
dist (torchrun), loop (:func:`pretrain`), run (:func:`run_ssl`, final probe), figures, cli.
"""

from glomlib.train.simclr.cli import main, register
from glomlib.train.simclr.config import CHECKPOINT_NAME, ENCODER_NAME, HISTORY_NAME, OPTIMIZERS, SSLConfig
from glomlib.train.simclr.data import (
    PairSource,
    _worker_init,
    epoch_batches,
    load_data,
    make_loader,
    read_history,
    write_history,
)
from glomlib.train.simclr.figures import plot_history, plot_view_pairs
from glomlib.train.simclr.loop import SSLResult, pretrain, ssl_plan, ssl_workload, train_step
from glomlib.train.simclr.model import (
    SimCLR,
    build_model,
    build_training,
    embedding_spread,
    recalibrate_bn,
    revert_sync_batchnorm,
    simclr_loss,
    warmup_steps,
)
from glomlib.train.simclr.run import final_probe, prepare_run_dir, probe_table, run_ssl

__all__ = [
    "CHECKPOINT_NAME",
    "ENCODER_NAME",
    "HISTORY_NAME",
    "OPTIMIZERS",
    "PairSource",
    "SSLConfig",
    "SSLResult",
    "SimCLR",
    "_worker_init",
    "build_model",
    "build_training",
    "embedding_spread",
    "epoch_batches",
    "final_probe",
    "load_data",
    "main",
    "make_loader",
    "plot_history",
    "plot_view_pairs",
    "prepare_run_dir",
    "pretrain",
    "probe_table",
    "read_history",
    "recalibrate_bn",
    "register",
    "revert_sync_batchnorm",
    "run_ssl",
    "simclr_loss",
    "ssl_plan",
    "ssl_workload",
    "train_step",
    "warmup_steps",
    "write_history",
]
