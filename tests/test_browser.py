"""The rendered reports in a real browser (headless Chromium): every image loads, no code cell and no
Python traceback is visible; a screenshot is saved for a human look.

Chromium is Debian's ``chromium`` package; when it is missing and we run as root (CI does), the fixture
installs it with apt-get. Without it the test skips locally and fails when ``CI=true``.
Screenshots go to the test's temp folder, and also to ``$GLOMLIB_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]

CHECK_JS = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var text = document.body.innerText || '';
  var codeInputs = document.querySelectorAll(
      '.jp-CodeCell .jp-InputArea, .jp-CodeCell .jp-Editor, .jp-CodeCell .highlight, .jp-InputPrompt, .jp-OutputPrompt');
  var visibleCode = Array.prototype.filter.call(codeInputs, function (e) { return e.offsetParent !== null; });
  var res = {
    images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return (i.getAttribute('src') || '').slice(0, 60); }),
    code_inputs: visibleCode.length,
    traceback: /Traceback \\(most recent call last\\)|Error Traceback|^\\s*-{5,}\\s*$/m.test(text),
    text_chars: text.length,
    title: document.title
  };
  var pre = document.createElement('pre');
  pre.id = 'glomlib-check';
  pre.textContent = 'GLOMLIB-CHECK' + JSON.stringify(res) + 'GLOMLIB-END';
  document.body.appendChild(pre);
});
</script>
"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = find_chromium()
    if exe is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, timeout=900)
        exe = find_chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed and could not be installed (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return exe


def _flags(profile_dir: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile_dir}",
    ]


def check_page(exe: str, page: Path, work: Path) -> dict:
    """Open a copy of ``page`` with the check script injected; return the script's findings."""
    page, work = Path(page).resolve(), Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    copy = work / f"check-{page.name}"
    html = page.read_text(encoding="utf-8")
    html = html.replace("</body>", CHECK_JS + "</body>", 1) if "</body>" in html else html + CHECK_JS
    copy.write_text(html, encoding="utf-8")
    proc = subprocess.run(
        [exe, *_flags(work / "chromium-profile"), "--virtual-time-budget=15000", "--dump-dom", copy.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    m = re.search(r'<pre id="glomlib-check">GLOMLIB-CHECK(.*?)GLOMLIB-END</pre>', proc.stdout, re.S)
    assert m, f"no check result from chromium for {page.name}: rc={proc.returncode} {proc.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(exe: str, page: Path, out_png: Path, work: Path) -> Path:
    subprocess.run(
        [exe, *_flags(work / "chromium-profile"), "--window-size=1280,1800", f"--screenshot={out_png}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out_png.is_file() and out_png.stat().st_size > 1000, f"no screenshot of {page.name}"
    dest = os.environ.get("GLOMLIB_SCREENSHOTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy2(out_png, Path(dest) / out_png.name)
    return out_png


def check_report_in_browser(exe: str, report_dir: Path, work: Path, *, min_images: int = 1) -> dict[str, dict]:
    """Assert every page of a report folder loads its images and shows no code/traceback; screenshot each."""
    results = {}
    report_dir, work = Path(report_dir).resolve(), Path(work).resolve()
    for page in sorted(report_dir.glob("*.html")):
        res = check_page(exe, page, work)
        assert not res["broken"], f"{page.name}: images did not load: {res['broken']}"
        assert res["code_inputs"] == 0, f"{page.name}: {res['code_inputs']} code input areas visible"
        assert not res["traceback"], f"{page.name}: a Python traceback is visible"
        assert res["text_chars"] > 100, f"{page.name}: page looks empty"
        screenshot(exe, page, work / f"{report_dir.name}-{page.stem}.png", work)
        results[page.name] = res
    assert sum(r["images"] for r in results.values()) >= min_images, "no figure in the whole report"
    return results


@pytest.mark.slow
def test_report_in_headless_chromium(chromium, tmp_path):
    from conftest import build_tiny_dataset
    from test_pipeline import write_profile, write_standin_notebooks

    from glomlib.publish.pipeline import run_pipeline

    nbs = write_standin_notebooks(tmp_path / "notebooks")
    manifest = build_tiny_dataset(tmp_path / "data", n_slides=4, per_slide=2, size=8)
    run = run_pipeline(
        write_profile(tmp_path / "p.yaml"),
        data=str(manifest),
        notebooks_dir=nbs,
        runs_root=tmp_path / "runs",
        reports_root=tmp_path / "reports",
        project_root=REPO,
        log=lambda m: None,
    )
    report = tmp_path / "reports" / run.name
    results = check_report_in_browser(chromium, report, tmp_path / "browser")
    assert results["01_data_audit.html"]["images"] >= 1
    assert results["index.html"]["title"].startswith("glomlib report")


def test_browser_check_detects_problems(chromium, tmp_path):
    """The check itself works: a broken image, a visible code cell and a traceback are all caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
        '<div class="jp-Cell jp-CodeCell"><div class="jp-InputArea">import os</div></div>'
        '<pre>Traceback (most recent call last):\n  File "x.py"</pre></body></html>'
    )
    res = check_page(chromium, page, tmp_path / "browser")
    assert res["images"] == 2 and len(res["broken"]) == 2
    assert res["code_inputs"] == 1 and res["traceback"]
