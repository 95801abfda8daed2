"""DDP on CPU (gloo, 2 processes): negatives gathered across ranks make the 2-rank loss equal the
single-process loss on the combined batch, and a torchrun launch of the real training runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from glomlib.models import files as checkpoint
from glomlib.train import simclr as ssl

ROOT = Path(__file__).resolve().parents[1]
B = 6


def _model_and_views():
    torch.manual_seed(0)
    cfg = ssl.SSLConfig.from_params(
        backbone="resnet18", ssl_init="scratch", image_size=32, proj_hidden_dim=32, proj_out_dim=16
    )
    model = ssl.build_model(cfg).eval()  # eval: BatchNorm uses running stats, so ranks see identical layers
    g = torch.Generator().manual_seed(1)
    v0 = torch.randn(2 * B, 3, 32, 32, generator=g)
    v1 = v0 + 0.3 * torch.randn(2 * B, 3, 32, 32, generator=g)
    return model, v0, v1


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from lightly.loss import NTXentLoss
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, v0, v1 = _model_and_views()
    ddp = DDP(model)
    crit = NTXentLoss(temperature=0.2, gather_distributed=True)
    sl = slice(rank * B, (rank + 1) * B)
    loss, _ = ssl.simclr_loss(ddp, crit, v0[sl], v1[sl])
    loss.backward()  # DDP averages gradients over ranks
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process_on_combined_batch(tmp_path):
    from lightly.loss import NTXentLoss

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]

    model, v0, v1 = _model_and_views()
    loss, _ = ssl.simclr_loss(model, NTXentLoss(temperature=0.2), v0, v1)
    loss.backward()
    mean_rank_loss = (r[0]["loss"] + r[1]["loss"]) / 2
    assert torch.allclose(mean_rank_loss, loss.detach(), rtol=1e-5, atol=1e-5), (mean_rank_loss, loss)
    for k, p in model.named_parameters():
        if p.grad is None:
            continue
        assert torch.allclose(r[0]["grads"][k], r[1]["grads"][k], atol=1e-6), k  # DDP synchronised
        assert torch.allclose(r[0]["grads"][k], p.grad, rtol=1e-3, atol=1e-5), k


@pytest.mark.slow
def test_torchrun_two_processes_trains_and_saves(make_manifest, tmp_path):
    m = make_manifest(n_slides=6, per_slide=4, size=32)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "glomlib.train.simclr",
        "--progress",
        "false",
        "--out",
        str(out),
        "--data",
        str(m),
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--proj-hidden-dim",
        "32",
        "--proj-out-dim",
        "16",
        "--folds",
        "3",
        "--knn-k",
        "3",
        "--precision",
        "fp32",
        "--backbone",
        "resnet18",
        "--ssl-init",
        "scratch",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    hist = ssl.read_history(out)
    assert list(hist["epoch"]) == [1, 2]
    # 24 images, 2 ranks x batch 4 -> 3 global steps of 8 images per epoch
    ck = checkpoint.load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 2 and (out / "encoder.safetensors").exists()
