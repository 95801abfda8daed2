"""Leave-one-centre-out linear probe with and without stain options: a cheap companion of the fine-tune table.

For each encoder (imagenet, scratch = random weights, glom = an SSL encoder file when given) and each stain option
(none; Reinhard normalisation of every image; HED augmentation = the training centres' features computed on the
original and on ``--hed-copies`` HED-jittered copies), a logistic regression on frozen features is trained on two
centres and tested on the third. Prints per held-out centre: AUC, balanced accuracy at 0.5, and the biopsy-level
error of the share of positives (MAE over the centre's slides) from the mean probability and from hard calls.

    python benchmarks/loco_stain_probe.py --data data/glomeruli-pas/manifest.csv --positive-label GS \
        --image-size 64 [--glom runs/<ssl run>/encoder.safetensors] [--out /tmp/loco_probe.csv]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pandas as pd
import torch

from glomlib.core import runtime
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.data.cache import load_images
from glomlib.data.manifest import read_manifest
from glomlib.data.stain import normalize_stain
from glomlib.evaluate.external import centre_table
from glomlib.models.backbones import build_backbone
from glomlib.models.files import load_encoder_into
from glomlib.models.inference import extract_features
from glomlib.train.augment import hed_jitter


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hed_copies(images: np.ndarray, n: int, sigma: float, seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div(255)
    return [
        (hed_jitter(x, sigma, g).mul(255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()) for _ in range(n)
    ]


def probe(feats_train, y_train, feats_test) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000))
    clf.fit(feats_train, y_train)
    return clf.predict_proba(feats_test)[:, 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_MANIFEST))
    ap.add_argument("--positive-label", default="GS")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--glom", default="", help="SSL encoder.safetensors (efficientnet_lite0) for the glom row")
    ap.add_argument("--hed-copies", type=int, default=2)
    ap.add_argument("--hed-sigma", type=float, default=0.05)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    t0 = time.time()
    df = read_manifest(args.data, positive_label=args.positive_label)
    raw = np.asarray(load_images(list(df["path"]), args.image_size, hashes=list(df["sha256"])))
    plan = runtime.plan("cpu", "fp32")
    encoders = {
        "imagenet": build_backbone("efficientnet_lite0", init="imagenet")[0],
        "scratch": build_backbone("efficientnet_lite0", init="scratch")[0],
    }
    if args.glom:
        bb = build_backbone("efficientnet_lite0", init="scratch")[0]
        load_encoder_into(bb, args.glom, expect_backbone="efficientnet_lite0")
        encoders["glom"] = bb
    y = df["y"].to_numpy()
    centre = df["center"].astype(str).to_numpy()
    runs = {}
    for name, bb in encoders.items():
        torch.manual_seed(0)
        feats = {
            "none": extract_features(bb, raw, plan=plan),
            "reinhard": extract_features(bb, normalize_stain(raw, "reinhard"), plan=plan),
        }
        hed = [extract_features(bb, c, plan=plan) for c in hed_copies(raw, args.hed_copies, args.hed_sigma, 0)]
        for option in ("none", "reinhard", "hed"):
            prob = np.zeros(len(df))
            for c in sorted(set(centre)):
                te, tr = centre == c, centre != c
                if option == "hed":
                    ftr = np.concatenate([feats["none"][tr]] + [h[tr] for h in hed])
                    ytr = np.concatenate([y[tr]] * (1 + len(hed)))
                    prob[te] = probe(ftr, ytr, feats["none"][te])
                else:
                    prob[te] = probe(feats[option][tr], y[tr], feats[option][te])
            runs[f"{name} / {option}"] = pd.DataFrame(
                {"path": df["path"], "slide": df["slide"], "center": centre, "y": y, "prob": prob}
            )
    table = centre_table(runs)
    wide = table.pivot(index="run", columns="centre", values=["auc", "biopsy_mae_prob", "biopsy_mae_hard"])
    print(f"CPU: {cpu_model()}; {len(df)} images, {args.image_size} px; {time.time() - t0:.0f} s")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(wide.round(3).to_string())
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
