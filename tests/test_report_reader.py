"""The smoke run's report read the way a reader meets it: every page's visible text, tables, images and size are
scanned for the developer leftovers issue 24 lists (the scanner is tests/report_scan.py); one test per kind of
leftover, each failure naming the page and quoting the snippet. The scanner itself is tested on a page full of
leftovers and on a page of legitimate text that must pass."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_scan import CHECKS, Finding, check_sizes, scan_page, scan_report  # noqa: E402


def _fail_on(findings: list[Finding], check: str) -> None:
    hits = [f for f in findings if f.check == check]
    assert not hits, f"{len(hits)} '{check}' leftover(s) in the report:\n" + "\n".join(map(str, hits))


# ---------------------------------------------------------------- the smoke run's report


@pytest.fixture(scope="module")
def smoke_findings(smoke_report) -> list[Finding]:
    return scan_report(smoke_report["report"], page_mb=2.0, total_mb=6.0)


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("check", CHECKS)
def test_smoke_report_has_no_leftovers(smoke_findings, check):
    """One test per kind of leftover, so a failure says which kind and quotes each occurrence per page."""
    _fail_on(smoke_findings, check)


# ---------------------------------------------------------------- the scanner itself

BAD = """<!DOCTYPE html><html><head><title>x</title><style>.a{}</style><script>var x = {'a': NaN};</script></head><body>
<h2>Data</h2><p>{'glom': 'runs/20261207-x/finetune/glom', 'scratch': None}</p><pre>['.glomlib-claim', 'x']</pre>
<p>output folder: runs/…/audit</p><p>Written: runs/…/audit/flags.csv</p><p>PosixPath('/work/x')</p>
<p>papermill 03_finetune.ipynb out.ipynb -p epochs 1</p><p>FinetuneConfig: 8 setting(s) differ from the defaults</p>
<p>p = 0.0000, delong_p=0.0000, mean 100.188477, NaN, dict_keys(['a'])</p><p>[data]/Patches/x.png</p>
<p>epoch 1/3 train_loss=0.693</p><p>see <code>flags.csv</code> and <code>figures/</code></p>
<pre>subset:
  per_slide_label: 4</pre><pre>{ "stats_size": 64 }</pre><p>We saw 3.0 slides.</p><p>/home/ann/x.csv</p>
<table class="dataframe"><thead><tr><th></th><th>auc</th><th>count</th><th>Images (n)</th></tr>
<tr><th>init</th><th></th><th></th><th></th></tr></thead>
<tbody><tr><th>0</th><td>0.9</td><td>3.0</td><td>1.0</td></tr><tr><th>1</th><td>nan</td><td>2.0</td><td>(med...</td></tr>
</tbody></table>
<img src="data:image/png;base64,iVBORw0KGgo=" alt="No description has been provided for this image">
<img src="data:image/png;base64,iVBORw0KGgo="></body></html>"""

GOOD = """<!DOCTYPE html><html><head><title>x</title><style>td{color:red}</style></head><body>
<nav><a href="index.html">glomlib report</a></nav><h1>Fine-tuning</h1>
<div class="glom-summary"><h3>What this page shows</h3><p>Three runs of the model on 25 slides.</p>
<h3>What to conclude</h3><p>The runs agree: AUC 0.912 (95 % CI 0.871 to 0.950), difference 0.000 (95 % CI -0.012
to 0.014), p &lt; 0.0001; 1.5 % of images; Dr Nanami; see https://doi.org/10.17632/k7nvtgn2x6.3 and
https://creativecommons.org/licenses/by-nc-sa/4.0/. Version 2.3.1, 0.0001 learning rate, tiles at 224 px.</p></div>
<p>The glom encoder ran for 3 epochs; it runs on any machine; the manifest's <code>slide</code> column; <code>glomlib run --profile quick-cpu</code>. Centre = SESCAM holds 129 of the 160 GS.</p>
<table class="glom-t"><caption>Mean 31.8 images per slide.</caption><thead><tr><th>Centre</th><th>Images</th>
<th>Images per slide (mean)</th><th>Share of GS</th><th>Number of slides</th><th>AUC (n = 794)</th></tr></thead>
<tbody><tr><td>SESCAM</td><td class=n>397</td><td class=n>31.8</td><td>1.5 %</td><td>8</td><td>0.912</td></tr>
<tr><td>VUHSK</td><td class=n>7</td><td class=n>2.5</td><td>—</td><td>9</td><td>0.875</td></tr></tbody></table>
<table><tr><th>True class</th><th>Predicted GS</th><th>Predicted nonGS</th></tr><tr><th>GS</th><td>12</td>
<td>3</td></tr><tr><th>nonGS</th><td>4</td><td>61</td></tr></table>
<figure><img src="data:image/png;base64,iVBORw0KGgo=" alt="ROC curves of the three initialisations"></figure>
<p style="display:none">{'hidden': 'runs/x'}</p></body></html>"""


def test_scanner_finds_every_leftover_and_quotes_it():
    found = scan_page("bad.html", BAD, limit=1000)
    text = "\n".join(map(str, found))
    for check in ("python repr", "file path", "missing value", "0.0000", "long decimals", "float count"):
        assert any(f.check == check for f in found), (check, text)
    for check in ("developer output", "index column", "code-name header", "code name", "alt text", "truncated cell"):
        assert any(f.check == check for f in found), (check, text)
    for check in ("summary",):
        assert any(f.check == check for f in found), (check, text)
    assert all(f.page == "bad.html" for f in found)
    for quote in (
        "[{'] glom",
        "[runs/] 20261207-x",
        "[output folder:]",
        "[Written:]",
        "[PosixPath(]",
        "[papermill 03_finetune.ipynb]",
        "[FinetuneConfig: 8 setting]",
        "[0.0000]",
        "[100.188477]",
        "[NaN]",
        "[dict_keys(]",
        "[[data]]",
        "[train_loss=0.693]",
        "[per_slide_label] : 4",
        'code span «flags.csv» under "Data"',
        "code span «figures/»",
        '[{ "stats_size":] 64',
        "[3.0 slides]",
        "[/home/]",
        "'count' holds ['3.0', '2.0']",
        "'Images (n)' holds ['1.0']",
        "header 'auc'",
        "cell 'nan'",
        "'(med...'",
        "first header cell is empty",
        "index-name header row ['init'",
        "a pandas DataFrame shown as is",
        "row labels 0, 1, ... (a pandas index)",
        'image 1 of 2 under "Data" has the default alt text',
        'image 2 of 2 under "Data" has no alt text',
    ):
        assert quote in text, (quote, text)
    assert "var x" not in text  # scripts are not visible text


def test_scanner_passes_legitimate_text():
    """No false alarm on words and numbers a reader should see: "runs" as a word, p < 0.0001, 0.000 inside a CI,
    URLs, mean counts, shares, a confusion matrix with row labels, hidden elements."""
    assert scan_page("good.html", GOOD) == []


def test_sizes_are_checked(tmp_path):
    (tmp_path / "a.html").write_text("<style>" + "x" * 200_000 + "</style>" + "y" * 3_000_000)
    (tmp_path / "b.html").write_text("z" * 100)
    found = {str(f) for f in check_sizes(tmp_path, page_mb=3.0, total_mb=3.0, css_kb=150)}
    assert found == {
        "a.html: page size: 3.1 MB (at most 3 MB)",
        "a.html: page size: 195 KB of style sheets (at most 150 KB)",
        f"{tmp_path.name}: page size: report 3.1 MB (at most 3 MB)",
    }
