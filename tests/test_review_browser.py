"""The ipywidgets label-review browser (notebook 07) in a real JupyterLab server driven by headless Chromium
(Debian's chromium through Playwright): open the notebook, run all cells, click a label for a planted label
error, and find the decision (and a typed comment) in review.csv."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import build_tiny_dataset  # noqa: E402
from test_browser import chromium  # noqa: E402,F401  (the shared fixture: finds or installs Debian's chromium)
from test_review import make_run  # noqa: E402

from glomlib.data.manifest import read_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "07_label_review.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _csv_value(csv: Path, iid: str, col: str) -> str:
    if not csv.is_file():
        return ""
    t = pd.read_csv(csv, dtype=str, keep_default_na=False)
    hit = t.loc[t["image_id"] == iid, col]
    return hit.iloc[0] if len(hit) else ""


@pytest.mark.slow
def test_review_browser_in_jupyterlab_writes_csv(chromium, tmp_path):  # noqa: F811
    import papermill
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    manifest = build_tiny_dataset(tmp_path / "data", size=16)
    run = make_run(tmp_path, manifest)
    df = read_manifest(manifest, positive_label="M1")
    iid = df.at[3, "sha256"][:16]  # a planted label error
    new_label = {"M1": "M0", "M0": "M1"}[df.at[3, "label"]]
    out = tmp_path / "review-out"
    lab = tmp_path / "lab"
    lab.mkdir()
    nb = papermill.parameterize.parameterize_notebook(
        papermill.iorw.load_notebook_node(str(NOTEBOOK)),
        {"run": str(run), "out": str(out), "n_pairs": 0, "thumb_size": 64},
    )
    papermill.iorw.write_ipynb(nb, str(lab / "review.ipynb"))

    token, port = secrets.token_hex(16), _free_port()
    env = dict(
        os.environ,
        GLOMLIB_ROOT=str(REPO),
        JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jrt"),
        JUPYTER_DATA_DIR=str(tmp_path / "jdata"),
        IPYTHONDIR=str(tmp_path / "ipy"),
        OMP_NUM_THREADS="1",
    )
    env.pop("GLOMLIB_INTERACTIVE", None)  # the kernel must detect the live JupyterLab front end by itself
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={lab}",
            "--LabApp.news_url=",
            "--ServerApp.open_browser=False",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=lab,
    )
    try:

        def up():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return server.poll() is not None and (_ for _ in ()).throw(
                    AssertionError(f"jupyter lab exited: {(tmp_path / 'jupyter.log').read_text()[-2000:]}")
                )

        _wait(up, 120, "the JupyterLab server")
        csv = out / "review.csv"
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/review.ipynb?token={token}")
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
                select = page.locator(".jp-Dialog button", has_text="Select")
                try:  # JupyterLab may ask which kernel to use: take the one the notebook names
                    select.first.wait_for(timeout=20_000)
                    select.first.click()
                except PlaywrightTimeout:
                    pass
                _wait(
                    lambda: (
                        page.locator(".jp-Dialog").count() == 0
                        and page.locator("text=Python 3 (ipykernel) | Idle").count() > 0
                    ),
                    120,
                    "an idle kernel",
                )
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                item = page.locator(f".glomlib-review-{iid}")
                _wait(lambda: item.count() > 0, 180, "the review browser's widgets", interval=1.0)
                assert csv.is_file() and _csv_value(csv, iid, "reviewed_label") == ""
                item.locator("button", has_text=new_label).first.click()
                _wait(lambda: _csv_value(csv, iid, "reviewed_label") == new_label, 30, "the click in review.csv")
                box = item.locator("input[type='text']").first
                box.fill("open capillaries, not sclerosed")
                box.press("Enter")
                _wait(
                    lambda: _csv_value(csv, iid, "comment") == "open capillaries, not sclerosed",
                    30,
                    "the comment in review.csv",
                )
                page.screenshot(path=str(tmp_path / "review-browser.png"))
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"))  # what the browser showed, for the report
                raise
            finally:
                browser.close()
        t = pd.read_csv(csv, dtype=str, keep_default_na=False)
        assert (t["reviewed_label"] != "").sum() == 1  # exactly the one click
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
