"""``glomlib select``: which glomeruli to label next (ranked list + gallery); ``--simulate``: does choosing beat random?

Picking writes ``next_to_label.csv`` and ``gallery.html``; ``--simulate`` measures every strategy against random
labelling on a labelled manifest (tables, figure, sentence).

e.g. ``glomlib select --encoder runs/<ssl run>/encoder.safetensors --strategy stratified --budget 32``
     ``glomlib select --simulate --encoder imagenet --image-size 64``
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from glomlib.core.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    StepConfig,
)
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.select.simulate import BUDGETS
from glomlib.select.strategies import STRATEGIES

Strategy = Literal["random", "stratified", "typiclust", "probcover", "kcenter", "margin"]


@dataclasses.dataclass(frozen=True)
class SelectConfig(StepConfig):
    """Parameters of ``glomlib select`` (and notebook 08)."""

    # fmt: off
    data: str = str(DEFAULT_MANIFEST)  # manifest CSV; rows with split test are never seen
    out: str = "auto"  # output folder (never overwritten); auto means runs/<stamp>-select
    encoder: str = "latest"  # an SSL run's encoder.safetensors; latest means the newest under runs/; imagenet | scratch
    backbone: str = "efficientnet_lite0"  # backbone of the imagenet or scratch encoder (an encoder file names its own)
    image_size: NonNegativeInt = 0  # pixels fed to the encoder (0 means the encoder file's own size; 96 for imagenet|scratch)
    strategy: Strategy = "stratified"  # random | stratified | typiclust | probcover | kcenter | margin
    budget: PositiveInt = 32  # glomeruli to pick
    max_per_slide: NonNegativeInt = 0  # at most this many picks per slide (0 means no cap)
    clusters: PositiveInt = 8  # k-means groups of the gallery
    dims: NonNegativeInt = 64  # PCA components of the embedding the strategies see (0 keeps all)
    seed: int = 0  # random seed
    labels: Literal["auto", "use", "ignore"] = "auto"  # use: labelled rows count as labelled; ignore: every row is a candidate; auto: use, unless every row is labelled
    memory_limit_gb: NonNegativeFloat = 0.0  # probcover refuses a pool whose n x n matrices need more GB (0: half the free memory)
    positive_label: str = ""  # positive class (empty means the one the manifest's dataset.json names)
    thumb_size: PositiveInt = 128  # gallery thumbnail size (pixels)
    simulate: bool = False  # measure the strategies on the labelled manifest instead of picking
    strategies: list[Strategy] = dataclasses.field(default_factory=lambda: list(STRATEGIES))  # simulate: strategies compared
    budgets: list[int] = dataclasses.field(default_factory=lambda: list(BUDGETS))  # simulate: label budgets (nested)
    seeds: PositiveInt = 20  # simulate: seeds per fold
    folds: int = 3  # simulate: slide-grouped folds (the pool is each fold's training slides)
    n_boot: PositiveInt = 1000  # simulate: bootstrap draws (slides and seeds resampled) of the CIs
    simulation: str = ""  # notebook 08: a select --simulate output folder to show; empty runs the simulation
    batch_size: PositiveInt = 128  # images per forward pass
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fmt: on

    def validate(self) -> None:
        bad = sorted(set(self.strategies) - set(STRATEGIES))
        if bad:
            raise ConfigError(f"strategies {bad}: choose from {', '.join(STRATEGIES)}.")
        if min(self.budgets, default=0) < 1:
            raise ConfigError("budgets must be at least 1.")
        if self.simulate and ("random" not in self.strategies or self.folds < 2):
            raise ConfigError("simulate needs 'random' among strategies (the reference) and folds >= 2.")


def _embedding(cfg: SelectConfig, require_labels: bool):
    from glomlib.data.manifest import read_manifest
    from glomlib.select.embed import embed, resolve_encoder

    df = read_manifest(cfg.data, positive_label=cfg.positive_label, require_labels=require_labels)
    X = embed(df, cfg.encoder, cfg.backbone, cfg.image_size, cfg.batch_size, cfg.device)
    return df, X, resolve_encoder(cfg.encoder, cfg.backbone, cfg.image_size)


def _out_dir(cfg: SelectConfig) -> Path:
    from glomlib.core import io

    return Path(io.new_run_dir("runs", "select") if cfg.out == "auto" else io.ensure_new_dir(cfg.out))


def run_select(cfg: SelectConfig) -> dict[str, Any]:
    """Pick ``cfg.budget`` glomeruli and write ``next_to_label.csv`` and ``gallery.html`` into a new folder."""
    from glomlib.core import io
    from glomlib.select.rank import gallery_html, select_next, thumbnails

    df, X, enc = _embedding(cfg, require_labels=False)
    if cfg.labels == "ignore" or (cfg.labels == "auto" and (df["y"] >= 0).all()):
        if cfg.labels == "auto":
            print(
                "every row of the manifest is labelled: picking as if none were (labels=auto; the label column "
                "lets you check the picks)"
            )
        df = df.assign(y=-1)
    table = select_next(
        df,
        X,
        cfg.strategy,
        cfg.budget,
        cap=cfg.max_per_slide,
        seed=cfg.seed,
        dims=cfg.dims,
        clusters=cfg.clusters,
        memory_limit_gb=cfg.memory_limit_gb,
    )
    out = _out_dir(cfg)
    cfg.save(out / "config.json")
    io.write_provenance(out, cfg, extra={"encoder": enc, "manifest": df.attrs["manifest"]})
    sub = f"{enc['label']}, {enc['image_size']} px; manifest {df.attrs['manifest']}."
    page = gallery_html(table, thumbnails(table, cfg.thumb_size), size=cfg.thumb_size, subtitle=sub)
    paths = {"csv": out / "next_to_label.csv", "html": out / "gallery.html"}
    io.write_csv_new(table, paths["csv"])
    io.publish_new(paths["html"], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return {"table": table, "paths": paths, "out": out, "encoder": enc}


def _save_npz(path: Path, sim) -> None:
    """The simulation's arrays (test probabilities, validity, picks) for re-analysis."""
    import numpy as np

    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in vars(sim).items() if k != "seconds"})


