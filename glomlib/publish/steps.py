"""The numbered notebooks as pipeline steps: which notebook writes which sub-folder of a run."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glomlib.core.paths import project_root


class PipelineError(RuntimeError):
    """The run cannot go on; the message names the notebook/step/parameter and what to do."""

    exit_code = 6  # glomlib.cli's exit-code table


def refuse_real_identifiers(run_name: str, definition: dict[str, Any]) -> None:
    """A pseudonymised report is made only from a run whose notebooks saw pseudonyms (``glomlib run
    --pseudonymise``): figures of a real-identifier run draw slide IDs and file names as pixels."""
    if not definition.get("pseudonymised_data"):
        raise PipelineError(
            f"{run_name} was run on the real identifiers: its figures draw slide IDs and file names as pixels "
            "(audit galleries, error analysis), which no text scrubbing can remove, so a pseudonymised report cannot "
            "be made from it. Start a new run with --pseudonymise (`glomlib run --pseudonymise`: the notebooks then "
            "only ever see pseudonyms)."
        )


# notebook stem -> output sub-folder of the run
STEP_TABLE: tuple[tuple[str, str], ...] = (
    ("01_data_audit", "audit"),
    ("02_simclr_pretrain", "ssl"),
    ("03_finetune", "finetune"),
    ("04_baseline_comparison", "comparison"),
    ("05_error_analysis", "errors"),
    ("06_external_validation", "external"),  # only when the profile names an external manifest (external: PATH)
)
STEMS = tuple(s for s, _ in STEP_TABLE)
# parameters the pipeline sets itself; a profile may not set them
PIPELINE_PARAMS = {
    "01_data_audit": ("data", "out"),
    "02_simclr_pretrain": ("data", "out"),
    "03_finetune": ("data", "out", "init", "ssl_checkpoint"),
    "04_baseline_comparison": ("data", "out", "runs"),
    "05_error_analysis": ("data", "out", "run"),
    "06_external_validation": ("data", "out", "model", "manifest"),
}
# steps that run only when the profile asks for them (their notebook may be absent otherwise)
OPTIONAL_STEMS = ("06_external_validation",)
# parameters the pipeline also sets when a notebook declares them (a profile may not set them either)
OPTIONAL_PIPELINE_PARAMS = {"04_baseline_comparison": ("inits", "ssl_checkpoint")}
PROFILE_KEYS = {"name", "description", "inits", "subset", "common", "steps", "external"}
SUBSET_KEYS = {"slides", "per_slide_label", "seed"}
LICENSE_FILES = ("dataset.json", "LICENSE", "CITATION", "CITATION.txt", "CITATION.cff", "README.md")


@dataclass(frozen=True)
class Step:
    stem: str  # notebook stem, e.g. "03_finetune"
    out: str  # output folder relative to the run folder, e.g. "finetune/glom"
    init: str | None = None  # for 03 only

    @property
    def id(self) -> str:
        return f"{self.stem}/{self.init}" if self.init else self.stem

    @property
    def executed_name(self) -> str:
        return f"{self.stem}-{self.init}.ipynb" if self.init else f"{self.stem}.ipynb"

    def aliases(self) -> set[str]:
        """Names accepted by --only: 03, 03_finetune, finetune, 03/glom, 03:glom, finetune/glom, ..."""
        base = {self.stem, self.stem[:2], self.stem[3:], self.out.split("/")[0]}
        if not self.init:
            return base
        return base | {f"{b}{sep}{self.init}" for b in base for sep in ("/", ":")}


def plan_steps(profile: dict[str, Any]) -> list[Step]:
    steps: list[Step] = []
    for stem, out in STEP_TABLE:
        if stem == "03_finetune":
            steps += [Step(stem, f"{out}/{init}", init) for init in profile["inits"]]
        elif stem != "06_external_validation" or profile.get("external"):
            steps.append(Step(stem, out))
    return steps


def find_project_root() -> Path:
    root = project_root()
    return root if (root / "pyproject.toml").is_file() else project_root(Path(__file__).resolve().parent)


def rel(path: Path, root: Path) -> str:
    """``path`` relative to the project root when inside it (keeps absolute paths out of notebooks), else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def abs_in(path: str | Path, root: Path) -> Path:
    """``path`` with a relative one taken relative to ``root``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def copy_license(src: Path, dest: Path) -> None:
    """The dataset's license, citation and description travel with a manifest derived from ``src``."""
    for extra in LICENSE_FILES:
        if (src.parent / extra).is_file() and not (dest.parent / extra).exists():
            shutil.copy2(src.parent / extra, dest.parent / extra)
