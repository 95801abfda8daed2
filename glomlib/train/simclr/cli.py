"""``glomlib ssl`` and ``python -m glomlib.train.simclr`` (what torchrun launches).

The same options, SSLConfig's
fields."""

from __future__ import annotations

import sys

import torch.distributed as dist

from glomlib.core.config import parse_args
from glomlib.train.simclr import dist as D
from glomlib.train.simclr.config import SSLConfig
from glomlib.train.simclr.run import run_ssl


def cli_run(cfg: SSLConfig) -> int:
    res = run_ssl(cfg)
    if D.is_main():
        print(f"encoder: {res.encoder_path}  ({res.wall_s:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return cli_run(parse_args(SSLConfig, sys.argv[1:] if argv is None else argv, "python -m glomlib.train.simclr"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
