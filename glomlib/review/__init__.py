"""Looking at data and errors with a pathologist: the data audit, error analysis and label review.

:mod:`glomlib.evaluate` measures a model: numbers with confidence intervals that go into a results table. This room
produces material a person judges image by image: galleries, heat maps, duplicate pairs, flagged images and review
sheets whose decisions flow back into the manifest. It reads the measurements (predictions, fold models, plots) but
nothing in evaluate reads it, so it sits one layer above evaluate and below train; keeping it apart keeps the
measuring code small enough to audit and lets the review tools (widgets, HTML pages, cleanlab) grow without touching it.
"""

import importlib


def lazy_exports(package: str, modules: tuple[str, ...]):
    """``(__getattr__, __dir__)`` for a package that re-exports its modules' public names, each loaded on first use."""

    def __getattr__(name: str):
        for m in modules if not name.startswith("_") else ():
            mod = importlib.import_module(f"{package}.{m}")
            if name in vars(mod):
                return vars(mod)[name]
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({n for m in modules for n in vars(importlib.import_module(f"{package}.{m}")) if n[0] != "_"})

    return __getattr__, __dir__
