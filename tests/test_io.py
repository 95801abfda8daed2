"""glomlib.core.io: create-exclusive outputs and run-folder claims under real process races, swept temp files,
disk-full messages, resume refusals and failed-run records."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glomlib.core.io import (
    CLAIM_FILE,
    TMP_MARK,
    DiskFullError,
    ResumeError,
    claim_dir,
    mark_run,
    open_for_resume,
    publish_new,
    read_run_status,
    run_status,
    sweep_stale_temp,
    write_json_atomic,
    write_with,
)

TRIALS = 40


# ------------------------------------------------------------------------------------------ race harness
def _racer(name, barrier, trials, root, job, results):
    """One of two processes: for each trial wait for the other at the barrier, then run ``job`` at once."""
    out = []
    for t in range(trials):
        barrier.wait()
        try:
            job(name, Path(root) / f"t{t}")
            out.append("won")
        except FileExistsError as e:
            out.append("exists: " + str(e))
        except Exception as e:  # noqa: BLE001 - any other outcome is a failure the test reports
            out.append(f"other {type(e).__name__}: {e}")
    results.put((name, out))


def race(job, root: Path, trials: int = TRIALS) -> list[tuple[str, str]]:
    """Run ``job(name, trial_path)`` in two spawned processes at the same moment, ``trials`` times."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(n, barrier, trials, str(root), job, results)) for n in ("a", "b")]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
    return list(zip(got["a"], got["b"]))


def _claim_job(name, path):
    claim_dir(path)
    (path / f"owner-{name}").write_text(name)


def _publish_job(name, path):
    body = (name * 200_000).encode()  # 200 KB of one letter: a spliced file would mix letters
    publish_new(path.with_suffix(".bin"), lambda tmp: tmp.write_bytes(body))


def test_two_claimants_of_one_folder_exactly_one_wins(tmp_path):
    outcomes = race(_claim_job, tmp_path)
    for t, (a, b) in enumerate(outcomes):
        assert sorted([a == "won", b == "won"]) == [False, True], (t, a, b)
        loser = a if a != "won" else b
        assert loser.startswith("exists:") and "choose a new output folder" in loser, loser
        assert len(list((tmp_path / f"t{t}").glob("owner-*"))) == 1


def test_two_publishers_of_one_file_exactly_one_wins_never_spliced(tmp_path):
    outcomes = race(_publish_job, tmp_path)
    for t, (a, b) in enumerate(outcomes):
        assert sorted([a == "won", b == "won"]) == [False, True], (t, a, b)
        winner = "a" if a == "won" else "b"
        assert (tmp_path / f"t{t}.bin").read_bytes() == (winner * 200_000).encode()
        assert "already exists" in (b if a == "won" else a)
    assert not list(tmp_path.glob(f".*{TMP_MARK}*")), "temp files left behind"


# ------------------------------------------------------------------------------------ two `glomlib predict`
def _predict_job(name, path):
    from glomlib.evaluate.predict import predict_manifest

    root = Path(path).parent
    predict_manifest(
        root / "model.safetensors", root / f"manifest-{name}.csv", Path(str(path) + ".csv"), device="cpu", batch_size=8
    )


