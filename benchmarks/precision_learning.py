"""Does bf16 learn as well as fp32? A paired SimCLR check: the same seed, data, batches and augmentations in fp32
and in bf16 autocast (both channels_last), then the same slide-grouped linear probe of each encoder.

    nice -n 5 .venv/bin/python benchmarks/precision_learning.py [--epochs 4 --image-size 64]

Prints the NT-Xent loss per epoch side by side and the probe AUC of each encoder (and of random weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from glomlib.core.paths import DEFAULT_MANIFEST

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_MANIFEST))
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)

    from glomlib.core import runtime
    from glomlib.core.paths import chdir_project_root
    from glomlib.train import simclr as ssl

    chdir_project_root()
    print(f"CPU: {runtime.cpu_model()}; capabilities {runtime.cpu_capabilities()}")
    res = {}
    data = None
    for prec in ("fp32", "bf16"):
        cfg = ssl.SSLConfig.from_params(
            data=a.data,
            backbone=a.backbone,
            ssl_init="scratch",
            image_size=a.image_size,
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=1e-3,
            warmup_epochs=1,
            freeze_bn=False,
            knn_every=0,
            precision=prec,
            channels_last=True,
            device="cpu",
            progress=False,
        )
        data = data or ssl.load_data(cfg)
        with tempfile.TemporaryDirectory(prefix=f"glomlib-prec-{prec}-") as d:
            t = time.time()
            r = ssl.pretrain(cfg, data["images"], d, y=data["y"], folds=data["folds"], progress=False)
            probe = ssl.final_probe(cfg, data, r.encoder_path)
            res[prec] = {
                "loss": [h["loss"] for h in r.history],
                "seconds": time.time() - t,
                "images_per_s": [h["images_per_s"] for h in r.history],
                "probe_glom_auc": probe["glom"]["auc_mean"],
                "probe_glom_auc_std": probe["glom"]["auc_std"],
                "probe_random_auc": probe["random"]["auc_mean"],
                "knn_auc": probe["glom"]["knn_auc"],
            }
        print(prec, json.dumps(res[prec]), flush=True)
    print(
        f"\nPaired SimCLR, {a.backbone} from scratch, {a.image_size} px, batch {a.batch_size}, {a.epochs} epochs on "
        f"{len(data['images'])} real patches; CPU {runtime.cpu_model()}"
    )
    print("| epoch | NT-Xent fp32 | NT-Xent bf16 | difference |\n|---|---|---|---|")
    for e, (l32, l16) in enumerate(zip(res["fp32"]["loss"], res["bf16"]["loss"]), 1):
        print(f"| {e} | {l32:.4f} | {l16:.4f} | {l16 - l32:+.4f} |")
    for prec in ("fp32", "bf16"):
        r = res[prec]
        print(
            f"{prec}: linear-probe AUC {r['probe_glom_auc']:.3f} ± {r['probe_glom_auc_std']:.3f} (random weights "
            f"{r['probe_random_auc']:.3f}), kNN AUC {r['knn_auc']:.3f}, {r['seconds']:.0f} s"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
