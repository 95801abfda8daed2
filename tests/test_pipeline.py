"""glomlib.publish.pipeline: step chaining, resume, failures, run folders; the smoke profile on real data.

Most tests use tiny stand-in notebooks (written here with nbformat) that follow the pipeline contract
(parameters ``data``/``out``/``init``/``ssl_checkpoint``/``runs``/``run``) without training anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from glomlib.core.config import ConfigError
from glomlib.core.io import ResumeError
from glomlib.publish.pipeline import (
    PipelineError,
    load_run_profile,
    plan_steps,
    run_pipeline,
    select_steps,
    step_parameters,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import build_tiny_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ stand-in notebooks
def _nb(title: str, params: str, body: list[str], narrative: str = "") -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(f"# {title}\n\n{narrative or 'A stand-in notebook for the pipeline tests.'}"),
        new_code_cell(params, metadata={"tags": ["parameters"]}),
    ]
    cells += [new_code_cell(src) for src in body]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


_COMMON = 'data = "data/glomeruli-pas/manifest.csv"  # manifest\nout = "auto"  # output folder\n'
_MKOUT = (
    "import json, os, sys, pathlib\nout = pathlib.Path(out)\n"
    "assert not (out.exists() and any(out.iterdir())), f'{out} exists and is not empty'\n"
    "out.mkdir(parents=True, exist_ok=True)"
)
_FAIL = "if fail:\n    raise ValueError(f'stand-in failure requested in {pathlib.Path(out).name}')"


def write_standin_notebooks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nbs = {
        "01_data_audit": _nb(
            "Data audit: what is in the data?",
            _COMMON + 'positive_label = "M1"  # positive label\nimage_size = 16  # px\nfail = False  # fail on purpose',
            [
                _MKOUT,
                _FAIL,
                "import pandas as pd\ndf = pd.read_csv(data)\nprint('manifest:', os.path.abspath(data))\n"
                "print('warning: something noisy', file=sys.stderr)\n(out / 'audit.json').write_text(json.dumps({'n': len(df)}))",
                "df.groupby('slide').size().rename('images').to_frame()",
                "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n%matplotlib inline\n"
                "fig, ax = plt.subplots(figsize=(3, 2))\nax.bar(['a', 'b'], [1, 2])\nax.set_title('images per label')\n"
                "(out / 'figures').mkdir()\nfig.savefig(out / 'figures' / 'counts.png')\nplt.show()",
                "from IPython.display import Markdown\nMarkdown(f'The first slide is **{df.slide.iloc[0]}**; '\n"
                "         f'home is {os.path.expanduser(\"~\")}.')",
            ],
            "Counts of images per slide and label.",
        ),
        "02_simclr_pretrain": _nb(
            "Self-supervised pretraining",
            _COMMON + "epochs = 1  # epochs\nimage_size = 16  # px\nfail = False  # fail on purpose",
            [_MKOUT, _FAIL, "(out / 'encoder.safetensors').write_bytes(b'x' * epochs)\nprint('encoder written')"],
        ),
        "03_finetune": _nb(
            "Fine-tuning",
            _COMMON + 'init = "glom"  # glom | imagenet | scratch\nssl_checkpoint = ""  # encoder from 02\n'
            "epochs = 1  # epochs\nlr = 0.001  # learning rate\nfail = False  # fail on purpose",
            [
                _MKOUT,
                _FAIL,
                "if init == 'glom':\n    assert pathlib.Path(ssl_checkpoint).is_file(), ssl_checkpoint",
                "auc = {'glom': 0.9, 'imagenet': 0.8, 'scratch': 0.6}.get(init, 0.5)\n"
                "(out / 'metrics.json').write_text(json.dumps({'init': init, 'summary': {'auc': {'mean': auc, 'std': 0.01}},"
                " 'per_fold': []}))\n(out / 'model.safetensors').write_bytes(b'm')\n"
                "if init == 'glom':\n    (out / 'bundle.safetensors').write_bytes(b'b')\nprint(init, auc, lr)",
            ],
        ),
        "04_baseline_comparison": _nb(
            "Comparison",
            _COMMON + 'runs = ""  # folder of fine-tune runs\nfail = False  # fail on purpose',
            [
                _MKOUT,
                _FAIL,
                "rows = {p.parent.name: json.loads(p.read_text())['summary']['auc']['mean']\n"
                "        for p in sorted(pathlib.Path(runs).glob('*/metrics.json'))}\n"
                "(out / 'table.json').write_text(json.dumps(rows))\nrows",
            ],
        ),
        "05_error_analysis": _nb(
            "Error analysis",
            _COMMON + 'run = ""  # one fine-tune run\nfail = False  # fail on purpose',
            [
                _MKOUT,
                _FAIL,
                "m = json.loads((pathlib.Path(run) / 'metrics.json').read_text())\nprint('analysing', m['init'])",
            ],
        ),
    }
    for stem, nb in nbs.items():
        nbformat.write(nb, str(folder / f"{stem}.ipynb"))
    return folder


def write_profile(path: Path, **over) -> Path:
    import yaml

    prof = {
        "description": "stand-in",
        "inits": ["glom", "scratch"],
        "common": {"image_size": 16},
        "steps": {"02_simclr_pretrain": {"epochs": 2}, "03_finetune": {"per_init": {"scratch": {"lr": 0.01}}}},
    }
    prof.update(over)
    path.write_text(yaml.safe_dump(prof))
    return path


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """(notebooks folder, manifest, profile, tmp root) shared by this module's tests."""
    base = tmp_path_factory.mktemp("standin")
    nbs = write_standin_notebooks(base / "notebooks")
    manifest = build_tiny_dataset(base / "data", n_slides=4, per_slide=2, size=8)
    profile = write_profile(base / "standin.yaml")
    return nbs, manifest, profile, base