def test_two_predicts_with_one_out_exactly_one_wins(tmp_path, write_png, monkeypatch):
    import torch

    from glomlib.models.files import save_model
    from glomlib.models.heads import build_classifier

    torch.manual_seed(0)
    save_model(
        build_classifier("resnet18").eval(),
        {
            "backbone": "resnet18",
            "image_size": 16,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "positive_label": "M1",
            "negative_label": "M0",
            "threshold": 0.5,
        },
        tmp_path / "model.safetensors",
    )
    rng = np.random.default_rng(0)
    for name, n in (("a", 6), ("b", 9)):  # different manifests -> different outputs: a splice would show
        rows = [
            {
                "path": str(
                    write_png(tmp_path / name / f"{name}{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
                ),
                "slide": f"{name}-s{i % 2}",
            }
            for i in range(n)
        ]
        pd.DataFrame(rows).to_csv(tmp_path / f"manifest-{name}.csv", index=False)
    monkeypatch.setenv("GLOMLIB_CACHE", str(tmp_path / "cache"))  # the spawned racers inherit it
    outcomes = race(_predict_job, tmp_path, trials=20)
    for t, (a, b) in enumerate(outcomes):
        assert sorted([a == "won", b == "won"]) == [False, True], (t, a, b)
        loser = b if a == "won" else a
        assert loser.startswith("exists:") and "already exists" in loser, loser
        df = pd.read_csv(tmp_path / f"t{t}.csv")
        winner = "a" if a == "won" else "b"
        assert len(df) == (6 if winner == "a" else 9)
        assert all(Path(p).parent.name == winner for p in df["path"])
    assert not list(tmp_path.glob(f".*{TMP_MARK}*"))


# ------------------------------------------------------------------------------------------ stale temps
def _dead_pid() -> int:
    p = mp.get_context("spawn").Process(target=int)
    p.start()
    p.join()
    return p.pid


def test_stale_temp_files_of_dead_processes_are_swept(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".x.npy{TMP_MARK}{dead}-123"
    live = tmp_path / f".y.csv{TMP_MARK}{os.getppid()}-456"  # a live process: kept
    sub = tmp_path / "checkpoints" / f".state.pt{TMP_MARK}{dead}-9"
    for f in (stale, live, sub):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
    assert sweep_stale_temp(tmp_path) == [stale]
    assert live.exists() and sub.exists()
    assert sweep_stale_temp(tmp_path, recursive=True) == [sub]


def test_cache_folder_is_swept_when_opened(tmp_path, write_png):
    from glomlib.data.cache import load_images

    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / f".images-16px-abc.npy{TMP_MARK}{_dead_pid()}-1"
    stale.write_bytes(b"\0" * 4096)
    p = write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    load_images([str(p)], 16, cache_dir=cache)
    assert not stale.exists()
    assert not list(cache.glob(f".*{TMP_MARK}*"))


def test_cache_build_on_a_full_disk_names_the_cache_file(tmp_path, write_png, monkeypatch):
    import glomlib.data.cache as cache

    p = write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "decode_image", full)
    with pytest.raises(DiskFullError, match=r"disk full while writing .*images-16px-.*\.npy .*free on that disk"):
        cache.load_images([str(p)], 16, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_resume_sweeps_the_run_folder(tmp_path):
    run = tmp_path / "run"
    claim_dir(run)
    write_json_atomic(run / "config.json", {"a": 1})
    stale = run / "checkpoints" / "seed0-fold0" / f".state.pt{TMP_MARK}{_dead_pid()}-1"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    open_for_resume(run, {"a": 1}, None)
    assert not stale.exists()


# ------------------------------------------------------------------------------------ failures and disk
def test_failed_write_leaves_no_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_with(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: No space left on device"),
    ],
)
def test_disk_full_names_path_and_free_space(tmp_path, error):
    def full(tmp):
        tmp.write_bytes(b"x" * 10)
        raise error

    with pytest.raises(DiskFullError) as ei:
        write_with(tmp_path / "model.safetensors", full)
    msg = str(ei.value)
    assert str(tmp_path / "model.safetensors") in msg and "free on that disk" in msg, msg
    assert ei.value.errno == errno.ENOSPC and ei.value.free_bytes is not None
    assert list(tmp_path.iterdir()) == []


def test_torch_save_iostream_error_on_a_nearly_full_disk_is_disk_full(tmp_path, monkeypatch):
    import glomlib.core.io.atomic as io

    def vague(tmp):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
            "data/0: file write failed; basic_ios::clear: iostream error"
        )

    with pytest.raises(RuntimeError) as ei:  # plenty of space: a real error, passed on as it is
        write_with(tmp_path / "checkpoint.pt", vague)
    assert not isinstance(ei.value, DiskFullError)
    monkeypatch.setattr(io, "free_space", lambda folder: 4096)
    with pytest.raises(DiskFullError, match=r"checkpoint\.pt \(4\.0 KB free on that disk\)"):
        write_with(tmp_path / "checkpoint.pt", vague)


