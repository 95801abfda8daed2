"""glomlib.train.simclr: SimCLR pretraining, checkpoints, resume (also after SIGKILL), CLI."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glomlib.core.config import ConfigError, parse_args
from glomlib.models import backbones as models
from glomlib.models import files as checkpoint
from glomlib.train import simclr as ssl

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    backbone="resnet18",
    ssl_init="scratch",
    freeze_bn=False,
    image_size=32,
    batch_size=8,
    epochs=2,
    knn_every=1,
    knn_k=3,
    proj_hidden_dim=32,
    proj_out_dim=16,
    precision="fp32",
    channels_last=False,
    clahe_p=0.5,
    warmup_epochs=1,
)


def _images(n=24, s=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(150, 230, (n, s, s, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    x[y == 1, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] //= 3  # a dark blob on positives
    return x, y, np.arange(n) % 3


def test_tiny_pretrain_writes_everything(tmp_path):
    x, y, folds = _images()
    cfg = ssl.SSLConfig.from_params(out=str(tmp_path), **TINY)
    res = ssl.pretrain(cfg, x, tmp_path, y=y, folds=folds, data_fingerprint="fp123", progress=False)
    hist = ssl.read_history(tmp_path)
    assert list(hist["epoch"]) == [1, 2]
    assert np.isfinite(hist["loss"]).all() and (hist["images_per_s"] > 0).all()
    assert {"embedding_std", "embedding_std_ref", "knn_acc", "knn_auc", "lr"} <= set(hist.columns)
    ck = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True
    assert ck["epoch"] == 2 and ck["data_fingerprint"] == "fp123" and ck["config"]["image_size"] == 32
    assert ck["versions"]["torch"] == torch.__version__.split("+")[0]
    bb, _ = models.build_backbone("resnet18")
    meta = checkpoint.load_encoder_into(bb, res.encoder_path, expect_backbone="resnet18")
    assert meta["image_size"] == 32 and meta["data_fingerprint"] == "fp123"
    assert meta["bn_recalibrated"] is True
    for k, v in bb.named_parameters():  # weights as trained; BN statistics re-estimated on clean images
        assert torch.equal(v, ck["model"]["backbone." + k]), k
    assert not torch.equal(bb.bn1.running_mean, ck["model"]["backbone.bn1.running_mean"])


def test_recalibrate_bn_matches_clean_image_statistics():
    x, _, _ = _images(16)
    bb, _ = models.build_backbone("resnet18")
    ssl.recalibrate_bn(bb, x, 32, "cpu", batch_size=5)
    assert not bb.training
    with torch.no_grad():
        first = bb.bn1(bb.conv1(models.to_tensor_batch(x)))  # normalised by the recalibrated statistics
    pre = bb.conv1(models.to_tensor_batch(x)).detach()
    assert torch.allclose(bb.bn1.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.isfinite(first).all()


def test_freeze_bn_keeps_running_statistics(tmp_path):
    x, _, _ = _images()
    cfg = ssl.SSLConfig.from_params(out=str(tmp_path), **{**TINY, "epochs": 1, "knn_every": 0, "freeze_bn": True})
    torch.manual_seed(cfg.seed)
    init = ssl.build_model(cfg).backbone.bn1.running_mean.clone()
    ssl.pretrain(cfg, x, tmp_path, progress=False)
    ck = checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert torch.equal(ck["model"]["backbone.bn1.running_mean"], init)


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    """3 epochs in one go == 1 epoch, stop, resume to 3 (same weights, same history)."""
    x, _, _ = _images()
    kw = {**TINY, "epochs": 3, "knn_every": 0}
    a, c = tmp_path / "a", tmp_path / "c"
    a.mkdir(), c.mkdir()
    ssl.pretrain(ssl.SSLConfig.from_params(out=str(a), **kw), x, a, progress=False)
    _run_epochs(ssl.SSLConfig.from_params(out=str(c), **kw), x, c, stop_after=1)
    assert checkpoint.load_checkpoint(c / "checkpoint.pt")["epoch"] == 1
    ssl.pretrain(ssl.SSLConfig.from_params(out=str(c), resume=True, **kw), x, c, progress=False)
    ha, hc = ssl.read_history(a), ssl.read_history(c)
    assert list(hc["epoch"]) == [1, 2, 3]
    assert np.allclose(ha["loss"], hc["loss"], rtol=1e-4, atol=1e-5)
    wa = checkpoint.load_checkpoint(a / "checkpoint.pt")["model"]
    wc = checkpoint.load_checkpoint(c / "checkpoint.pt")["model"]
    for k in wa:
        assert torch.allclose(wa[k].float(), wc[k].float(), atol=1e-4), k


def _run_epochs(cfg, x, run_dir, stop_after):
    """Run ``cfg`` but stop after ``stop_after`` epochs (as if killed right after that checkpoint)."""
    from glomlib.train.simclr import loop

    orig = loop.write_history

    class Stop(Exception):
        pass

    def write_then_stop(path, rows):
        orig(path, rows)
        if len(rows) >= stop_after:
            raise Stop

    loop.write_history = write_then_stop
    try:
        ssl.pretrain(cfg, x, run_dir, progress=False)
    except Stop:
        pass
    finally:
        loop.write_history = orig


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="unknown parameter"):
        ssl.SSLConfig.from_params(epochz=3)
    with pytest.raises(ConfigError, match="backbone"):
        ssl.SSLConfig.from_params(backbone="vgg")
    with pytest.raises(ConfigError, match="optimizer"):
        ssl.SSLConfig.from_params(optimizer="adam")
    with pytest.raises(ConfigError, match="resume"):
        ssl.SSLConfig.from_params(resume=True)
    with pytest.raises(ConfigError, match="hflip_p"):
        ssl.SSLConfig.from_params(hflip_p=2.0)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        ssl.SSLConfig.from_params(warmup_epochs=-1)


def test_warmup_never_exceeds_half_the_steps():
    """The default warm-up (1 epoch) with --epochs 1 still decays the learning rate in the second half."""
    assert ssl.warmup_steps(1, 10, 10) == 5
    assert ssl.warmup_steps(1, 10, 100) == 10
    assert ssl.warmup_steps(2, 10, 10) == 5
    assert ssl.warmup_steps(0, 10, 10) == 0
    cfg = ssl.SSLConfig.from_params(epochs=1, warmup_epochs=3)  # accepted: clamped at run time
    assert cfg.warmup_epochs == 3


def _old_lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The hand-written schedule that lightly's CosineWarmupScheduler replaced (glomlib.core.runtime.lr_factor)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@pytest.mark.parametrize("total,warmup", [(100, 10), (10, 5), (7, 0), (3, 1), (240, 16), (2, 1)])
def test_lr_schedule_warmup_then_cosine(total, warmup):
    """Every learning rate a training step uses (and the one after the last step) is the old schedule's."""
    import torch

    from glomlib.train.schedule import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = warmup_cosine(opt, total, warmup)
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5 * _old_lr_factor(s, total, warmup) for s in range(total + 1)], abs=1e-12)
    f = [x / 0.5 for x in lrs]
    if warmup:
        assert f[0] == pytest.approx(1 / warmup) and f[warmup - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[warmup:], f[warmup + 1 :])) and f[total] == 0


