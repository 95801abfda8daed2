"""A run's identity (``identity.json``): what its numbers were computed from.

The data (paths, labels, slides,
patients, centres, file contents, label mapping), the profile and every step's parameters, the seeds and the code
version. Recorded when the run starts; every resume recomputes it and refuses any difference (exit 2)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from glomlib.core.io import ResumeError, git_commit, utc_now, write_json_atomic

IDENTITY = "identity.json"
_COLUMNS = (
    ("labels", "label"),
    ("slides", "slide"),
    ("patients", "patient"),
    ("centres", "center"),
    ("splits", "split"),
)


def _digest(values: Any) -> str:
    return hashlib.sha256("\n".join(map(str, values)).encode()).hexdigest()[:16]


def manifest_identity(path: Path, positive_label: str, labelled: bool = True) -> dict[str, Any]:
    """The manifest's rows, image paths, every identifying column and the label mapping, each as a digest."""
    from glomlib.data.manifest import data_fingerprint, read_manifest

    df = read_manifest(path, positive_label=positive_label, require_labels=labelled)
    df = df.sort_values("path", kind="stable")
    out: dict[str, Any] = {"rows": len(df), "paths": _digest(df["path"])}
    out |= {name: _digest(df[col]) for name, col in _COLUMNS if col in df.columns}
    out["files"] = data_fingerprint(df)
    if labelled and "y" in df.columns:
        out["label mapping"] = {str(k): int(v) for k, v in sorted(set(zip(df["label"], df["y"], strict=True)))}
    return out


def code_version() -> dict[str, Any]:
    from importlib import metadata

    try:
        version = metadata.version("glomlib")
    except metadata.PackageNotFoundError:
        version = None
    return {"glomlib": version, "git_commit": git_commit()}


def run_identity(definition: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    params = definition["parameters"]
    return {
        "data": data,
        "profile": {k: v for k, v in definition["profile"].items() if k != "source"},
        "parameters": params,
        "seeds": {sid: p["seeds"] for sid, p in params.items() if "seeds" in p},
        "pseudonymised": bool(definition.get("pseudonymised_data")),
        "code": code_version(),
    }


def data_identity(definition: dict[str, Any], root: Path, positive_label: str) -> dict[str, Any]:
    """Identity of every manifest the run reads, from the paths ``pipeline.json`` records."""
    parts = {"data": manifest_identity(root / definition["data_source"], positive_label)}
    if definition.get("ssl_data"):
        parts["ssl_data"] = manifest_identity(root / definition["ssl_data"], positive_label, labelled=False)
    if definition["profile"].get("external"):
        parts["external"] = manifest_identity(root / str(definition["profile"]["external"]), positive_label)
    return parts


def record(run_dir: Path, identity: dict[str, Any], history: list[dict[str, Any]] | None = None) -> Path:
    doc = {"identity": identity, "recorded_utc": utc_now(), "accepted_changes": history or []}
    return write_json_atomic(run_dir / IDENTITY, doc)


def _flat(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict) and d:
        out: dict[str, str] = {}
        for k, v in d.items():
            out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: json.dumps(d, sort_keys=True, default=str)}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every leaf that differs, as ``name: old -> new``."""
    a, b = _flat(old), _flat(new)
    short = lambda s: s if len(s) <= 60 else s[:57] + "..."  # noqa: E731
    return [
        f"{k}: {short(a.get(k, '<absent>'))} -> {short(b.get(k, '<absent>'))}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def check(run_dir: Path, name: str, now: dict[str, Any], accept: bool, log) -> list[str]:
    """Compare the recorded identity with ``now``: refuse any difference (:class:`ResumeError`), or, with
    ``accept``, record it in ``identity.json`` and return the differences."""
    path = run_dir / IDENTITY
    if not path.is_file():
        raise ResumeError(
            f"cannot resume {name}: it has no {IDENTITY} (made by an older glomlib), so nothing proves that its data "
            "and settings are still the same. Start a new run with glomlib run --profile ..."
        )
    doc = json.loads(path.read_text())
    diff = differences(doc["identity"], now)
    if diff and not accept:
        raise ResumeError(
            f"cannot resume {name}: it differs from what the run was made with:\n  - "
            + "\n  - ".join(diff)
            + "\nIts finished steps were computed from the recorded data, settings and code; continuing would "
            "publish numbers from a mix. Either start a new run (glomlib run --profile ...), or continue on purpose "
            f"with: glomlib run --resume {name} --accept-changes (the change is recorded in {IDENTITY}; a data "
            "change re-runs every step, earlier outputs are kept as *.previous-N)."
        )
    if diff:
        log(f"  accepted changes (recorded in {IDENTITY}): " + "; ".join(diff))
        history = doc.get("accepted_changes", []) + [{"utc": utc_now(), "changes": diff}]
        record(run_dir, now, history)
    return diff
