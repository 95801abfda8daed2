"""One-command GPU check: SimCLR ResNet-50 at 512 px (runtime plan, real loader with CLAHE) with the share of step
time spent waiting for data, a 1-GPU torchrun DDP epoch on a slice, a short fine-tune and a prediction, as a table.

    bash benchmarks/gpu_check.sh                       # on a GPU machine: < 8 min on one GPU
    python benchmarks/gpu_check.py --tiny              # the same code paths on CPU at tiny size, in seconds

It reads a manifest (default: data/glomeruli-pas/manifest.csv, built from ../shared/data when absent), writes
everything into a temporary folder (``--out`` to keep it) and prints one table; ``--json`` also writes the rows.
Nothing here is a result about the data: it checks that the GPU path runs and how fast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from glomlib.core.paths import DEFAULT_MANIFEST  # noqa: E402

FULL = {
    "backbone": "resnet50",
    "image_size": 512,
    "batch_size": 64,
    "warmup": 3,
    "steps": 20,
    "clahe_p": 0.5,
    "ddp_slice": 512,
    "ft_epochs": 1,
    "ft_folds": 2,
    "ft_batch": 32,
}
TINY = {
    "backbone": "resnet18",
    "image_size": 32,
    "batch_size": 4,
    "warmup": 1,
    "steps": 3,
    "clahe_p": 0.5,
    "ddp_slice": 16,
    "ft_epochs": 1,
    "ft_folds": 2,
    "ft_batch": 4,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_row(device: torch.device) -> dict:
    from glomlib.core import runtime

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
            f"bf16 {torch.cuda.is_bf16_supported()}, CUDA {torch.version.cuda}"
        )
    else:
        what = f"CPU {runtime.cpu_model()}, {torch.get_num_threads()} threads"
    return {
        "check": "device",
        "result": f"{what}; torch {torch.__version__}; host CPU {runtime.cpu_model()} ({os.cpu_count()} cores)",
        "seconds": 0.0,
    }


def simclr_throughput(images, s: dict, device: str, workers: int) -> dict:
    """:func:`_simclr_throughput` at the configured batch, halving it while the GPU runs out of memory (the
    row then says so: that is worth knowing before a 200-epoch run)."""
    batch, notes = s["batch_size"], []
    while True:
        try:
            row = _simclr_throughput(images, {**s, "batch_size": batch}, device, workers)
            if notes:
                row["result"] += "; " + "; ".join(notes)
            return row
        except torch.cuda.OutOfMemoryError:
            if batch <= 8:
                raise
            notes.append(f"batch {batch} ran out of GPU memory")
            batch //= 2
            torch.cuda.empty_cache()


def _simclr_throughput(images, s: dict, device: str, workers: int) -> dict:
    """SimCLR steps on the real loader (PairSource: two uint8 views, CLAHE p=clahe_p, DataLoader workers) under the
    runtime plan; images/s and the share of step time spent waiting for the next batch."""

    from glomlib.train import simclr as ssl

    cfg = ssl.SSLConfig.from_params(
        backbone=s["backbone"],
        ssl_init="scratch",
        image_size=s["image_size"],
        batch_size=s["batch_size"],
        clahe_p=s["clahe_p"],
        device=device,
        num_workers=workers,
        epochs=1000,
        warmup_epochs=0,
    )
    plan = ssl.ssl_plan(cfg)
    dev = plan.device
    torch.manual_seed(0)
    model, opt, crit = ssl.build_training(cfg, dev, plan.channels_last)
    params = cfg.augment_params()
    source = ssl.PairSource(images, params, cfg.seed)
    n_steps = s["warmup"] + s["steps"]
    batches: list = []
    epoch = 0
    while len(batches) < n_steps:  # enough epochs of batches for the warm-up and timed steps
        batches += [(epoch, b) for b in ssl.epoch_batches(len(images), cfg.batch_size, epoch, cfg.seed)]
        epoch += 1
    loader = torch.utils.data.DataLoader(
        source,
        sampler=[(e, i, b) for i, (e, b) in enumerate(batches[:n_steps])],
        batch_size=None,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        worker_init_fn=ssl._worker_init if workers else None,
        prefetch_factor=4 if workers else None,
    )
    wait = compute = 0.0
    it = iter(loader)
    g = torch.Generator().manual_seed(0)
    for i in range(n_steps):
        t0 = time.perf_counter()
        s0, s1 = next(it)
        t1 = time.perf_counter()
        loss, _ = ssl.train_step(model, crit, opt, None, s0, s1, params, g, plan)
        _sync(dev)
        t2 = time.perf_counter()
        if i >= s["warmup"]:
            wait += t1 - t0
            compute += t2 - t1
    if not torch.isfinite(loss):
        raise FloatingPointError(f"SimCLR loss is {float(loss)} in the GPU check.")
    total = wait + compute
    ips = s["steps"] * cfg.batch_size / total
    mem = f", peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB" if dev.type == "cuda" else ""
    return {
        "check": f"SimCLR {s['backbone']} {s['image_size']} px, batch {cfg.batch_size}",
        "result": f"{ips:,.1f} images/s ({plan.precision}, {'channels_last' if plan.channels_last else 'contiguous'}"
        f", {workers} loader workers, CLAHE p={s['clahe_p']}); waiting for data {100 * wait / total:.0f} %"
        f" of step time{mem}",
        "seconds": round(total, 1),
        "images_per_s": ips,
        "data_wait_share": wait / total,
        "batch": cfg.batch_size,
        "plan": plan.to_dict(),
    }


def ddp_epoch(manifest: Path, s: dict, device: str, workers: int, out: Path, cache_dir: str) -> dict:
    """One SimCLR epoch on a slice through ``torchrun --standalone --nproc_per_node=1`` with DDP initialised for
    the single process (``GLOMLIB_DDP=1``: nccl on a GPU, gloo on CPU)."""
    run = out / "ddp-ssl"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "glomlib.train.simclr",
        "--data",
        str(manifest),
        "--out",
        str(run),
        "--backbone",
        s["backbone"],
        "--ssl-init",
        "scratch",
        "--image-size",
        str(s["image_size"]),
        "--batch-size",
        str(s["batch_size"]),
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--max-images",
        str(s["ddp_slice"]),
        "--knn-every",
        "0",
        "--final-probe",
        "false",
        "--num-workers",
        str(workers),
        "--device",
        device,
        "--progress",
        "false",
        "--clahe-p",
        str(s["clahe_p"]),
    ]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    env = {**os.environ, "GLOMLIB_DDP": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(
            f"torchrun DDP epoch failed (exit {p.returncode}):\n{' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        )
    import pandas as pd

    h = pd.read_csv(run / "history.csv")
    prov = json.loads((run / "provenance.json").read_text())
    world, pg = prov.get("world_size", "?"), prov.get("process_group", "")
    if not pg:
        raise RuntimeError(
            f"torchrun ran, but no process group was initialised (provenance: {run / 'provenance.json'})."
        )
    enc = run / "encoder.safetensors"
    if not enc.is_file():
        raise RuntimeError(f"torchrun DDP epoch wrote no {enc}.")
    return {
        "check": f"torchrun DDP epoch, {s['ddp_slice']} images",
        "result": f"{float(h['images_per_s'].iloc[-1]):,.1f} images/s in the epoch, loss "
        f"{float(h['loss'].iloc[-1]):.3f}, world size {world}, DDP over {pg}; "
        f"{secs:.0f} s with start-up",
        "seconds": round(secs, 1),
        "images_per_s": float(h["images_per_s"].iloc[-1]),
    }


def finetune_and_predict(manifest: Path, s: dict, device: str, out: Path, cache_dir: str) -> list[dict]:
    from glomlib.evaluate.predict import predict_manifest
    from glomlib.train.finetune import FinetuneConfig, run_finetune

    cfg = FinetuneConfig.from_params(
        init="scratch",
        data=str(manifest),
        out=str(out / "finetune"),
        backbone=s["backbone"],
        image_size=s["image_size"],
        epochs=s["ft_epochs"],
        batch_size=s["ft_batch"],
        folds=s["ft_folds"],
        min_steps=1,
        device=device,
        final_model=True,
        progress=False,
        cache_dir=cache_dir,
    )
    t = time.perf_counter()
    res = run_finetune(cfg)
    ft_s = time.perf_counter() - t
    run_dir = Path(getattr(res, "out", None) or getattr(res, "run_dir", None) or cfg.out)
    model_path = run_dir / "model.safetensors"
    if not model_path.is_file():
        raise RuntimeError(f"the fine-tune wrote no {model_path}.")
    n = len(__import__("pandas").read_csv(manifest))
    t = time.perf_counter()
    pred = predict_manifest(model_path, manifest, out / "predictions.csv", device=device)
    pr_s = time.perf_counter() - t
    if len(pred) != n or not np.isfinite(pred["prob"].to_numpy()).all():
        raise RuntimeError(f"prediction gave {len(pred)} finite rows for {n} images.")
    prov = json.loads((run_dir / "provenance.json").read_text())
    rt = prov.get("runtime", {})
    return [
        {
            "check": f"fine-tune {s['backbone']} {s['image_size']} px, {s['ft_folds']} folds + final model, "
            f"{s['ft_epochs']} epoch",
            "result": f"done in {ft_s:.0f} s ({rt.get('precision')}, "
            f"{'channels_last' if rt.get('channels_last') else 'contiguous'})",
            "seconds": round(ft_s, 1),
        },
        {
            "check": f"prediction, {n} images",
            "result": f"{n / pr_s:,.1f} images/s (incl. loading the model and images)",
            "seconds": round(pr_s, 1),
            "images_per_s": n / pr_s,
        },
    ]


def print_table(rows: list[dict]) -> None:
    w = max(len(r["check"]) for r in rows)
    print(f"\n{'check':{w}s} | {'seconds':>7s} | result")
    print(f"{'-' * w}-|-{'-' * 7}-|-{'-' * 40}")
    for r in rows:
        print(f"{r['check']:{w}s} | {r['seconds']:7.1f} | {r['result']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_MANIFEST), help="manifest CSV (labelled)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on CPU: checks the code paths in seconds")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda (default: cuda, or cpu with --tiny)")
    ap.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: all cores but 2, at most 12; 0 with --tiny)"
    )
    ap.add_argument("--out", default="", help="keep the runs in this new folder (default: a temp folder, deleted)")
    ap.add_argument("--cache-dir", default="", help="image cache folder (default: glomlib's)")
    ap.add_argument("--json", default="", help="also write the rows as JSON here")
    a = ap.parse_args(argv)

    from glomlib.core import runtime
    from glomlib.core.paths import chdir_project_root
    from glomlib.data.cache import load_images
    from glomlib.data.manifest import read_manifest

    chdir_project_root()
    s = TINY if a.tiny else FULL
    device = a.device or ("cpu" if a.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU here. Run on a GPU machine, or use --tiny (CPU, tiny sizes) / --device cpu.")
    workers = a.workers if a.workers is not None else (0 if a.tiny else max(1, min(12, (os.cpu_count() or 2) - 2)))
    manifest = Path(a.data)
    if not manifest.exists() and a.data == ap.get_default("data"):
        from glomlib.data.public import ensure_default_manifest

        manifest = Path(ensure_default_manifest(a.data))
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="glomlib-gpu-check-"))
    if a.out:
        out.mkdir(parents=True, exist_ok=False)
    t_all = time.perf_counter()
    rows = [device_row(runtime.resolve_device(device))]
    try:
        df = read_manifest(manifest, require_labels=False)
        t = time.perf_counter()
        images = load_images(
            df["path"].tolist(), s["image_size"], cache_dir=a.cache_dir or None, workers=workers or None
        )
        secs = time.perf_counter() - t
        rows.append(
            {
                "check": f"patch cache, {len(df)} images at {s['image_size']} px",
                "result": f"{len(df) / secs:,.0f} images/s (built or reused)",
                "seconds": round(secs, 1),
            }
        )
        print(rows[-1]["result"], flush=True)
        rows.append(simclr_throughput(images, s, device, workers))
        print(f"{rows[-1]['check']}: {rows[-1]['result']}", flush=True)
        s = {**s, "batch_size": rows[-1]["batch"]}  # the batch that fitted
        for step in (
            lambda: [ddp_epoch(manifest, s, device, workers, out, a.cache_dir)],
            lambda: finetune_and_predict(manifest, s, device, out, a.cache_dir),
        ):
            new = step()
            rows += new
            for r in new:
                print(f"{r['check']}: {r['result']}", flush=True)
    finally:
        if not a.out:
            shutil.rmtree(out, ignore_errors=True)
    rows.append({"check": "total", "result": "all checks passed", "seconds": round(time.perf_counter() - t_all, 1)})
    print_table(rows)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
