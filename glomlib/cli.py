"""The ``glomlib`` command. Each subcommand lives in the module that does the work.

A module that offers a subcommand defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed args and returning an exit status). Modules are imported only
when listed here, so ``glomlib data check`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module defining register(subparsers)
SUBCOMMANDS = {
    "data": "glomlib.data.cli",      # data check / fetch / from-folder
    "ssl": "glomlib.train.simclr",           # SimCLR pretraining from the shell
    "finetune": "glomlib.train.finetune",  # fine-tune + cross-validated evaluation from the shell
    "predict": "glomlib.evaluate.predict",   # apply a saved model to a manifest
    "run": "glomlib.publish.pipeline",      # notebooks 01..05 with a profile -> HTML reports
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glomlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see 'glomlib {name} --help')")
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue  # not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
