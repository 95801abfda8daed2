"""benchmarks/gpu_check.py in --tiny mode on CPU (tiny generated images), so the GPU check never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_every_step_on_cpu(make_manifest, tmp_path):
    manifest = make_manifest(n_slides=6, per_slide=6, size=40)
    out_json = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOMLIB_CACHE": str(tmp_path / "cache")}
    p = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--tiny",
            "--data",
            str(manifest),
            "--json",
            str(out_json),
            "--out",
            str(tmp_path / "runs"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {r["check"].split(",")[0].split(" ")[0]: r for r in json.loads(out_json.read_text())}
    assert {"device", "patch", "SimCLR", "torchrun", "fine-tune", "prediction", "total"} <= set(rows)
    simclr = rows["SimCLR"]
    assert simclr["images_per_s"] > 0 and 0.0 <= simclr["data_wait_share"] <= 1.0
    assert simclr["plan"]["device"] == "cpu"
    assert rows["torchrun"]["images_per_s"] > 0
    # the torchrun run really initialised a process group for its one process and wrote an encoder
    prov = json.loads((tmp_path / "runs" / "ddp-ssl" / "provenance.json").read_text())
    assert prov["world_size"] == 1 and prov["process_group"] == "gloo"
    assert (tmp_path / "runs" / "ddp-ssl" / "encoder.safetensors").is_file()
    preds = (tmp_path / "runs" / "predictions.csv").read_text().splitlines()
    assert len(preds) == 1 + 36
    assert "waiting for data" in p.stdout and "all checks passed" in p.stdout
