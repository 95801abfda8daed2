"""The rendered reports in a real browser (headless Chromium through Playwright), the way a reader opens them on a
laptop: every page at 1,024 px wide; it fails on a console error or an uncaught script error, an image that does not
load, a page wider than the window (horizontal scrolling), a network request (pages work offline), a visible code
cell or Python traceback.

Chromium is Debian's ``chromium`` package (Playwright drives it; no browser download); when it is missing and we run
as root (CI does), the fixture installs it with apt-get. Without it the test skips locally and fails when ``CI=true``.

Run as a script, it writes a full-height PNG of every page of a report and lists what the browser found
(``make screenshots RUN=reports/<run>`` -> ``reports/<run>/screenshots/``)::

    python tests/test_browser.py [--screenshots DIR] [--width 1024] [--check] reports/<run>
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
WIDTH = 1024  # a laptop browser window

# wait until every image (lazy ones too) has loaded or failed, at most 10 s
LOAD_IMAGES_JS = """async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => (i.complete ? 0 : new Promise(r => {
    i.addEventListener('load', r); i.addEventListener('error', r); setTimeout(r, 10000); }))));
}"""

CHECK_JS = """() => {
  const W = window.innerWidth;
  const imgs = Array.from(document.images);
  const text = document.body.innerText || '';
  const code = document.querySelectorAll('.jp-CodeCell .jp-InputArea, .jp-CodeCell .jp-Editor, '
      + '.jp-CodeCell .highlight, .jp-InputPrompt, .jp-OutputPrompt');
  const heads = Array.from(document.querySelectorAll('h1, h2, h3, h4'));
  const headingAbove = el => {
    const top = el.getBoundingClientRect().top; let name = '';
    heads.forEach(h => { if (h.getBoundingClientRect().top <= top) name = h.innerText.trim().slice(0, 60); });
    return name;
  };
  const clipped = el => {
    for (let a = el.parentElement; a && a !== document.documentElement; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o !== 'visible') return a.getBoundingClientRect().right <= W + 1;
    }
    return false;
  };
  const scrollWidth = document.documentElement.scrollWidth;
  const wide = [];
  if (scrollWidth > W + 1) {
    for (const el of document.body.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.right <= W + 1 || r.width === 0 || clipped(el)) continue;
      const p = el.parentElement;
      if (p !== document.body && p.getBoundingClientRect().right > W + 1) continue;  // the outermost one only
      const cls = (el.getAttribute('class') || '').split(/\\s+/).filter(Boolean).slice(0, 2).join('.');
      wide.push(`<${el.tagName.toLowerCase()}${cls ? '.' + cls : ''}> ${Math.round(r.width)} px wide, right edge at `
        + `${Math.round(r.right)} px, under "${headingAbove(el)}": `
        + JSON.stringify((el.innerText || el.getAttribute('alt') || '').trim().slice(0, 60)));
      if (wide.length >= 5) break;
    }
  }
  return {
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0))
                .map(i => (i.getAttribute('src') || '').slice(0, 60) + ' under "' + headingAbove(i) + '"'),
    code_inputs: Array.prototype.filter.call(code, e => e.offsetParent !== null).length,
    traceback: /Traceback \\(most recent call last\\)|Error Traceback|^\\s*-{5,}\\s*$/m.test(text),
    text_chars: text.length,
    title: document.title,
    width: W,
    scroll_width: scrollWidth,
    wide: wide,
    height: document.documentElement.scrollHeight,
  };
}"""


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


def _open(ctx, page_file: Path, shot: Path | None) -> dict:
    page = ctx.new_page()
    page.set_default_timeout(180_000)  # a slow shared CPU
    console: list[str] = []
    page.on("console", lambda m: console.append(f"console.{m.type}: {m.text[:300]}") if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"uncaught error: {str(e)[:300]}"))
    requests: list[str] = []

    def block(route):  # a shared page makes no network request: record it and refuse it
        requests.append(route.request.url[:120])
        route.abort()

    page.route(re.compile(r"^(https?|wss?|ftp)://"), block)
    page.goto(page_file.resolve().as_uri(), wait_until="load", timeout=120_000)
    page.evaluate(LOAD_IMAGES_JS)
    res = page.evaluate(CHECK_JS)
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True, timeout=180_000)
    page.close()
    return {**res, "console": console, "requests": requests}


def inspect_pages(exe: str, pages: list[Path], *, width: int = WIDTH, shots: Path | None = None) -> dict[str, dict]:
    """Open each page in one headless Chromium at ``width`` px; return per page name what the browser found
    (``images``, ``broken``, ``console``, ``requests``, ``scroll_width``, ``wide``, ``code_inputs``, ``traceback``,
    ``text_chars``, ``title``, ``height``). With ``shots``, a full-height PNG of each page goes there."""
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
        )
        try:
            ctx = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
            for f in pages:
                out[Path(f).name] = _open(ctx, Path(f), shots / f"{Path(f).stem}.png" if shots else None)
        finally:
            browser.close()
    return out


def check_page(exe: str, page: Path, work: Path | None = None) -> dict:
    """What the browser finds on one page (see :func:`inspect_pages`)."""
    return inspect_pages(exe, [Path(page)])[Path(page).name]


def problems(results: dict[str, dict]) -> list[str]:
    """Every problem a reader would meet, one line per page and kind, naming the page."""
    out = []
    for name, r in results.items():
        out += [f"{name}: image does not load: {b}" for b in r["broken"]]
        out += [f"{name}: {c}" for c in r["console"]]
        out += [f"{name}: network request (pages must work offline): {u}" for u in r["requests"]]
        if r["scroll_width"] > r["width"] + 1:
            out.append(f"{name}: page is {r['scroll_width']} px wide in a {r['width']} px window (horizontal scroll)")
            out += [f"{name}:   too wide: {w}" for w in r["wide"]]
        if r["code_inputs"]:
            out.append(f"{name}: {r['code_inputs']} code input areas visible")
        if r["traceback"]:
            out.append(f"{name}: a Python traceback is visible")
        if r["text_chars"] <= 100:
            out.append(f"{name}: page looks empty ({r['text_chars']} characters)")
    return out


def check_report_in_browser(
    exe: str, report_dir: Path, *, min_images: int = 1, shots: Path | None = None
) -> dict[str, dict]:
    """Assert every page of a report folder opens cleanly at 1,024 px (see :func:`problems`); screenshot each into
    ``shots`` (default ``$GLOMLIB_SCREENSHOTS``, else none)."""
    shots = shots or (Path(os.environ["GLOMLIB_SCREENSHOTS"]) if os.environ.get("GLOMLIB_SCREENSHOTS") else None)
    results = inspect_pages(exe, sorted(Path(report_dir).glob("*.html")), shots=shots)
    found = problems(results)
    assert not found, f"{len(found)} problem(s) in the browser at {WIDTH} px:\n" + "\n".join(found)
    assert sum(r["images"] for r in results.values()) >= min_images, "no figure in the whole report"
    return results


@pytest.mark.slow
def test_report_in_headless_chromium(chromium, tmp_path):
    """The stand-in notebooks' report (the report machinery, independent of the real notebooks' pages)."""
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
    results = check_report_in_browser(chromium, report)
    assert results["01_data_audit.html"]["images"] >= 1
    assert results["index.html"]["title"].startswith("glomlib report")


@pytest.mark.realdata
@pytest.mark.slow
def test_smoke_report_in_headless_chromium(chromium, smoke_report, tmp_path):
    """The real notebooks' pages (the session's smoke run on real data), every page at 1,024 px."""
    shots = tmp_path / "screenshots"  # as `make screenshots` writes them
    results = check_report_in_browser(chromium, smoke_report["report"], min_images=5, shots=shots)
    assert results["01_data_audit.html"]["images"] >= 1
    pngs = {p.name: p.stat().st_size for p in shots.glob("*.png")}
    assert set(pngs) == {f"{Path(n).stem}.png" for n in results} and min(pngs.values()) > 1000, pngs


def test_browser_check_detects_problems(chromium, tmp_path):
    """The check itself works: broken images, a visible code cell, a traceback, a console error, an uncaught error,
    a network request and a table wider than the window are all caught, and named."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body><h2>Results</h2>"
        '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
        '<div class="jp-Cell jp-CodeCell"><div class="jp-InputArea">import os</div></div>'
        '<pre>Traceback (most recent call last):\n  File "x.py"</pre>'
        '<table class="wide" style="width:1500px"><tr><td>fold 0 AUC</td></tr></table>'
        '<script>console.error("boom"); undefinedFunction();</script>'
        '<img src="https://example.org/logo.png" alt="logo"></body></html>'
    )
    res = check_page(chromium, page)
    assert res["images"] == 3 and len(res["broken"]) == 3
    assert res["code_inputs"] == 1 and res["traceback"]
    assert res["scroll_width"] >= 1500 and res["wide"][0].startswith("<table.wide> 1500 px wide")
    assert 'under "Results"' in res["wide"][0] and "fold 0 AUC" in res["wide"][0]
    assert res["requests"] == ["https://example.org/logo.png"]
    found = "\n".join(problems({"bad.html": res}))
    for expected in (
        "bad.html: console.error: boom",
        "bad.html: uncaught error: ",
        "undefinedFunction",
        "bad.html: page is 15",
        "bad.html: network request",
        "bad.html: image does not load: missing.png",
    ):
        assert expected in found, (expected, found)