def test_epoch_batches_shard_without_overlap():
    full = ssl.epoch_batches(50, 8, epoch=3, seed=0)
    r0 = ssl.epoch_batches(50, 4, epoch=3, seed=0, rank=0, world=2)
    r1 = ssl.epoch_batches(50, 4, epoch=3, seed=0, rank=1, world=2)
    assert len(full) == len(r0) == len(r1) == 6
    a, b = np.concatenate(r0), np.concatenate(r1)
    assert not set(a) & set(b) and set(a) | set(b) == set(np.concatenate(full))
    assert not np.array_equal(np.concatenate(ssl.epoch_batches(50, 8, 4, 0)), np.concatenate(full))
    with pytest.raises(ConfigError, match="batch_size"):
        ssl.epoch_batches(5, 8, 0, 0)


def test_embedding_spread_detects_collapse():
    assert ssl.embedding_spread(torch.ones(64, 16) + 1e-6 * torch.randn(64, 16)) < 1e-3
    assert ssl.embedding_spread(torch.randn(512, 16)) == pytest.approx(1 / 4, rel=0.1)


def test_out_folder_is_never_overwritten(make_manifest, tmp_path):
    m = make_manifest(size=32)
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    cfg = ssl.SSLConfig.from_params(data=str(m), out=str(out), **{**TINY, "epochs": 1})
    with pytest.raises(FileExistsError, match="not empty"):
        ssl.run_ssl(cfg, progress=False)


def _cli(out, manifest, epochs, *extra):
    return [
        sys.executable,
        "-m",
        "glomlib.train.simclr",
        "--progress",
        "false",
        "--out",
        str(out),
        "--data",
        str(manifest),
        "--epochs",
        str(epochs),
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--knn-k",
        "3",
        "--knn-every",
        "1",
        "--proj-hidden-dim",
        "32",
        "--proj-out-dim",
        "16",
        "--folds",
        "3",
        "--precision",
        "fp32",
        "--backbone",
        "resnet18",
        "--ssl-init",
        "scratch",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_finishes(make_manifest, tmp_path):
    m = make_manifest(n_slides=6, per_slide=8, size=32)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(out, m, 4), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    hist = out / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if hist.exists() and len(hist.read_text().strip().splitlines()) >= 2:  # epoch 1 checkpointed
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    time.sleep(0.3)  # now inside epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ck = checkpoint.load_checkpoint(out / "checkpoint.pt")
    assert 1 <= ck["epoch"] < 4
    assert not (out / "encoder.safetensors").exists()
    r = subprocess.run(_cli(out, m, 4, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"Resuming {out} after epoch {ck['epoch']}/4" in r.stdout
    assert list(ssl.read_history(out)["epoch"]) == [1, 2, 3, 4]
    assert checkpoint.load_checkpoint(out / "checkpoint.pt")["epoch"] == 4
    assert (out / "encoder.safetensors").exists()
    assert json.loads((out / "provenance.json").read_text())["data_fingerprint"]


def test_glomlib_ssl_options():
    argv = ["--epochs", "3", "--resume", "--out", "/tmp/x", "--hflip-p", "0.25", "--freeze-bn", "false"]
    cfg = parse_args(ssl.SSLConfig, argv, "glomlib ssl")
    assert cfg.epochs == 3 and cfg.resume and cfg.out == "/tmp/x" and cfg.hflip_p == 0.25 and not cfg.freeze_bn
    assert cfg.lr == ssl.SSLConfig.lr  # options not given keep the dataclass default


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-size", "1"],
        ["--lr", "nan"],
        ["--lr", "-1e-3"],
        ["--temperature", "0"],
        ["--warmup-epochs", "-1"],
        ["--stain-normalize", "bogus"],
        ["--epochs", "0"],
        ["--weight-decay", "-0.1"],
        ["--optimizer", "adam"],
        ["--resume"],
    ],
)
def test_bad_ssl_options_are_usage_errors(argv, capsys):
    """Issue 19 (6): refused where they enter, exit 2 (the old CLI trained, or exited 70 on --lr nan)."""
    from glomlib import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["ssl", *argv])
    assert e.value.code == 2
