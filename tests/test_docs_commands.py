"""Every command that README.md, data/README.md and reports/README.md show is parsed by the real command line:
each `glomlib ...` (and `torchrun ... -m glomlib.train.simclr ...`) line builds its config with the documented
options, and each `papermill ... -p name value` names parameters of that notebook's config. Commands are not run
here (most need a trained model); the tests of each command run them on data."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from glomlib import cli
from glomlib.core.config import parse_args

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "data/README.md", "reports/README.md"]
NOTEBOOK_CONFIGS = {
    "01_data_audit": "glomlib.review.audit:AuditConfig",
    "02_simclr_pretrain": "glomlib.train.simclr:SSLConfig",
    "03_finetune": "glomlib.train.finetune:FinetuneConfig",
    "04_baseline_comparison": "glomlib.evaluate.compare:CompareConfig",
    "05_error_analysis": "glomlib.review.explain:ExplainConfig",
    "06_external_validation": "glomlib.evaluate.external:ExternalValidationConfig",
    "07_label_review": "glomlib.review.labels:ReviewConfig",
}


def _blocks(text: str) -> list[list[str]]:
    """The fenced code blocks of a Markdown text, as logical lines (backslash continuations joined)."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        out.append(block.replace("\\\n", " ").splitlines())
    return out


def _expand(line: str, variables: dict[str, str]) -> list[str]:
    for _ in range(3):  # variables defined from other variables
        for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(f"${{{name}}}", value).replace(f"${name}", value)
    line = re.sub(r"<[^>]+>", "X", line)  # placeholders such as <run> or <ssl run>
    return shlex.split(line, comments=True)


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in _blocks((ROOT / doc).read_text()):
            variables: dict[str, str] = {}
            for line in block:
                line = line.strip()
                m = re.match(r"^([A-Z_]+)=(['\"])(.*)\2\s*(#.*)?$", line)
                if m:
                    variables[m.group(1)] = m.group(3)
                    continue
                loop = re.match(r"^for ([A-Z_]+) in (\S+)", line)
                if loop:  # a shell loop: its variable takes the first value
                    variables[loop.group(1)] = loop.group(2)
                    continue
                words = _expand(line, variables) if re.match(r"^(glomlib|torchrun|papermill) ", line) else []
                if words:
                    found.append((f"{doc}: {line[:70]}", words))
    return found


COMMANDS = documented_commands()


def test_docs_show_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("where,words", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, words):
    if words[0] == "papermill":
        stem = Path(words[1]).stem
        module, name = NOTEBOOK_CONFIGS[stem].split(":")
        cls = getattr(__import__(module, fromlist=[name]), name)
        names = [words[i + 1] for i, w in enumerate(words) if w == "-p"]
        assert set(names) <= set(cls.field_names()), f"{where}: unknown notebook parameter(s)"
        return
    if words[0] == "torchrun":
        argv, prog, spec = words[words.index("glomlib.train.simclr") + 1 :], "torchrun", cli.COMMANDS["ssl"][1]
    else:
        found = cli._command(words[1:])
        assert found is not None, f"{where}: not a glomlib command"
        prog, spec, argv = found
    cls, _ = cli._load(spec)
    parse_args(cls, argv, prog)  # a documented option that does not exist or a bad value exits 2 here
