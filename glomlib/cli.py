"""The ``glomlib`` command: one entry point, every option generated from the step's config dataclass by tyro.

Each command is a config class and a function taking that config (``COMMANDS``); modules are imported only
when their command runs, so ``glomlib data check`` does not import torch. ``--config FILE`` (YAML/JSON of
``name: value``) sets options before the command line does; ``--debug`` (or GLOMLIB_DEBUG=1) prints tracebacks.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import os
import sys
import traceback
import typing

# Exit codes of every ``glomlib`` command (also in README and ``glomlib --help``).
EXIT_OK = 0
EXIT_DATA = 1  # the data: manifest, images, labels, slide-grouped folds
EXIT_USAGE = 2  # the command line, a parameter, a profile, or a resume that does not match the run
EXIT_OUTPUT = 3  # the output exists already (never overwritten), or it is not writable
EXIT_DISK_FULL = 4  # the disk filled up while writing
EXIT_MODEL = 5  # a model or encoder file is missing, unreadable, or its metadata/weights are invalid
EXIT_STEP = 6  # glomlib run: a step (notebook) failed, or the run folder cannot go on as asked
EXIT_INTERNAL = 70  # an unexpected error (a bug)
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

# command -> (help, "module:function"); a group maps its sub-commands to the same. The function takes the
# command's config (its first parameter's annotation names the StepConfig class the options are built from).
COMMANDS: dict[str, tuple[str, str | dict[str, tuple[str, str]]]] = {
    "data": (
        "check a manifest, build one from a folder, fetch a public dataset, apply a label review",
        {
            "check": ("validate a manifest; report every problem with its row and file", "glomlib.data.cli:check"),
            "from-folder": ("build a manifest from <root>/<label>/*.png", "glomlib.data.cli:from_folder"),
            "fetch": (
                "fetch a public dataset (mirror or download), verify it, write a manifest",
                "glomlib.data.cli:fetch",
            ),
            "apply-review": (
                "apply a filled review.csv to a manifest -> a NEW manifest",
                "glomlib.data.cli:apply_review",
            ),
        },
    ),
    "ssl": ("SimCLR pretraining (notebook 02's step)", "glomlib.train.simclr.cli:cli_run"),
    "finetune": ("fine-tune + slide-grouped cross-validation for one init", "glomlib.train.finetune.cli:cli_run"),
    "probe": ("frozen-feature linear probe + kNN of an encoder (slide-grouped CV)", "glomlib.evaluate.probe:cli_run"),
    "predict": ("apply a saved model to a manifest", "glomlib.evaluate.predict:cli_run"),
    "evaluate": (
        "measure a saved model on a labelled manifest (external validation)",
        "glomlib.evaluate.external.step:cli_run",
    ),
    "calibrate": (
        "re-fit threshold + probability calibration on local labels -> a new model file",
        "glomlib.evaluate.calibrate:cli_run",
    ),
    "review": ("label review sheet (HTML + CSV) from a fine-tune run", "glomlib.review.labels.cli:cli_run"),
    "run": ("run notebooks 01..05 with a profile and render HTML reports", "glomlib.publish.pipeline.cli:cli_run"),
    "select": (
        "which glomeruli to label next (ranked list + gallery); --simulate measures the strategies against random",
        "glomlib.select.cli:cli_run",
    ),
    "slides": (
        "whole-slide images: inspect, cut glomerulus crops from QuPath outlines, export predictions to QuPath",
        {
            "inspect": (
                "levels, dimensions, MPP and its source, bounds offset of a slide",
                "glomlib.slides.cli:inspect",
            ),
            "extract": (
                "cut crops + masks from QuPath GeoJSON outlines -> a glomlib dataset",
                "glomlib.slides.cli:extract",
            ),
            "export": ("predictions -> one QuPath GeoJSON per slide + a per-biopsy table", "glomlib.slides.cli:export"),
        },
    ),
}


def _load(spec: str) -> tuple[type, typing.Callable[..., int]]:
    """The command's function and the config class its first parameter is annotated with."""
    module, name = spec.split(":")
    fn = getattr(importlib.import_module(module), name)
    first = next(iter(inspect.signature(fn).parameters))
    return typing.get_type_hints(fn)[first], fn


def _usage() -> str:
    lines = [
        __doc__.splitlines()[0],
        "",
        "usage: glomlib [--debug] COMMAND [--name value ...] [--config FILE]",
        "",
        "commands:",
    ]
    for name, (help_, target) in COMMANDS.items():
        lines.append(f"  {name:<10} {help_}")
        if isinstance(target, dict):
            lines += [f"    {name} {sub:<14} {h}" for sub, (h, _) in target.items()]
    lines += ["", "glomlib COMMAND --help lists every option with its default and meaning.", "", "exit codes:"]
    lines += [f"  {k:>3}  {v}" for k, v in EXIT_CODES.items()]
    return "\n".join(lines)


def _command(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """``(prog, "module:Config:function", remaining argv)`` for the command line, or None (usage printed)."""
    if not argv or argv[0] not in COMMANDS:
        return None
    help_, target = COMMANDS[argv[0]]
    if isinstance(target, str):
        return f"glomlib {argv[0]}", target, argv[1:]
    if len(argv) < 2 or argv[1] not in target:
        print(f"usage: glomlib {argv[0]} {{{','.join(target)}}} ...\n\n{help_}")
        for sub, (h, _) in target.items():
            print(f"  {sub:<14} {h}")
        return None
    return f"glomlib {argv[0]} {argv[1]}", target[argv[1]][1], argv[2:]


def classify(e: BaseException) -> int:
    """The documented exit code for an anticipated failure (its ``exit_code``), or EXIT_INTERNAL."""
    from glomlib.core.io import DiskFullError, is_disk_full

    if isinstance(e, DiskFullError) or is_disk_full(e):
        return EXIT_DISK_FULL
    code = getattr(e, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(e, (FileExistsError, PermissionError, IsADirectoryError)) or (
        isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    ):
        return EXIT_OUTPUT
    if isinstance(e, FileNotFoundError):
        return EXIT_DATA
    return EXIT_INTERNAL


def _message(e: BaseException, code: int) -> str:
    if code == EXIT_DISK_FULL and not type(e).__name__ == "DiskFullError":
        from glomlib.core.io import _fmt_bytes, free_space

        where = getattr(e, "filename", None) or os.getcwd()
        free = free_space(os.path.dirname(str(where)) or ".")
        return (
            f"disk full while writing {where} ({_fmt_bytes(free) if free is not None else 'unknown'} free); "
            "free some space or write the output to another disk, then run again"
        )
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
    if argv[:1] in (["-h"], ["--help"]):
        print(_usage())
        return EXIT_OK
    found = _command(argv)
    if found is None:
        if not argv or argv[0] in COMMANDS:
            return EXIT_USAGE
        print(_usage() + f"\n\nglomlib: error: unknown command {argv[0]!r}", file=sys.stderr)
        return EXIT_USAGE
    prog, spec, rest = found
    try:
        cls, fn = _load(spec)
        from glomlib.core.config import parse_args

        return int(fn(parse_args(cls, rest, prog)) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; what was finished is kept (see the run folder to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # anticipated failures: one clear message + a documented exit code
        code = classify(e)
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {_message(e, code)}", file=sys.stderr)
        if not debug:
            print(f"(exit code {code}: {EXIT_CODES[code]}; --debug shows the traceback)", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