def test_existing_folder_with_files_or_claim_is_refused(tmp_path):
    d = claim_dir(tmp_path / "out")
    assert (d / CLAIM_FILE).is_file()
    with pytest.raises(FileExistsError, match="already claimed"):
        claim_dir(d)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.csv").write_text("1")
    with pytest.raises(FileExistsError, match="not empty"):
        claim_dir(tmp_path / "other")


# ------------------------------------------------------------------------------------ resume + run status
def test_resume_refuses_finished_changed_or_other_data_listing_differences(tmp_path):
    run = claim_dir(tmp_path / "run")
    write_json_atomic(run / "config.json", {"epochs": 10, "lr": 0.1, "device": "cpu"})
    write_json_atomic(run / "provenance.json", {"data_fingerprint": "aaaa"})
    # same data and settings (device may change): allowed
    assert (
        open_for_resume(
            run,
            {"epochs": 10, "lr": 0.1, "device": "cuda"},
            "aaaa",
            free_fields={"device"},
            finished=["encoder.safetensors"],
        )
        == run
    )
    with pytest.raises(ResumeError) as ei:
        open_for_resume(run, {"epochs": 20, "lr": 0.1, "device": "cpu"}, "bbbb", finished=["encoder.safetensors"])
    msg = str(ei.value)
    assert "epochs: 10 -> 20" in msg and "data fingerprint: aaaa -> bbbb" in msg
    import platform

    mark_run(run, "running", pid=os.getppid(), host=platform.node())  # a live process is running it
    with pytest.raises(ResumeError, match=rf"another process \(pid {os.getppid()}\) is running it"):
        open_for_resume(run, {"epochs": 10, "lr": 0.1, "device": "cpu"}, "aaaa")
    mark_run(run, "running", pid=_dead_pid(), host=platform.node())  # killed (e.g. kill -9): may resume
    open_for_resume(run, {"epochs": 10, "lr": 0.1, "device": "cpu"}, "aaaa")
    (run / "encoder.safetensors").write_bytes(b"done")
    with pytest.raises(ResumeError, match="finished"):
        open_for_resume(run, {"epochs": 10, "lr": 0.1, "device": "cpu"}, "aaaa", finished=["encoder.safetensors"])


def test_run_status_marks_failed_with_how_to_resume(tmp_path):
    with pytest.raises(ValueError):
        with run_status("finetune", lambda d: f"glomlib finetune --out {d} --resume true"):
            d = claim_dir(tmp_path / "r")
            raise ValueError("boom")
    st = read_run_status(d)
    assert st["status"] == "failed" and "boom" in st["error"]
    assert f"glomlib finetune --out {d} --resume true" in st["what_now"] and "new out folder" in st["what_now"]
    with run_status("finetune", lambda d: ""):
        d2 = claim_dir(tmp_path / "r2")
    assert read_run_status(d2)["status"] == "finished"
    mark_run(d, "running")
    assert "error" not in read_run_status(d)
    # a claim outside any run_status block writes no run.json (audit/compare folders stay as they were)
    d3 = claim_dir(tmp_path / "r3")
    assert not (d3 / "run.json").exists()
    assert json.loads((d3 / CLAIM_FILE).read_text())["pid"] == os.getpid()


def test_a_failed_step_releases_its_empty_claim_so_the_same_out_works_again(tmp_path):
    from glomlib.core.io import CLAIM_FILE, claim_dir, release_claim

    out = claim_dir(tmp_path / "out")
    assert (out / CLAIM_FILE).exists()
    assert release_claim(out) and not out.exists()
    out = claim_dir(tmp_path / "out")  # the same --out is usable again
    (out / "result.csv").write_text("x\n")
    assert not release_claim(out) and (out / "result.csv").exists()  # never removes what a step wrote
    other = tmp_path / "other"
    other.mkdir()
    (other / CLAIM_FILE).write_text('{"pid": 1}\n')
    assert not release_claim(other) and (other / CLAIM_FILE).exists()  # another process's claim is kept


def test_confident_errors_treat_both_classes_alike_at_the_boundary():
    import numpy as np

    from glomlib.review.labels import confident_errors

    y = np.array([1, 0, 1, 0])
    prob = np.array([0.2, 0.8, 0.21, 0.79])
    assert confident_errors(y, prob, 0.8).tolist() == [True, True, False, False]
