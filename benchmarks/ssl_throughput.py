"""SimCLR pretraining throughput: glomlib's step vs a plain lightly-tutorial loop, side by side.

Both train the same model (backbone + lightly SimCLRProjectionHead, NTXentLoss) at the same image size and
batch size on the same real glomerulus patches, alternating in rounds so that load from other processes
affects both alike. Images/s counts source images (each gives two views).

* tutorial: PIL images -> lightly ``SimCLRTransform`` (per image) -> DataLoader -> two forward passes,
  float32, contiguous memory, SGD lr 0.06 (the lightly SimCLR tutorial).
* glomlib: uint8 cache array -> ``glomlib.train.simclr.PairSource`` (CLAHE) -> batched tensor augmentations
  (``glomlib.train.augment``) -> ``glomlib.train.simclr.train_step`` (one forward pass for both views, bf16 autocast,
  channels_last), AdamW + schedule. Also measured in fp32 / contiguous to show what precision contributes.

Run (under the shared CPU lock):
    flock /tmp/glomlib-cpu.lock .venv/bin/python benchmarks/ssl_throughput.py --image-size 96 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def real_paths(data_dir: Path, n: int) -> list[str]:
    paths = sorted(str(p) for p in (data_dir / "Patches/Raw/Images").glob("*/*.png"))
    if not paths:
        raise SystemExit(f"No PNGs under {data_dir}/Patches/Raw/Images; pass --data-dir.")
    rng = np.random.default_rng(0)
    return [paths[i] for i in rng.choice(len(paths), min(n, len(paths)), replace=False)]


class TutorialDataset(torch.utils.data.Dataset):
    """What the lightly tutorial does: open each PNG with PIL and apply SimCLRTransform (two views)."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def tutorial_runner(paths, backbone_name, image_size, batch_size, workers):
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    from glomlib.train.simclr import SimCLR
    from glomlib.models.backbones import build_backbone

    torch.manual_seed(0)
    bb, dim = build_backbone(backbone_name)
    model = SimCLR(bb, dim, 512, 128)
    crit = NTXentLoss(temperature=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.06)
    ds = TutorialDataset(paths, SimCLRTransform(input_size=image_size))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            (x0, x1) = next(it)
        except StopIteration:
            it = iter(loader)
            (x0, x1) = next(it)
        z0, z1 = model(x0), model(x1)
        loss = crit(z0, z1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def glomlib_runner(paths, backbone_name, image_size, batch_size, precision, channels_last, workers):
    from lightly.loss import NTXentLoss

    from glomlib.train import simclr as ssl
    from glomlib.data.cache import load_images

    images = load_images(paths, image_size)  # uint8 memmap, decoded once (cached on disk)
    cfg = ssl.SSLConfig.from_params(backbone=backbone_name, image_size=image_size, batch_size=batch_size,
                                    precision=precision, channels_last=channels_last, num_workers=workers,
                                    epochs=1000, warmup_epochs=1)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = ssl.build_model(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = ssl.build_optimizer(cfg, model)
    crit = NTXentLoss(temperature=cfg.temperature)
    params = cfg.augment_params()
    source = ssl.PairSource(images, params, cfg.seed)
    state = {"epoch": 0, "it": None}

    def new_epoch():
        batches = ssl.epoch_batches(len(images), batch_size, state["epoch"], cfg.seed)
        state["it"] = iter(ssl.make_loader(source, batches, state["epoch"], workers, pin=False))
        state["epoch"] += 1

    new_epoch()

    def step():
        try:
            s0, s1 = next(state["it"])
        except StopIteration:
            new_epoch()
            s0, s1 = next(state["it"])
        g = torch.Generator().manual_seed(state["epoch"])
        loss, _ = ssl.train_step(model, crit, opt, None, s0, s1, params, g, device, channels_last,
                                 precision == "bf16")
        return float(loss)

    return step


def timed(step, n_steps):
    t = time.perf_counter()
    for _ in range(n_steps):
        step()
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/glomeruli-pas"))
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and runner")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for both loops")
    p.add_argument("--no-fp32", action="store_true", help="skip the glomlib fp32 variant")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)

    paths = real_paths(Path(a.data_dir), a.n_images)
    runners = {
        "tutorial (PIL + SimCLRTransform, fp32)": tutorial_runner(paths, a.backbone, a.image_size, a.batch_size,
                                                                  a.workers),
        "glomlib (batched aug, bf16, channels_last)": glomlib_runner(paths, a.backbone, a.image_size,
                                                                     a.batch_size, "bf16", True, a.workers),
    }
    if not a.no_fp32:
        runners["glomlib (batched aug, fp32, contiguous)"] = glomlib_runner(paths, a.backbone, a.image_size,
                                                                           a.batch_size, "fp32", False, a.workers)
    for step in runners.values():  # warm-up (allocators, oneDNN kernels)
        step()
    times = {k: [] for k in runners}
    for r in range(a.rounds):
        for name, step in runners.items():
            times[name].append(timed(step, a.steps))
    imgs = a.steps * a.batch_size
    res = {name: imgs / float(np.median(ts)) for name, ts in times.items()}
    print(f"SimCLR step throughput, {a.backbone} {a.image_size}px batch {a.batch_size}, "
          f"{torch.get_num_threads()} threads, {a.rounds} rounds x {a.steps} steps (median):")
    for name, v in res.items():
        print(f"  {name:45s} {v:7.1f} images/s")
    names = list(res)
    ratio = res[names[1]] / res[names[0]]
    print(f"  ratio glomlib / tutorial: {ratio:.2f}x")
    if len(names) > 2:
        print(f"  bf16+channels_last vs fp32 within glomlib: {res[names[1]] / res[names[2]]:.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps({"settings": vars(a), "images_per_s": res, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