def _run(standin, **kw):
    nbs, manifest, profile, base = standin
    kw.setdefault("render", False)
    kw.setdefault("runs_root", base / "runs")
    kw.setdefault("reports_root", base / "reports")
    return run_pipeline(
        kw.pop("profile", profile), data=str(manifest), notebooks_dir=nbs, project_root=REPO, log=lambda m: None, **kw
    )


@pytest.fixture(scope="module")
def completed_run(standin):
    return _run(standin, render=True)


# ------------------------------------------------------------------------------------ tests
def test_steps_chain_into_one_run_folder(completed_run):
    run = completed_run
    assert (run / "audit" / "audit.json").is_file()
    assert (run / "ssl" / "encoder.safetensors").read_bytes() == b"xx"  # steps.02 epochs=2 arrived
    for init in ("glom", "scratch"):
        assert (run / "finetune" / init / "metrics.json").is_file()
        assert (run / "notebooks" / f"03_finetune-{init}.ipynb").is_file()
    assert json.loads((run / "comparison" / "table.json").read_text()) == {"glom": 0.9, "scratch": 0.6}
    pj = json.loads((run / "pipeline.json").read_text())
    assert pj["parameters"]["03_finetune/scratch"]["lr"] == 0.01  # per_init
    assert "lr" not in pj["parameters"]["03_finetune/glom"]
    assert pj["parameters"]["05_error_analysis"]["run"].endswith("finetune/glom")
    assert pj["parameters"]["01_data_audit"]["image_size"] == 16  # common -> declared only
    assert "image_size" not in pj["parameters"]["04_baseline_comparison"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metrics"]["glom"]["auc"]["mean"] == 0.9
    assert set(summary["models"]) == {"glom", "scratch"}
    assert summary["bundles"] == {"glom": str(Path(pj["parameters"]["03_finetune/glom"]["out"]) / "bundle.safetensors")}
    assert all(s == "completed" for s in summary["status"].values())
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["data_fingerprint"] and "versions" in prov and "git_commit" in prov
    assert (run / "profile.yaml").is_file()
    state = json.loads((run / "state.json").read_text())
    assert all(s["status"] == "completed" for s in state["steps"].values())


def test_resume_skips_completed_steps(standin, completed_run):
    before = (completed_run / "notebooks" / "01_data_audit.ipynb").stat().st_mtime_ns
    lines: list[str] = []
    nbs, manifest, profile, base = standin
    run_pipeline(resume=completed_run, project_root=REPO, render=False, log=lines.append, reports_root=base / "reports")
    assert (completed_run / "notebooks" / "01_data_audit.ipynb").stat().st_mtime_ns == before
    assert sum("skipped" in ln for ln in lines) == 6


def test_failure_names_notebook_and_error_keeps_partial_notebook_then_resume(standin, tmp_path):
    nbs, manifest, profile, base = standin
    bad = write_profile(tmp_path / "bad.yaml", steps={"04_baseline_comparison": {"fail": True}})
    with pytest.raises(PipelineError) as ei:
        _run(standin, profile=bad)
    msg = str(ei.value)
    assert "04_baseline_comparison.ipynb" in msg and "ValueError" in msg and "stand-in failure" in msg
    run = Path(next(ln.split()[-1] for ln in msg.splitlines() if "kept at" in ln).rstrip("."))
    run = (REPO / run) if not run.is_absolute() else run
    assert run.is_file()
    partial = nbformat.read(str(run), as_version=4)
    assert partial.metadata["papermill"]["exception"]
    run_dir = run.parent.parent
    state = json.loads((run_dir / "state.json").read_text())["steps"]
    assert state["04_baseline_comparison"]["status"] == "failed"
    assert state["05_error_analysis"]["status"] == "pending"
    assert not (run_dir / "errors").exists()

    # "fix" the profile inside the run (as a user would fix the notebook) and resume: only 04 and 05 run
    pj = json.loads((run_dir / "pipeline.json").read_text())
    pj["parameters"]["04_baseline_comparison"]["fail"] = False
    (run_dir / "pipeline.json").write_text(json.dumps(pj))
    # a changed parameter is refused unless accepted on purpose (identity.json records the change)
    with pytest.raises(ResumeError, match=r"parameters\.04_baseline_comparison\.fail: true -> false"):
        run_pipeline(resume=run_dir, project_root=REPO, render=False, log=lambda m: None)
    lines: list[str] = []
    run_pipeline(resume=run_dir, project_root=REPO, render=False, log=lines.append, accept_changes=True)
    assert json.loads((run_dir / "identity.json").read_text())["accepted_changes"]
    ran = [ln for ln in lines if ln.startswith("[")]
    assert len(ran) == 2 and "04_baseline_comparison" in ran[0] and "05_error_analysis" in ran[1]
    # the failed attempt is kept beside the new one
    assert (run_dir / "notebooks" / "04_baseline_comparison.ipynb.failed-1").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["status"]["05_error_analysis"] == "completed"


def test_cli_failure_exit_code_and_message(standin, tmp_path, capsys):
    from glomlib.cli import main

    nbs, manifest, profile, base = standin
    bad = write_profile(tmp_path / "bad.yaml", steps={"01_data_audit": {"fail": True}})
    rc = main(
        [
            "run",
            "--profile",
            str(bad),
            "--data",
            str(manifest),
            "--notebooks",
            str(nbs),
            "--runs-root",
            str(tmp_path / "runs"),
            "--no-report",
        ]
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert "01_data_audit.ipynb" in err and "stand-in failure" in err and "--resume" in err


def test_only_reruns_a_step_and_keeps_the_earlier_output(standin, tmp_path):
    nbs, manifest, profile, base = standin
    run = run_pipeline(
        profile,
        data=str(manifest),
        notebooks_dir=nbs,
        runs_root=tmp_path / "runs",
        project_root=REPO,
        render=False,
        only=["01", "ssl"],
        log=lambda m: None,
    )
    state = json.loads((run / "state.json").read_text())["steps"]
    assert state["01_data_audit"]["status"] == state["02_simclr_pretrain"]["status"] == "completed"
    assert state["03_finetune/glom"]["status"] == "pending"
    run_pipeline(resume=run, only=["02_simclr_pretrain"], project_root=REPO, render=False, log=lambda m: None)
    assert (run / "ssl.previous-1" / "encoder.safetensors").is_file()  # nothing overwritten
    assert (run / "notebooks" / "02_simclr_pretrain.ipynb.previous-1").is_file()
    assert (run / "ssl" / "encoder.safetensors").is_file()


def test_run_folders_are_never_reused(standin, tmp_path):
    nbs, manifest, profile, base = standin
    kw = dict(
        data=str(manifest),
        notebooks_dir=nbs,
        runs_root=tmp_path / "runs",
        project_root=REPO,
        render=False,
        only=["01"],
        log=lambda m: None,
    )
    a = run_pipeline(profile, **kw)
    b = run_pipeline(profile, **kw)
    assert a != b and a.parent == b.parent
    assert (a / "audit" / "audit.json").is_file() and (b / "audit" / "audit.json").is_file()


def test_profile_errors_name_key_and_notebook(standin, tmp_path):
    nbs, manifest, profile, base = standin
    bad = write_profile(tmp_path / "typo.yaml", steps={"03_finetune": {"epocs": 3}})
    with pytest.raises(ConfigError, match=r"steps\.03_finetune\.epocs.*03_finetune\.ipynb"):
        _run(standin, profile=bad, runs_root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing created
    bad = write_profile(tmp_path / "common.yaml", common={"imagesize": 3})
    with pytest.raises(ConfigError, match="common.imagesize"):
        _run(standin, profile=bad)
    bad = write_profile(tmp_path / "owned.yaml", steps={"05_error_analysis": {"run": "x"}})
    with pytest.raises(ConfigError, match="set by the pipeline"):
        _run(standin, profile=bad)
    bad = write_profile(tmp_path / "step.yaml", steps={"06_unknown": {}})
    with pytest.raises(ConfigError, match="06_unknown"):
        _run(standin, profile=bad)
    with pytest.raises(ConfigError, match="No profile named"):
        load_run_profile("no-such-profile")
    with pytest.raises(ConfigError, match="--only 'xyz'"):
        select_steps(plan_steps(load_run_profile(profile)), ["xyz"])


def test_missing_pipeline_parameter_is_reported(tmp_path):
    prof = {"name": "p", "inits": ["glom"], "common": {}, "steps": {}}
    declared = {
        s: {"data": 1, "out": 1}
        for s in ("01_data_audit", "02_simclr_pretrain", "04_baseline_comparison", "05_error_analysis")
    }
    declared["03_finetune"] = {"data": 1, "out": 1, "init": 1}
    declared["04_baseline_comparison"]["runs"] = 1
    declared["05_error_analysis"]["run"] = 1
    with pytest.raises(ConfigError, match=r"03_finetune\.ipynb does not declare.*ssl_checkpoint"):
        step_parameters(prof, declared, "r", "d")


def test_external_step_gets_the_bundle_unless_no_final_model_is_trained():
    """06 gets <run>/finetune/<05's init>/bundle.safetensors (fold models + final model, the shipped model);
    model.safetensors only when 03 trains no final model (so no bundle), whether set for every init or one."""
    declared = {s: {"data": 1, "out": 1} for s in ("01_data_audit", "02_simclr_pretrain", "05_error_analysis")}
    declared["03_finetune"] = {"data": 1, "out": 1, "init": 1, "ssl_checkpoint": 1, "final_model": True}
    declared["04_baseline_comparison"] = {"data": 1, "out": 1, "runs": 1}
    declared["05_error_analysis"]["run"] = 1
    declared["06_external_validation"] = {"data": 1, "out": 1, "model": 1, "manifest": 1}
    prof = {"name": "p", "inits": ["imagenet", "glom"], "common": {}, "steps": {}, "external": "ext.csv"}
    model = lambda p: step_parameters(p, declared, "runs/r", "d.csv")["06_external_validation"]["model"]  # noqa: E731
    assert model(prof) == "runs/r/finetune/glom/bundle.safetensors"
    off = {**prof, "steps": {"03_finetune": {"final_model": "false"}}}
    assert model(off) == "runs/r/finetune/glom/model.safetensors"
    one = {**prof, "steps": {"03_finetune": {"per_init": {"glom": {"final_model": False}}}}}
    assert model(one) == "runs/r/finetune/glom/model.safetensors"
    other = {**prof, "steps": {"03_finetune": {"per_init": {"imagenet": {"final_model": False}}}}}
    assert model(other) == "runs/r/finetune/glom/bundle.safetensors"


def test_shipped_profiles_load():
    from glomlib.core.config import list_profiles

    names = list_profiles()
    for required in ("quick-cpu", "full-cpu", "paper-gpu", "smoke"):
        assert required in names
    for n in names:
        prof = load_run_profile(n)
        assert prof["inits"] and prof["description"]


def test_shipped_profiles_match_the_real_notebooks():
    """Every key a shipped profile sets is a parameter of the notebook it is given to."""
    from glomlib.core.config import list_profiles
    from glomlib.publish.pipeline import STEMS, notebook_parameters

    nb_dir = REPO / "notebooks"
    if not all((nb_dir / f"{s}.ipynb").is_file() for s in STEMS):
        pytest.skip("not all notebooks 01..05 exist yet")
    declared = {s: notebook_parameters(nb_dir / f"{s}.ipynb") for s in STEMS}
    for n in list_profiles():
        step_parameters(load_run_profile(n), declared, "runs/x", "data/m.csv")


@pytest.mark.realdata
@pytest.mark.slow
def test_smoke_profile_end_to_end_on_real_data(smoke_report):
    """The smoke profile runs 01 -> 05 on a small slice of the real data and renders the reports (the session's
    one smoke run, see conftest; tests/test_report_reader.py and tests/test_browser.py read the same report)."""
    run, base = smoke_report["run"], smoke_report["base"]
    summary = json.loads((run / "summary.json").read_text())
    assert all(s == "completed" for s in summary["status"].values()), summary["status"]
    assert summary["metrics"] and summary["models"] and set(summary["bundles"]) == set(summary["models"])
    index = smoke_report["report"] / "index.html"
    assert index.is_file()
    assert len(list(index.parent.glob("*.html"))) == 1 + len(plan_steps(load_run_profile("smoke")))
    from test_report import assert_shareable

    for page in index.parent.glob("*.html"):
        assert_shareable(page.read_text(encoding="utf-8"), base)


def test_pseudonymise_new_run_gives_notebooks_pseudonymised_slides(standin, tmp_path):
    """With --pseudonymise on a new run, the notebooks themselves only ever see pseudonyms (so tables and
    figures made from the slide column carry them), and the report goes to reports/<run>-pseudonymised/."""
    nbs, manifest, profile, base = standin
    run = run_pipeline(
        profile,
        data=str(manifest),
        notebooks_dir=nbs,
        runs_root=tmp_path / "runs",
        reports_root=tmp_path / "reports",
        project_root=REPO,
        only=["01"],
        pseudonymise=True,
        log=lambda m: None,
    )
    executed = (run / "notebooks" / "01_data_audit.ipynb").read_text()
    assert "slide-" in executed
    assert not any(f'"{s}' in executed or f">{s}<" in executed for s in ("S00", "S01", "S02", "S03"))
    assert (tmp_path / "reports" / f"{run.name}-pseudonymised" / "index.html").is_file()


def test_external_manifest_runs_notebook_06_with_pseudonymised_slides(standin, tmp_path):
    """A profile naming ``external: MANIFEST`` adds 06_external_validation, given the 05 init's model and that
    manifest (pseudonymised with --pseudonymise); without it, 06 is neither planned nor required."""
    import shutil

    nbs, manifest, profile, base = standin
    assert "06_external_validation" not in [s.stem for s in plan_steps(load_run_profile(profile))]
    folder = tmp_path / "notebooks"
    shutil.copytree(nbs, folder)
    nb6 = _nb(
        "External validation",
        _COMMON + 'model = "latest"  # model file\nmanifest = "auto"  # labelled manifest',
        [
            _MKOUT,
            "import pandas as pd\nseen = sorted(set(pd.read_csv(manifest)['slide']))\n"
            "(out / 'seen.json').write_text(json.dumps({'model': model, 'slides': seen}))\nprint(seen)",
        ],
    )
    nbformat.write(nb6, str(folder / "06_external_validation.ipynb"))
    ext = build_tiny_dataset(tmp_path / "ext", n_slides=2, per_slide=2, size=8)
    prof = write_profile(tmp_path / "ext.yaml", external=str(ext))
    assert plan_steps(load_run_profile(prof))[-1].stem == "06_external_validation"
    run = run_pipeline(
        prof,
        data=str(manifest),
        notebooks_dir=folder,
        runs_root=tmp_path / "runs",
        reports_root=tmp_path / "reports",
        project_root=REPO,
        pseudonymise=True,
        render=True,
        log=lambda m: None,
    )
    seen = json.loads((run / "external" / "seen.json").read_text())
    assert seen["model"].endswith("finetune/glom/bundle.safetensors")  # the shipped model: the bundle
    assert seen["slides"] and all(s.startswith("slide-") for s in seen["slides"])
    assert (tmp_path / "reports" / f"{run.name}-pseudonymised" / "06_external_validation.html").is_file()
    missing = write_profile(tmp_path / "bad.yaml", external=str(tmp_path / "nope.csv"))
    with pytest.raises(PipelineError, match="external manifest"):
        run_pipeline(
            missing,
            data=str(manifest),
            notebooks_dir=folder,
            runs_root=tmp_path / "runs2",
            project_root=REPO,
            render=False,
            log=lambda m: None,
        )