def test_a_clean_page_passes(chromium, tmp_path):
    """No false alarm: a page with a wide table in a scrolling box, a loaded image, no errors."""
    page = tmp_path / "good.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>good</title></head><body><h1>Fine</h1><p>Some text. "
        * 5
        + '<div style="overflow-x:auto"><table style="width:1500px"><tr><td>wide, but scrolls in its box</td></tr>'
        "</table></div><img alt='one red pixel' src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAA"
        "fFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=='></body></html>"
    )
    res = check_page(chromium, page)
    assert problems({"good.html": res}) == [], res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Open every page of a report in headless Chromium; screenshots.")
    ap.add_argument("report", type=Path, help="a report folder, e.g. reports/<run>")
    ap.add_argument("--screenshots", type=Path, help="write a full-height PNG of every page here")
    ap.add_argument("--width", type=int, default=WIDTH, help="window width in px (default 1024)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the browser finds a problem")
    a = ap.parse_args(argv)
    exe = find_chromium()
    if exe is None:
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    pages = sorted(a.report.glob("*.html"))
    if not pages:
        print(f"no HTML page in {a.report}", file=sys.stderr)
        return 2
    results = inspect_pages(exe, pages, width=a.width, shots=a.screenshots)
    for name, r in results.items():
        print(f"{name}: {r['images']} images, {r['height']} px tall")
    found = problems(results)
    print("\n".join(found) if found else f"no problem in the browser at {a.width} px")
    if a.screenshots:
        print(f"screenshots: {a.screenshots}/<page>.png")
    return 1 if (found and a.check) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
