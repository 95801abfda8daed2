"""``glomlib ssl`` and ``python -m glomlib.train.simclr`` (what torchrun launches): the same options."""

from __future__ import annotations

import argparse

import torch.distributed as dist

from glomlib.core.config import add_config_arguments, config_from_args
from glomlib.train.simclr import dist as D
from glomlib.train.simclr.config import SSLConfig
from glomlib.train.simclr.run import run_ssl

DESCRIPTION = "SimCLR pretraining of a glomerulus encoder (notebook 02, ``glomlib ssl``)."


def _cli(args: argparse.Namespace) -> int:
    res = run_ssl(config_from_args(SSLConfig, args))
    if D.is_main():
        print(f"encoder: {res.encoder_path}  ({res.wall_s:.0f} s)")
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SSLConfig)
    p.set_defaults(func=_cli)


def register(subparsers) -> None:
    p = subparsers.add_parser("ssl", help="SimCLR pretraining (notebook 02's step)", description=DESCRIPTION)
    _add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m glomlib.train.simclr", description=DESCRIPTION)
    _add_arguments(p)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
