"""Model variance under leave-one-centre-out: repeated trainings (seeds) of a single model vs the run's bundle.

For each held-out centre C and seed s: ``glomlib finetune`` (quick-cpu settings) on the OTHER centres, slide-grouped
CV, which writes 3 final models (seeds apart) and a bundle.safetensors of every model it trained. On C, never seen:
AUC of the single (first final) model and of three bundle compositions (the fold models + the first final model;
the final models; all of them), each combined by the mean of probabilities and of logits, with and without test-time
augmentation, and the per-biopsy %GS error (mean absolute error over C's test slides, percentage points) before
and after calibrating (Platt + Youden threshold, glomlib calibrate's fit) on ``--n-local`` glomeruli drawn from
C's other slides. Prints per centre the AUC spread across seeds (single vs bundle, their ratio with a bootstrap CI
over the seeds) and the errors.

    nice python benchmarks/model_variance.py --out runs/variance [--centres SAS,SESCAM,VUHSK] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from glomlib.data.cache import load_images
from glomlib.evaluate import calibrate as CAL
from glomlib.evaluate import metrics as M
from glomlib.evaluate.predict import member_probs
from glomlib.models.bundle import BUNDLE_FILE, combine_probs
from glomlib.models.calibration import apply_calibration
from glomlib.models.files import load_model
from glomlib.train.finetune import run_finetune

QUICK = dict(backbone="efficientnet_lite0", image_size=64, init="imagenet", epochs=5, patience=2, batch_size=32)
QUICK.update(lr=1e-3, min_steps=0, folds=3, label_fractions=[1.0], positive_label="GS", progress=False)
# every member in the file, so each composition below is read from one training: single (the first final model),
# folds+final (the fold models and the first final), finals (the final models), folds+finals (all)
QUICK.update(final_seeds=3, bundle_members="folds+finals")


def _train(df: pd.DataFrame, centre: str, seed: int, out: Path) -> Path:
    stain = f"-{QUICK['stain_normalize'] or 'nostain'}" if "stain_normalize" in QUICK else ""
    finals = f"-{QUICK['final_seeds']}finals" if QUICK["final_seeds"] > 1 else ""
    run = out / f"without-{centre}-{QUICK['image_size']}px-{QUICK['epochs']}ep{stain}{finals}-seed{seed}"
    if (run / BUNDLE_FILE).exists():
        return run
    man = out / f"without-{centre}.csv"
    if not man.exists():
        df[df["center"] != centre].to_csv(man, index=False)
    run_finetune(data=str(man), out=str(run), seeds=[seed], resume=run.exists(), **QUICK)
    return run


def _gs_error(g: pd.DataFrame, prob: np.ndarray, thr: float) -> tuple[float, float]:
    """Per-biopsy %GS error (MAE over slides, percentage points) from hard calls and from the mean probability."""
    d = g.assign(p=prob, h=(prob >= thr).astype(float)).groupby("slide")[["y", "p", "h"]].mean()
    return 100 * float((d["h"] - d["y"]).abs().mean()), 100 * float((d["p"] - d["y"]).abs().mean())


def _calibrated(g: pd.DataFrame, prob: np.ndarray, thr: float, args) -> dict[str, float]:
    """%GS error on the test slides before, and after Platt + each threshold rule on n_local glomeruli of the pool
    slides (columns ``gs_hard_after`` for the first rule, ``gs_hard_after_<rule>`` for the others)."""
    pool = g["slide"].isin(CAL.local_split(g["slide"], 0.5, 0)).to_numpy()
    test = ~pool
    before = _gs_error(g[test], prob[test], thr)
    out = {"gs_hard_before": before[0], "gs_prob_before": before[1]}
    idx_pool = np.flatnonzero(pool)
    for i, rule in enumerate(args.threshold_rules.split(",")):
        after, rng = [], np.random.default_rng(0)
        for _ in range(args.draws):
            pick = rng.choice(idx_pool, size=min(args.n_local, len(idx_pool)), replace=False)
            if g["y"].iloc[pick].nunique() < 2:
                continue
            cal, t = CAL.refit(g["y"].iloc[pick], prob[pick], "platt", rule)
            after.append(_gs_error(g[test], apply_calibration(prob[test], cal), t))
        a = np.mean(after, axis=0) if after else (np.nan, np.nan)
        out["gs_hard_after" + (f"_{rule}" if i else "")] = a[0]
        if not i:
            out["gs_prob_after"] = a[1]
    return out


def _measure(run: Path, g: pd.DataFrame, images: np.ndarray, args) -> list[dict]:
    bundle, meta = load_model(run / BUNDLE_FILE)
    thr, y, rows = float(meta["threshold"]), g["y"].to_numpy(), []
    for tta in (False, True):
        P = member_probs(bundle, meta, images, tta=tta)  # resized and stain-normalised once for all members
        names = [str(m["name"]) for m in meta["members"]]
        final = [i for i, n in enumerate(names) if n.startswith("final")]
        fold = [i for i, n in enumerate(names) if not n.startswith("final")]
        comps = {"folds+final": [*fold, len(names) - 1], "finals": final, "folds+finals": list(range(len(names)))}
        kinds = {"single (final model)": P[:, -1]}
        for comp, cols in comps.items():
            for how in ("mean_logit", "mean_prob"):
                kinds[f"bundle {comp} {how}"] = combine_probs(P[:, cols], how)
        for k in range(P.shape[1] - 1):
            kinds[f"member {names[k]}"] = P[:, k]
        for kind, prob in kinds.items():
            row = {"kind": kind, "tta": tta, "auc": M.binary_metrics(y, prob)["auc"]}
            if not kind.startswith("member"):
                row.update(_calibrated(g, prob, thr, args))
            rows.append(row)
    return rows


def _summary(res: pd.DataFrame) -> pd.DataFrame:
    main = res[~res["kind"].str.startswith("member")]
    agg = main.groupby(["centre", "tta", "kind"]).agg(
        auc_mean=("auc", "mean"), auc_sd=("auc", "std"), auc_range=("auc", lambda a: a.max() - a.min()),
        gs_hard_before=("gs_hard_before", "mean"), gs_hard_after=("gs_hard_after", "mean"),
        gs_prob_before=("gs_prob_before", "mean"), gs_prob_after=("gs_prob_after", "mean"),
        **{c: (c, "mean") for c in main.columns if c.startswith("gs_hard_after_")},
    )  # fmt: skip
    return agg.round(4)


def _ratio_ci(res: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """sd(single) / sd(bundle) across seeds with a 95 % bootstrap CI over the seeds (resampled in pairs: the same
    seeds for both), per centre, TTA setting and bundle composition."""
    rows, rng = [], np.random.default_rng(0)
    main = res[res["kind"].str.startswith(("single", "bundle"))]
    for (centre, tta), g in main.groupby(["centre", "tta"]):
        auc = g.pivot_table(index="seed", columns="kind", values="auc")
        boot = rng.integers(0, len(auc), size=(n_boot, len(auc)))
        single = auc.pop("single (final model)").to_numpy()
        for kind in auc.columns:
            b = auc[kind].to_numpy()
            r = np.array([np.std(single[i], ddof=1) / max(np.std(b[i], ddof=1), 1e-12) for i in boot])
            est = np.std(single, ddof=1) / np.std(b, ddof=1)
            lo, hi = np.percentile(r, [2.5, 97.5])
            rows.append({"centre": centre, "tta": tta, "bundle": kind, "n_seeds": len(b), "sd_ratio": est,
                         "ci_low": lo, "ci_high": hi})  # fmt: skip
    return pd.DataFrame(rows).round(2)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/glomeruli-pas/manifest.csv")
    ap.add_argument("--out", default="runs/variance")
    ap.add_argument("--centres", default="SAS,SESCAM,VUHSK")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-local", type=int, default=20, help="local glomeruli to calibrate on")
    ap.add_argument("--draws", type=int, default=10, help="random draws of the local glomeruli")
    ap.add_argument("--threshold-rules", default="youden,fixed:0.5", help="threshold rules refitted with Platt")
    ap.add_argument("--epochs", type=int, default=QUICK["epochs"])
    ap.add_argument("--folds", type=int, default=QUICK["folds"], help="folds per run (fold models)")
    ap.add_argument("--image-size", type=int, default=QUICK["image_size"])
    ap.add_argument("--final-seeds", type=int, default=QUICK["final_seeds"], help="final models per run")
    ap.add_argument("--stain-normalize", default=None, help="stain option of the fine-tunes (default: finetune's own)")
    args = ap.parse_args(argv)
    QUICK.update(epochs=args.epochs, folds=args.folds, image_size=args.image_size, final_seeds=args.final_seeds)
    if args.stain_normalize is not None:
        QUICK["stain_normalize"] = args.stain_normalize
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(args.data).resolve().parent
    df = pd.read_csv(args.data, keep_default_na=False)
    df["path"] = [str((base / p).resolve()) for p in df["path"]]
    df["y"] = (df["label"] == "GS").astype(int)
    rows = []
    for centre in args.centres.split(","):
        g = df[df["center"] == centre].reset_index(drop=True)
        images = np.asarray(load_images(list(g["path"]), QUICK["image_size"]))
        for seed in (int(s) for s in args.seeds.split(",")):
            run = _train(df.drop(columns="y"), centre, seed, out)
            rows += [{"centre": centre, "seed": seed, **r} for r in _measure(run, g, images, args)]
            pd.DataFrame(rows).to_csv(out / "model_variance.csv", index=False)
    res = pd.DataFrame(rows)
    summ = _summary(res)
    with pd.option_context("display.width", 220, "display.max_columns", 20, "display.max_rows", 200):
        print(summ.to_string())
        piv = summ["auc_sd"].unstack("kind")
        print(piv.round(4).to_string())
        print("AUC sd ratio, single / bundle, with a 95 % bootstrap CI over the seeds:")
        print(_ratio_ci(res).to_string())
    (out / "model_variance.json").write_text(json.dumps(summ.reset_index().to_dict("records"), indent=1))


if __name__ == "__main__":
    main()
