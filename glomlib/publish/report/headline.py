"""The index's answer, read from the run's own files.

AUC per init with a 95 % CI (slide bootstrap of the pooled out-of-fold predictions), 04's paired differences, the
task in words, the profile's caveat, and the settings that differ from the defaults."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from glomlib.publish import present as P

_PATH_SETTINGS = {"data", "out", "runs", "run", "ssl_checkpoint", "imagenet_weights", "cache_dir", "progress"}


def comparison(run_dir: Path, definition: dict[str, Any]) -> dict[str, Any] | None:
    """``{"auc": rows, "pairs": rows, "task": {...}}`` from the fine-tune runs at their largest shared label
    fraction, or None when the run holds no complete out-of-fold predictions of every init."""
    import pandas as pd

    from glomlib.evaluate import compare
    from glomlib.evaluate.metrics import auc
    from glomlib.evaluate.uncertainty import bootstrap_ci

    try:
        found = compare.collect_runs(run_dir / "finetune", definition["inits"])
        main = compare.main_runs(found)
        oof = compare.paired_oof(main)
    except (OSError, ValueError, KeyError):
        return None
    n_boot = int(definition.get("parameters", {}).get("04_baseline_comparison", {}).get("n_boot", 2000))
    y, groups = oof["y"].to_numpy(), oof["slide"].to_numpy()
    rows = []
    for init in main:
        b = bootstrap_ci(y, oof[init].to_numpy(), metric=auc, groups=groups, n_boot=n_boot)["value"]
        rows.append({"init": init, "auc": b["value"], "lo": b["ci_low"], "hi": b["ci_high"]})
    saved = run_dir / "comparison" / "pairwise.csv"  # notebook 04's own numbers, so the index and 04 agree
    pairs = pd.read_csv(saved) if saved.is_file() else compare.pairwise_tests(main, n_boot=n_boot)
    first = next(iter(main.values()))
    centres = {str(c) for c in first["predictions"].get("center", []) if str(c).strip()}
    task = {
        "positive": first["metrics"].get("positive_label", "positive"),
        "negative": first["metrics"].get("negative_label", "negative"),
        "n": len(oof),
        "n_pos": int(oof["y"].sum()),
        "slides": oof["slide"].nunique(),
        "centres": len(centres),
        "fraction": compare.main_fraction(found),
        "n_boot": n_boot,
        "ssl_from": ", continued from ImageNet weights" if _ssl_init(run_dir) == "imagenet" else "",
    }
    budgets = run_dir / "comparison" / "label_budget.csv"  # 04's paired differences per label budget
    claims = budget_claims(pd.read_csv(budgets)) if budgets.is_file() else []
    return {"auc": rows, "pairs": pairs.to_dict("records"), "task": task, "budget_claims": claims}


def budget_claims(table: Any) -> list[str]:
    """04's sentences over label budgets rebuilt from its ``label_budget.csv``, one per kind (fine-tuned, frozen
    probe) and pair, budgets in label order, those without an AUC left out."""
    out = []
    for (kind, a, b), g in table.groupby(["kind", "a", "b"], sort=False):
        ok = g.dropna(subset=["diff", "ci_low", "ci_high"]).sort_values("labels", kind="stable")
        rows = list(ok[["budget", "diff", "ci_low", "ci_high"]].itertuples(index=False, name=None))
        out.append(P.budget_claim(str(kind), int(g["n_seeds"].iloc[0]), str(a), str(b), rows))
    return [s for s in out if s]


def _ssl_init(run_dir: Path) -> str:
    cfg = run_dir / "ssl" / "config.json"
    return str(json.loads(cfg.read_text()).get("ssl_init", "")) if cfg.is_file() else ""


def _parameter_cell(nb: Any, tag: str) -> dict[str, tuple[Any, str]]:
    """``{name: (value, comment)}`` of the cell tagged ``tag`` (``parameters`` or ``injected-parameters``)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and tag in cell.metadata.get("tags", []):
            lines, out = cell.source.splitlines(), {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    try:
                        value = ast.literal_eval(node.value)
                    except ValueError:
                        continue
                    rest = lines[node.end_lineno - 1][node.end_col_offset :]
                    out[node.targets[0].id] = (value, rest.split("#", 1)[1].strip() if "#" in rest else "")
            return out
    return {}


def notebook_settings(nb_path: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"value", "default", "words"}}`` for every parameter of an executed notebook: the value it ran with
    (papermill's injected cell, else the default) and the parameter's comment in words."""
    import nbformat

    if not nb_path.is_file():
        return {}
    nb = nbformat.read(str(nb_path), as_version=4)
    defaults, given = _parameter_cell(nb, "parameters"), _parameter_cell(nb, "injected-parameters")
    words = {k: re.split(r"[;(:]|, empty| means", c)[0].strip() for k, (_, c) in defaults.items()}
    words = {k: (k if not w or "|" in w else w).replace("_", " ") for k, w in words.items()}  # "auto | cpu": choices
    return {k: {"value": given.get(k, (d, ""))[0], "default": d, "words": words[k]} for k, (d, _) in defaults.items()}


def _shown(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_shown, v)) or "none"
    if isinstance(v, float):  # 1.0 -> 1, 5e-05 stays short
        return f"{v:g}"
    return "empty" if v == "" else str(v)


def changed_settings(run_dir: Path, steps: list[Any], titles: dict[str, str]) -> list[dict[str, str]]:
    """The settings each step ran with that differ from its notebook's defaults, in words, without file paths
    (the fine-tunes of every init are listed once where they agree)."""
    rows, seen = [], set()
    for step in steps:
        for name, s in notebook_settings(run_dir / "notebooks" / step.executed_name).items():
            v, d = s["value"], s["default"]
            if v == d or name in _PATH_SETTINGS or name == "init" or "/" in f"{v}{d}":
                continue
            key = (step.stem, name, _shown(v))
            if key not in seen:
                seen.add(key)
                rows.append({"step": titles.get(step.stem, step.stem), "setting": s["words"], "value": _shown(v)})
                rows[-1]["default"] = _shown(d)
    return rows


def settings_sentence(run_dir: Path, steps: list[Any], profile: dict[str, Any]) -> tuple[str, bool]:
    """("quick-cpu: 64 px thumbnails, 5 epochs, 3 folds, 1 seed", is_demonstration) from the fine-tune settings."""
    ft = next((s for s in steps if s.stem == "03_finetune"), None)
    st = {k: v["value"] for k, v in notebook_settings(run_dir / "notebooks" / ft.executed_name).items()} if ft else {}
    size, epochs, folds, seeds = (st.get(k) for k in ("image_size", "epochs", "folds", "seeds"))
    if size is None:
        return "", False
    n_seeds = len(seeds) if isinstance(seeds, list) else 1
    text = (
        f"{profile.get('name', 'this profile')}: {size} px {'thumbnails' if size < 224 else 'images'}, "
        f"{P.count(epochs)} epoch{'s' if epochs != 1 else ''}, {P.count(folds)} folds, {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    )
    return text + (", a slice of the data" if profile.get("subset") else ""), (size < 96 or epochs < 10)
