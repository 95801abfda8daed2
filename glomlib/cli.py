"""The ``glomlib`` command. Each subcommand lives in the module that does the work.

A module that offers a subcommand defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed args and returning an exit status). Modules are imported only
when listed here, so ``glomlib data check`` does not import torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback

# Exit codes of every ``glomlib`` command (also in README and ``glomlib --help``).
EXIT_OK = 0
EXIT_DATA = 1        # the data: manifest, images (missing, unreadable, over the pixel budget), labels, splits/folds
EXIT_USAGE = 2       # the command line, a parameter, a profile, or a resume that does not match the run
EXIT_OUTPUT = 3      # the output: it exists already (never overwritten), or it is not writable (permissions, read-only)
EXIT_DISK_FULL = 4   # the disk filled up while writing (the message names the file and the free space)
EXIT_MODEL = 5       # a model or encoder file is missing, unreadable, or its metadata/weights are invalid
EXIT_STEP = 6        # glomlib run: a step (notebook) failed, or the run folder cannot go on as asked
EXIT_INTERNAL = 70   # an unexpected error (a bug): rerun with --debug and report the traceback
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_DATA: "data problem: manifest, image files, labels, slide-grouped folds (message names row and file)",
    EXIT_USAGE: "usage or configuration error: option, parameter, profile, resume that does not match the run",
    EXIT_OUTPUT: "output problem: --out exists (never overwritten) or is not writable",
    EXIT_DISK_FULL: "disk full (message names the file and the free space)",
    EXIT_MODEL: "model/encoder file missing, unreadable or invalid",
    EXIT_STEP: "glomlib run: a notebook step failed (message names it; fix, then --resume) or the run cannot go on",
    EXIT_INTERNAL: "unexpected error (a bug): rerun with --debug and report the traceback",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

# subcommand -> module defining register(subparsers)
SUBCOMMANDS = {
    "data": "glomlib.data.cli",      # data check / fetch / from-folder
    "ssl": "glomlib.train.simclr",           # SimCLR pretraining from the shell
    "finetune": "glomlib.train.finetune",  # fine-tune + cross-validated evaluation from the shell
    "predict": "glomlib.evaluate.predict",   # apply a saved model to a manifest
    "review": "glomlib.evaluate.review",     # label review sheet (HTML + CSV) from a fine-tune run
    "probe": "glomlib.evaluate.probe",       # frozen-feature linear probe + kNN of an encoder
    "evaluate": "glomlib.evaluate.external",  # measure a saved model on a labelled manifest (external validation)
    "calibrate": "glomlib.evaluate.calibrate",  # re-fit threshold + probability calibration on local labels -> new model
    "select": "glomlib.select.cli",           # which glomeruli to label next; --simulate: does choosing beat random
    "run": "glomlib.publish.pipeline",      # notebooks 01..05 with a profile -> HTML reports
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    epilog = ("exit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())
              + "\n\n--debug (anywhere on the command line, or GLOMLIB_DEBUG=1) prints the traceback of a failure.")
    parser = argparse.ArgumentParser(prog="glomlib", description=__doc__.splitlines()[0], epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="print the full traceback when a command fails")
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


def _is(e: BaseException, module: str, name: str) -> bool:
    """isinstance(e, module.name) without importing module (``data check`` must not import torch)."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(e, cls)


def classify(e: BaseException) -> int:
    """The documented exit code for an anticipated failure, or EXIT_INTERNAL."""
    from glomlib.core.config import ConfigError
    from glomlib.core.io import DiskFullError, ResumeError, is_disk_full

    if isinstance(e, DiskFullError) or is_disk_full(e):
        return EXIT_DISK_FULL
    if (_is(e, "glomlib.models.files", "ModelFileError") or _is(e, "glomlib.models.files", "EncoderFileError")
            or _is(e, "glomlib.models.backbones", "WeightsNotFoundError")):
        return EXIT_MODEL
    if _is(e, "glomlib.publish.steps", "PipelineError"):
        return EXIT_STEP
    if isinstance(e, (ConfigError, ResumeError)):
        return EXIT_USAGE
    if (_is(e, "glomlib.data.manifest", "ManifestError") or _is(e, "glomlib.data.splits", "SplitError")
            or _is(e, "glomlib.data.pixels", "ImageTooLargeError") or _is(e, "glomlib.data.cache", "ImageReadError")):
        return EXIT_DATA
    if isinstance(e, (FileExistsError, PermissionError, IsADirectoryError)) or (
            isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)):
        return EXIT_OUTPUT
    if isinstance(e, FileNotFoundError):
        return EXIT_DATA
    return EXIT_INTERNAL


def _message(e: BaseException, code: int) -> str:
    if code == EXIT_DISK_FULL and not type(e).__name__ == "DiskFullError":
        from glomlib.core.io import _fmt_bytes, free_space

        where = getattr(e, "filename", None) or os.getcwd()
        free = free_space(os.path.dirname(str(where)) or ".")
        return (f"disk full while writing {where} ({_fmt_bytes(free) if free is not None else 'unknown'} free); "
                "free some space or write the output to another disk, then run again")
    if isinstance(e, OSError) and not str(e).strip():
        return f"{e.strerror or type(e).__name__}: {e.filename}"
    if code == EXIT_OUTPUT and isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{e} — that path is not writable (or readable) by you: check its permissions, or choose another --out"
    msg = str(e) if str(e).strip() else type(e).__name__
    if code == EXIT_INTERNAL:
        msg = f"unexpected {type(e).__name__}: {msg}\n(this looks like a bug: rerun with --debug and report the traceback)"
    return msg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("GLOMLIB_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # anticipated failures: one clear message + a documented exit code
        code = classify(e)
        if debug:
            traceback.print_exc()
        prog = "glomlib" + (f" {first}" if first in SUBCOMMANDS else "")
        print(f"{prog}: error: {_message(e, code)}", file=sys.stderr)
        if not debug:
            print(f"(exit code {code}: {EXIT_CODES[code]}; --debug shows the traceback)", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