def run_simulation(cfg: SelectConfig) -> dict[str, Any]:
    """The simulation on a labelled manifest; writes its tables, figure and sentence into a new folder."""
    from glomlib.core import io
    from glomlib.data.splits import assign_folds
    from glomlib.select import report, stats
    from glomlib.select.simulate import simulate

    df, X, enc = _embedding(cfg, require_labels=True)
    folds = assign_folds(df, n_folds=cfg.folds, seed=cfg.seed)
    sim = simulate(
        X,
        df["y"].to_numpy(),
        df["slide"].astype(str).to_numpy(),
        folds,
        cfg.strategies,
        cfg.budgets,
        cfg.seeds,
        cap=cfg.max_per_slide,
        dims=cfg.dims,
        memory_limit_gb=cfg.memory_limit_gb,
    )
    boot = stats.bootstrap(sim, n_boot=cfg.n_boot, seed=cfg.seed)
    bt, st = stats.budget_table(sim, boot), stats.strategy_table(sim, boot)
    what = (
        f"{Path(cfg.data).parent.name or cfg.data}, {enc['label']} at {enc['image_size']} px, {cfg.folds} "
        f"slide-grouped folds x {cfg.seeds} seeds"
    )
    text = report.sentence(bt, st, what)
    out = _out_dir(cfg)
    cfg.save(out / "config.json")
    io.write_provenance(out, cfg, extra={"encoder": enc, "manifest": df.attrs["manifest"], "seconds": sim.seconds})
    io.write_with(out / "simulation.npz", lambda tmp: _save_npz(tmp, sim))
    io.write_csv_new(bt, out / "budgets.csv")
    io.write_csv_new(st, out / "strategies.csv")
    io.write_text_atomic(out / "result.md", f"{text}\n\n{report.markdown(bt, st)}")
    fig = report.figure(bt, what)
    fig.savefig(out / "simulation.png", dpi=110)
    io.write_json_atomic(
        out / "result.json",
        {
            "sentence": text,
            "what": what,
            "default_strategy": report.default_strategy(st),
            "encoder": enc,
            "seconds": sim.seconds,
        },
    )
    return {"budgets": bt, "strategies": st, "sentence": text, "figure": fig, "out": out, "sim": sim}


def simulation_result(cfg: SelectConfig) -> dict[str, Any]:
    """Notebook 08: the simulation in ``cfg.simulation`` (a ``--simulate`` output folder), else a new one."""
    import pandas as pd

    from glomlib.select import report

    if not cfg.simulation:
        return run_simulation(cfg)
    folder = Path(cfg.simulation)
    bt, st = pd.read_csv(folder / "budgets.csv"), pd.read_csv(folder / "strategies.csv")
    saved = json.loads((folder / "result.json").read_text())
    return {
        "budgets": bt,
        "strategies": st,
        "sentence": saved["sentence"],
        "out": folder,
        "figure": report.figure(bt, str(saved.get("what", ""))),
    }


def cli_run(cfg: SelectConfig) -> int:
    if cfg.simulate:
        r = run_simulation(cfg)
        print(r["sentence"])
        print(f"wrote {r['out']}/ (budgets.csv, strategies.csv, result.md, simulation.png)")
        return 0
    r = run_select(cfg)
    t = r["table"]
    print(
        f"{len(t)} glomeruli from {t['slide'].nunique()} slides picked by {cfg.strategy}; "
        f"wrote {r['paths']['csv']} and {r['paths']['html']}"
    )
    print(json.dumps({"clusters": int(t["cluster"].nunique()), "encoder": r["encoder"]["label"]}))
    return 0
