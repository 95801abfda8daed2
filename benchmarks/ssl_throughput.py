"""SimCLR pretraining throughput: glomlib's step vs a plain lightly-tutorial loop, side by side.

Both train the same model (backbone + lightly SimCLRProjectionHead, NTXentLoss) at the same image size and
batch size on the same real glomerulus patches, alternating in rounds so that load from other processes
affects both alike. Images/s counts source images (each gives two views).

* tutorial: PIL images -> lightly ``SimCLRTransform`` (per image) -> DataLoader -> two forward passes,
  float32, contiguous memory, SGD lr 0.06 (the lightly SimCLR tutorial).
* glomlib: uint8 cache array -> ``glomlib.train.simclr.PairSource`` (CLAHE) -> batched tensor augmentations
  (``glomlib.train.augment``) -> ``glomlib.train.simclr.train_step`` (one forward pass for both views, bf16 autocast,
  channels_last), AdamW + schedule; in fp32 contiguous, fp32 channels_last, bf16 channels_last, and ``auto`` (the
  runtime plan ``glomlib ssl`` would use on this machine: the capability rule, or the timed calibration with
  ``--calibrate``). The script also prints what ``auto`` would pick under a forced "no native bf16" rule.

``--emulate-no-bf16`` re-runs the whole benchmark (tutorial included) with oneDNN capped at AVX512_CORE
(``ONEDNN_MAX_CPU_ISA``): oneDNN then has no bf16 kernels, bf16 autocast is emulated and slow — as on an Intel
Xeon with AVX-512 but without AVX-512-BF16/AMX — and ``auto`` sees the cap (``glomlib.core.runtime``) and picks
what such a CPU gets. It is an emulation of the kernels, on this CPU's cores and memory.

Run (under the shared CPU lock):
    flock /tmp/glomlib-cpu.lock .venv/bin/python benchmarks/ssl_throughput.py --image-size 96 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
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

    from glomlib.models.backbones import build_backbone
    from glomlib.train.simclr import SimCLR

    torch.manual_seed(0)
    bb, dim = build_backbone(backbone_name)
    model = SimCLR(bb, dim, 512, 128)
    crit = NTXentLoss(temperature=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.06)
    ds = TutorialDataset(paths, SimCLRTransform(input_size=image_size))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )
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
    """glomlib's SimCLR step. ``precision='auto'``: the runtime plan decides precision and memory format
    (exactly what ``glomlib ssl`` would run); otherwise the given precision and memory format."""

    from glomlib.core import runtime
    from glomlib.data.cache import load_images
    from glomlib.train import simclr as ssl

    images = load_images(paths, image_size)  # uint8 memmap, decoded once (cached on disk)
    cfg = ssl.SSLConfig.from_params(
        backbone=backbone_name,
        ssl_init="scratch",
        image_size=image_size,
        batch_size=batch_size,
        precision=precision,
        channels_last=channels_last,
        num_workers=workers,
        epochs=1000,
        warmup_epochs=1,
        device="cpu",
    )
    if precision == "auto":
        plan = ssl.ssl_plan(cfg)
    else:
        plan = runtime.Plan(torch.device("cpu"), precision, channels_last, "benchmark: fixed mode")
    torch.manual_seed(0)
    model, opt, crit = ssl.build_training(cfg, "cpu", plan.channels_last)
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
        loss, _ = ssl.train_step(model, crit, opt, None, s0, s1, params, g, plan)
        return float(loss)

    step.plan = plan
    return step


def timed(step, n_steps):
    t = time.perf_counter()
    for _ in range(n_steps):
        step()
    return time.perf_counter() - t


def forced_rule_plan(native_bf16: bool):
    """What ``auto`` decides when the capability rule is forced (``GLOMLIB_CPU_BF16``) — to show what a CPU
    with / without native bf16 gets on this one."""
    from glomlib.core import runtime

    old = os.environ.get("GLOMLIB_CPU_BF16")
    os.environ["GLOMLIB_CPU_BF16"] = "1" if native_bf16 else "0"
    try:
        return runtime.plan("cpu", "auto")
    finally:
        if old is None:
            os.environ.pop("GLOMLIB_CPU_BF16")
        else:
            os.environ["GLOMLIB_CPU_BF16"] = old


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
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default: all cores)")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="let `auto` run the runtime's timed calibration (GLOMLIB_PRECISION_CALIBRATE=1)",
    )
    p.add_argument(
        "--emulate-no-bf16",
        action="store_true",
        help="run everything with oneDNN capped at AVX512_CORE (no bf16 kernels), like a CPU without native bf16",
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.emulate_no_bf16 and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() != "AVX512_CORE":
        # oneDNN reads the cap once, when it first runs: start afresh with it set
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
        args = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *args], env)
    if a.calibrate:
        os.environ["GLOMLIB_PRECISION_CALIBRATE"] = "1"
    if a.threads:
        torch.set_num_threads(a.threads)

    from glomlib.core import runtime

    caps = runtime.cpu_capabilities()
    print(
        f"CPU: {runtime.cpu_model()} ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads); "
        f"torch {torch.__version__}"
    )
    print("capabilities: " + ", ".join(f"{k}={v}" for k, v in caps.items()))
    cap = runtime.onednn_isa_cap()
    print(
        f"oneDNN ISA: {'capped at ' + cap + ' (ONEDNN_MAX_CPU_ISA)' if cap else 'native (no cap)'}"
        + (" -> EMULATING a CPU without native bf16" if caps.get("isa_capped") else "")
    )
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other processes share the CPU)")
    paths = real_paths(Path(a.data_dir), a.n_images)
    g = lambda prec, cl: glomlib_runner(paths, a.backbone, a.image_size, a.batch_size, prec, cl, a.workers)  # noqa: E731
    runners = {
        "tutorial (PIL + SimCLRTransform, fp32)": tutorial_runner(
            paths, a.backbone, a.image_size, a.batch_size, a.workers
        ),
        "glomlib fp32, contiguous": g("fp32", False),
        "glomlib fp32, channels_last": g("fp32", True),
        "glomlib bf16, channels_last": g("bf16", True),
        "glomlib auto": g("auto", True),
    }
    auto_plan = runners["glomlib auto"].plan
    print(
        f"auto picked: {auto_plan.precision} + {'channels_last' if auto_plan.channels_last else 'contiguous'}"
        f" — {auto_plan.reason}"
    )
    if auto_plan.calibration:
        print(f"  calibration: {json.dumps(auto_plan.calibration)}")
    no_bf16 = forced_rule_plan(False)
    forced_row = f"glomlib {no_bf16.precision}, {'channels_last' if no_bf16.channels_last else 'contiguous'}"
    for step in runners.values():  # warm-up (allocators, oneDNN kernels)
        step()
    times = {k: [] for k in runners}
    for _r in range(a.rounds):  # interleaved, so that load from other processes hits every mode alike
        for name, step in runners.items():
            times[name].append(timed(step, a.steps))
    imgs = a.steps * a.batch_size
    res = {name: imgs / float(np.median(ts)) for name, ts in times.items()}
    best = {name: imgs / float(np.min(ts)) for name, ts in times.items()}  # the least-disturbed round
    tut = res["tutorial (PIL + SimCLRTransform, fp32)"]
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"\nSimCLR step throughput, {a.backbone} {a.image_size}px batch {a.batch_size}, {a.n_images} real patches, "
        f"{a.rounds} rounds x {a.steps} steps (median), {torch.get_num_threads()} torch threads, CPU {runtime.cpu_model()}:"
    )
    tut_best = best["tutorial (PIL + SimCLRTransform, fp32)"]
    print(f"  {'mode':42s} {'images/s':>9s} {'vs tutorial':>12s} {'best round':>11s} {'vs tutorial':>12s}")
    for name, v in res.items():
        print(f"  {name:42s} {v:9.1f} {v / tut:11.2f}x {best[name]:11.1f} {best[name] / tut_best:11.2f}x")
    ratio = res["glomlib auto"] / tut
    print(
        f"  => auto ({auto_plan.precision}{'+channels_last' if auto_plan.channels_last else ''}) = {ratio:.2f}x "
        f"the tutorial on this CPU"
    )
    forced_ratio = res.get(forced_row, float("nan")) / tut
    print(
        f"  => FORCED rule 'no native bf16' (GLOMLIB_CPU_BF16=0, emulated on this CPU): auto would pick "
        f"{no_bf16.precision}{'+channels_last' if no_bf16.channels_last else ''} = row '{forced_row}' = "
        f"{forced_ratio:.2f}x the tutorial (a CPU without native bf16 runs every mode at its own speed; this "
        f"shows the choice, not that CPU's figures)"
    )
    if a.out:
        Path(a.out).write_text(
            json.dumps(
                {
                    "settings": vars(a),
                    "cpu": runtime.cpu_model(),
                    "capabilities": caps,
                    "onednn_isa_cap": cap,
                    "images_per_s": res,
                    "images_per_s_best_round": best,
                    "auto_plan": auto_plan.to_dict(),
                    "ratio_auto_vs_tutorial": ratio,
                    "forced_no_bf16_mode": forced_row,
                    "ratio_forced_no_bf16_vs_tutorial": forced_ratio,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
