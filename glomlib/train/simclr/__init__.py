"""SimCLR pretraining of a glomerulus encoder (notebook 02, ``glomlib ssl``).

:func:`run_ssl` reads the manifest's patches (uint8 cache), trains backbone + lightly's projection head with NT-Xent
on two augmented views per image, logs loss / images/s / learning rate / collapse and kNN monitors to history.csv,
checkpoints every epoch (``resume`` continues it) and saves the backbone as ``encoder.safetensors`` for
fine-tuning's ``init=glom``. Several GPUs: ``torchrun --nproc_per_node=N -m glomlib.train.simclr ...`` (negatives
gathered across ranks, data sharded, batch size per rank).

Modules: config, model (SimCLR, loss, optimiser, BatchNorm), data (patches, batches, loader, history), dist
(torchrun), loop (:func:`pretrain`), run (:func:`run_ssl`, final probe), figures, cli.
"""

# ruff: noqa: F401 (the package re-exports its public names)
from glomlib.train.simclr.cli import cli_run, main
from glomlib.train.simclr.config import SSLConfig
from glomlib.train.simclr.data import (  # noqa: I001
    PairSource,
    _worker_init,
    epoch_batches,
    load_data,
    make_loader,
    read_history,
    write_history,
)
from glomlib.train.simclr.figures import plot_history, plot_view_pairs
from glomlib.train.simclr.loop import SSLResult, pretrain, ssl_plan, train_step
from glomlib.train.simclr.model import (
    SimCLR,
    build_model,
    build_training,
    embedding_spread,
    recalibrate_bn,
    simclr_loss,
    warmup_steps,
)
from glomlib.train.simclr.run import final_probe, prepare_run_dir, probe_table, run_ssl
