"""Live progress: steps append lines to $GLOMLIB_PROGRESS_FILE, `glomlib run` tails them to the terminal while
papermill executes, and neither the lines nor the kernel's TCP warning reach the executed notebook."""

from __future__ import annotations

import json

import nbformat

from glomlib.core import progress
from glomlib.publish.pipeline import execute as pipeline


def test_report_is_silent_without_the_env(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.report("epoch 1/2")
    assert capsys.readouterr() == ("", "")
    f = tmp_path / "p.log"
    monkeypatch.setenv(progress.ENV, str(f))
    progress.report("epoch 1/2")
    progress.report("epoch 2/2")
    lines = f.read_text().splitlines()
    assert [ln.split(" ", 1)[1] for ln in lines] == ["epoch 1/2", "epoch 2/2"]


def test_time_left():
    assert progress.time_left(0, 10, 5.0) == ""
    assert progress.time_left(2, 10, 20.0) == "~80 s left"
    assert progress.time_left(1, 10, 500.0) == "~75 min left"
    assert progress.time_left(1, 10, 3600.0) == "~9.0 h left"
    assert progress.time_left(10, 10, 5.0) == "done"


def test_tail_emits_complete_lines_and_the_rest_on_stop(tmp_path):
    f = tmp_path / "p.log"
    got: list[str] = []
    t = progress.Tail(f, got.append, interval_s=0.01).start()  # the file does not exist yet
    with open(f, "a") as h:
        h.write("one\ntw")
    import time

    time.sleep(0.2)
    assert got == ["one"]  # 'tw' waits for its newline
    with open(f, "a") as h:
        h.write("o\nthree")
    t.stop()
    assert got == ["one", "two", "three"]


def test_pipeline_streams_kernel_progress_and_hides_tcp_warning(tmp_path, capfd):
    import papermill

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from glomlib.core import progress\n"
            "for e in range(3):\n"
            "    progress.report(f'epoch {e + 1}/3')\n"
            "print('cell output')"
        )
    ]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    shown: list[str] = []
    with pipeline._streamed_progress(tmp_path / "progress" / "step.log", shown.append):
        papermill.execute_notebook(
            str(src),
            str(out),
            kernel_name=pipeline.KERNEL,
            progress_bar=False,
            log_output=False,
            extra_arguments=pipeline.KERNEL_ARGS,
        )
    assert [s.strip().split(" ", 1)[1] for s in shown] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    executed = json.dumps(nbformat.read(out, as_version=4)["cells"][0]["outputs"])
    assert "cell output" in executed and "epoch" not in executed
    assert "without encryption" not in capfd.readouterr().err
    assert progress.ENV not in __import__("os").environ
