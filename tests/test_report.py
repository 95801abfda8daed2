"""glomlib.publish.report: code-free, self-contained pages; no absolute paths/user/host; pseudonymisation; license."""

from __future__ import annotations

import getpass
import os
import re
import socket
import sys
from pathlib import Path

import pytest

from glomlib.publish.pipeline import run_pipeline
from glomlib.publish.report import (
    GLOMERULI_PAS_LICENSE,
    Scrubber,
    dataset_license,
    pseudonym,
    pseudonym_key,
    render_run,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import build_tiny_dataset  # noqa: E402
from test_pipeline import write_profile, write_standin_notebooks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


SLIDES = ["S00", "S01", "S02", "S03"]


def visible_text(page: str) -> str:
    """What a reader sees: the body without style/script blocks, tags and base64 data."""
    body = page[page.find("<body") :]
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", body, flags=re.S | re.I)
    body = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+", " ", body)
    return re.sub(r"<[^>]+>", " ", body)


def assert_shareable(page: str, *extra_forbidden: str | os.PathLike) -> None:
    """No project path, home, user or host name, and no temp path leaks into a page."""
    text = visible_text(page)
    for p in (str(REPO), str(REPO.parent), *map(str, extra_forbidden)):
        assert p not in page, f"absolute path {p!r} in the page"
    home = str(Path.home())
    if home not in ("/", ""):
        assert home + "/" not in page and not re.search(re.escape(home) + r"\b", text), "home folder in page"
    user, host = getpass.getuser(), socket.gethostname()
    assert not re.search(rf"[/@\\]{re.escape(user)}(?![\w-])|(?<![\w-]){re.escape(user)}@", page), "user name"
    if user not in ("root", "user", "runner", "jovyan", "ubuntu", "admin"):
        assert not re.search(rf"(?<![\w-]){re.escape(user)}(?![\w-])", text), "user name in text"
    assert not re.search(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", text), "host name in text"
    assert not re.search(r"(?<![\w.:/])/(home|root|tmp|work|Users|var|mnt)/", text), "absolute path in text"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    nbs = write_standin_notebooks(base / "notebooks")
    data = base / "glomeruli-pas"
    manifest = build_tiny_dataset(data, n_slides=4, per_slide=2, size=8)
    (data / "LICENSE").write_text(
        "glomeruli-pas data license: CC BY-NC-SA 4.0\n"
        "https://creativecommons.org/licenses/by-nc-sa/4.0/\n\nfull text ...\n"
    )
    (data / "CITATION.txt").write_text("Bueno G. et al. (2020) Data in Brief 29:105314\nWeishaupt H. et al. (2025)\n")
    run = run_pipeline(
        write_profile(base / "p.yaml"),
        data=str(manifest),
        notebooks_dir=nbs,
        runs_root=base / "runs",
        reports_root=base / "reports",
        project_root=REPO,
        render=False,
        log=lambda m: None,
    )
    plain = render_run(run, reports_root=base / "reports", project_root=REPO, log=lambda m: None).parent
    # a pseudonymised report comes from a run made with --pseudonymise (its notebooks only ever see pseudonyms)
    run_p = run_pipeline(
        write_profile(base / "p.yaml"),
        data=str(manifest),
        notebooks_dir=nbs,
        runs_root=base / "runs-p",
        reports_root=base / "reports",
        project_root=REPO,
        render=False,
        pseudonymise=True,
        log=lambda m: None,
    )
    pseudo = render_run(
        run_p, reports_root=base / "reports", project_root=REPO, pseudonymise=True, log=lambda m: None
    ).parent
    return {"base": base, "run": run, "run_p": run_p, "plain": plain, "pseudo": pseudo}


def test_a_real_identifier_run_is_never_rendered_as_pseudonymised(rendered):
    """Text scrubbing cannot remove identifiers drawn as pixels: rendering a real-identifier run with
    pseudonymise=True is refused, also when render_run is called directly (not only through `glomlib run`)."""
    from glomlib.publish.pipeline import PipelineError

    with pytest.raises(PipelineError, match="real identifiers"):
        render_run(
            rendered["run"],
            reports_root=rendered["base"] / "reports-x",
            project_root=REPO,
            pseudonymise=True,
            log=lambda m: None,
        )
    assert not (rendered["base"] / "reports-x").exists() or not any((rendered["base"] / "reports-x").iterdir())


def _pages(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.html"))}


def test_one_page_per_notebook_linked_from_index(rendered):
    pages = _pages(rendered["plain"])
    expected = {
        "01_data_audit.html",
        "02_simclr_pretrain.html",
        "03_finetune-glom.html",
        "03_finetune-scratch.html",
        "04_baseline_comparison.html",
        "05_error_analysis.html",
        "index.html",
    }
    assert set(pages) == expected
    index = pages["index.html"]
    for name in expected - {"index.html"}:
        assert f'href="{name}"' in index
    assert "Data audit: what is in the data?" in index  # readable title from the notebook's heading
    assert "Fine-tuning: init scratch" in index
    assert "0.900 ± 0.010" in index  # headline metrics (no CI: the stand-in runs save no predictions)
    assert "numpy" in index and "Data fingerprint" in index and "git commit" in index  # versions, provenance
    for name, page in pages.items():
        if name != "index.html":
            assert 'href="index.html"' in page


def test_no_code_no_prompts_no_stderr(rendered):
    for name, page in _pages(rendered["plain"]).items():
        text = visible_text(page)
        for code in ("import json", "json.loads", "pathlib.Path(out)", "plt.subplots", "raise ValueError"):
            assert code not in text, f"code {code!r} shown in {name}"
        assert not re.search(r"In\s*\[\d*\]", text) and not re.search(r"Out\[\d+\]", text), name
        assert "something noisy" not in page, "stderr output must be stripped"
        assert "Traceback" not in text
        assert not re.search(r'class="[^"]*(input_area|jp-InputArea|highlight)', page), name


def test_images_are_embedded_and_no_external_resources(rendered):
    pages = _pages(rendered["plain"])
    imgs = re.findall(r"<img\b[^>]*\bsrc=[\"']([^\"']+)", pages["01_data_audit.html"])
    assert imgs, "the audit page has a figure"
    for page in pages.values():
        for src in re.findall(r"<img\b[^>]*\bsrc=[\"']([^\"']+)", page):
            assert src.startswith("data:image/"), src[:80]
        assert not re.search(r"<script[^>]*\bsrc=\"https?://", page), "external script"
        assert not re.search(r"<link[^>]*\bhref=\"https?://", page), "external stylesheet"


def test_no_absolute_paths_user_or_host(rendered):
    for folder in (rendered["plain"], rendered["pseudo"]):
        for _name, page in _pages(folder).items():
            assert_shareable(page, rendered["base"], "/tmp/")


def test_license_and_citation_on_every_page(rendered):
    for page in _pages(rendered["plain"]).values():
        assert "CC BY-NC-SA 4.0" in page and "Data in Brief 29:105314" in page


def test_pseudonymise_replaces_slide_ids_stably(rendered):
    plain = "".join(visible_text(p) for p in _pages(rendered["plain"]).values())
    assert "S00" in plain  # the identifiers are there without the switch
    key = pseudonym_key(REPO)
    pseudo_pages = _pages(rendered["pseudo"])
    text = "".join(visible_text(p) for p in pseudo_pages.values())
    for s in SLIDES:
        assert not re.search(rf"(?<![A-Za-z0-9]){s}(?![A-Za-z0-9])", text), f"{s} left in the shared report"
    assert pseudonym("S00", key) in text
    assert re.fullmatch(r"slide-[0-9a-f]{6}", pseudonym("S00", key))
    assert "pseudonyms" in pseudo_pages["index.html"]  # says what is covered
    # stable: a second rendering gives the same pseudonyms
    again = render_run(
        rendered["run_p"],
        reports_root=rendered["base"] / "reports2",
        project_root=REPO,
        pseudonymise=True,
        log=lambda m: None,
    ).parent
    assert visible_text((again / "01_data_audit.html").read_text()).count(pseudonym("S00", key)) == visible_text(
        pseudo_pages["01_data_audit.html"]
    ).count(pseudonym("S00", key))


def test_scrubber_rules(tmp_path):
    s = Scrubber(REPO, [tmp_path / "data"], slides=["SAS_1", "SAS_12"], key=b"k")
    assert s(f"{REPO}/runs/x/y.png") == "runs/x/y.png"
    assert s(f"{tmp_path}/data/img/a.png") == "[data]/img/a.png"
    assert s("/home/alice/secret/file.csv") == "[…]/file.csv"
    assert s(f"{Path.home()}/x") in ("~/x", "[…]/x")
    t = s("SAS_12-3.png and SAS_1 but not SAS_123")
    assert "SAS_12" not in t.replace("SAS_123", "") and pseudonym("SAS_12", b"k") in t
    assert pseudonym("SAS_1", b"k") in t and "SAS_123" in t
    assert s("see https://doi.org/10.1016/j.x and 10/20") == "see https://doi.org/10.1016/j.x and 10/20"


def test_dataset_license_fallbacks(tmp_path):
    folder = tmp_path / "glomeruli-pas"
    folder.mkdir()
    (folder / "manifest.csv").write_text("path,label\n")
    info = dataset_license(folder / "manifest.csv")  # known dataset, no files: built-in text
    assert info["license"] == GLOMERULI_PAS_LICENSE and "10.1016/j.compbiomed.2025.110719" in info["citation"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "manifest.csv").write_text("path,label\n")
    assert dataset_license(other / "manifest.csv")["license"].startswith("unknown")


def test_scrubber_leaves_embedded_images_alone():
    s = Scrubber(REPO, slides=["S00"], key=b"k")
    uri = "data:image/png;base64,AAAA+/tmp/xyzS00+/S00/home/a/b=="
    html_out = f'<p>S00</p><img src="{uri}"><p>/tmp/a/b.png</p>'
    got = s(html_out)
    assert uri in got and pseudonym("S00", b"k") in got and "[…]/b.png" in got


def test_scrubber_replaces_whole_path_components_only():
    s = Scrubber(REPO)
    assert s(f"{REPO}2/x") == f"../{REPO.name}2/x"  # a sibling folder, not the project
    assert s(f"{REPO}") == "." and s(f"({REPO})") == "(.)"
    assert s(f"{REPO.parent}/shared/data") == "../shared/data"


def test_one_zip_to_email_and_lean_pages(rendered):
    """reports/<run>.zip holds every page (one file to attach); pages carry no JupyterLab CSS and stay small."""
    import zipfile

    folder = rendered["plain"]
    with zipfile.ZipFile(folder.parent / f"{folder.name}.zip") as z:
        names = set(z.namelist())
    assert names == {f"{folder.name}/{n}" for n in _pages(folder)}
    for name, page in _pages(folder).items():
        assert "--jp-" not in page and "jp-Cell" not in page, name
        assert len(page.encode()) < 150_000, (name, len(page))
        assert "max-width:100%" in page.replace(" ", ""), name  # figures and tables never overflow
