"""Public datasets. ``glomeruli-pas``: PAS-stained human glomerulus patches, GS (globally sclerotic) vs nonGS.

:func:`fetch_glomeruli_pas` takes the images from a local mirror, else downloads the pinned upstream commit's
archive; verifies every file against the project's copy of the upstream sha256 list (a mismatch is an error naming
the file, absent files are reported); and writes ``manifest.csv`` (images stay where they are), ``dataset.json``,
``LICENSE``, ``CITATION.txt``, ``missing_files.txt`` and ``fetch.json``. Re-running is idempotent; a manifest with
different content is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from glomlib.core.io import write_text_atomic
from glomlib.core.paths import DEFAULT_MANIFEST, project_root, shared_data_dir
from glomlib.data.manifest import hash_files, write_dataset_info, write_manifest

NAME = "glomeruli-pas"
REPO = "patologiivest/GlobalGlomerulosclerosisClustering"
COMMIT = "6db7d776ead18a4b15758634708be56db06b4d1a"
ARCHIVE_URL = f"https://github.com/{REPO}/archive/{COMMIT}.zip"
SUBDIR = "Patches/Raw"
POSITIVE_LABEL = "GS"
NEGATIVE_LABEL = "nonGS"
SUMS_RESOURCE = Path(__file__).resolve().parents[1] / "resources" / "glomeruli_pas.sha256"
LICENSE_NAME = "CC BY-NC-SA 4.0 (Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International)"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode"
CITATION = f"""glomeruli-pas: PAS-stained human glomerulus patches, GS (globally sclerotic) vs nonGS.
Source: https://github.com/{REPO} (commit {COMMIT}), folder {SUBDIR}/.
License: {LICENSE_NAME} -- non-commercial use, attribution, share-alike. {LICENSE_URL}

Please cite:
  Weishaupt H. et al. (2025). Unsupervised learning for labeling global glomerulosclerosis.
  Computers in Biology and Medicine 196:110719. doi:10.1016/j.compbiomed.2025.110719  (patch crops, masks)
  Bueno G. et al. (2020). Data for glomeruli characterization in histopathological images.
  Data in Brief 29:105314. doi:10.17632/k7nvtgn2x6.3  (underlying slides, CC BY 4.0)
"""


class DatasetError(RuntimeError):
    """Fetching or verifying a dataset failed; the message names the file and says what to do."""

    exit_code = 1  # glomlib.cli's exit-code table


def find_mirror(mirror: str | os.PathLike | None = None) -> Path | None:
    """The mirror to use: ``mirror``, else ``$GLOMLIB_MIRROR``, else ``../shared/data/glomeruli-pas`` if present.

    An explicitly given mirror (argument or environment) that does not hold ``Patches/Raw`` is an error.
    ``mirror=False``: use no mirror (download).
    """
    if mirror is False:
        return None
    for src, cand in (("--mirror", mirror), ("$GLOMLIB_MIRROR", os.environ.get("GLOMLIB_MIRROR") or None)):
        if cand is not None:
            p = Path(cand).expanduser().resolve()
            if not (p / SUBDIR).is_dir():
                raise DatasetError(
                    f"mirror {p} (from {src}) has no {SUBDIR}/ folder; point it at a copy of the {NAME} data (the folder holding {SUBDIR}/Images/GS)"
                )
            return p
    p = shared_data_dir() / NAME
    return p if (p / SUBDIR).is_dir() else None


def read_sums(sums: str | os.PathLike | None = None) -> dict[str, str]:
    """``relative path -> sha256`` from a sha256sum-format file (default: the project's upstream list)."""
    path = Path(sums) if sums is not None else SUMS_RESOURCE
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DatasetError(f"{path}, line {n}: not in sha256sum format: {line!r}")
        out[parts[1].lstrip("*").strip()] = parts[0].lower()
    return out


def download(url: str, dest: Path, progress: bool = True) -> Path:
    """Stream ``url`` to ``dest`` (temp file + rename) with a tqdm progress bar."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=not progress
            ) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    bar.update(f.write(chunk))
        return tmp.replace(dest)
    except OSError as e:
        raise DatasetError(
            f"could not download {url}: {e}. Without internet, point --mirror (or $GLOMLIB_MIRROR) at a local copy of the {NAME} data."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def _members(zf: zipfile.ZipFile, archive: Path) -> tuple[str, list[str]]:
    """The archive's top folder ("" or ``name/``) and the members to extract (``Patches/Raw/**``, ``LICENSE*``)."""
    names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    top = ""
    if not any(n.startswith(SUBDIR + "/") for n in names):
        if len(tops) != 1:
            raise DatasetError(f"{archive}: expected one top-level folder holding {SUBDIR}/, found {sorted(tops)[:5]}")
        top = tops.pop() + "/"
    wanted = [
        n
        for n in names
        if n.startswith(top)
        and not n.endswith("/")
        and (n.startswith(top + SUBDIR + "/") or n[len(top) :].upper().startswith("LICENSE"))
    ]
    if not any(n.startswith(top + SUBDIR + "/") for n in wanted):
        raise DatasetError(f"{archive} has no {SUBDIR}/ folder; is it the {REPO} archive?")
    return top, wanted


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract ``<top>/Patches/Raw/**`` and ``<top>/LICENSE*`` of a GitHub archive into ``dest``; return the folder
    holding ``Patches/Raw``. It goes to a temp folder renamed into place when complete; zipfile drops absolute and
    ``..`` member paths, so nothing lands outside it."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{archive} is not a valid zip archive ({e}); delete it and fetch again") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zf:
            top, wanted = _members(zf, archive)
            zf.extractall(tmp, members=wanted)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / top, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def verify(root: Path, sums: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Check files under ``root`` against ``sums``. Returns (verified, missing, unlisted) relative paths.
    Raises :class:`DatasetError` naming every file whose content differs from the list."""
    present = [rel for rel in sorted(sums) if (root / rel).is_file()]
    present_set = set(present)
    missing = [rel for rel in sorted(sums) if rel not in present_set]
    got = hash_files([str(root / rel) for rel in present])
    bad = [(rel, h) for rel, h in zip(present, got) if h != sums[rel]]
    lfs = " (a Git LFS pointer, not the image: the archive did not include LFS files)"
    if bad:
        lines = [
            f"  {root / rel}: sha256 {h[:16]}... expected {sums[rel][:16]}..."
            + (lfs if (root / rel).read_bytes()[:40].startswith(b"version https://git-lfs") else "")
            for rel, h in bad
        ]
        raise DatasetError(
            f"{len(bad)} file(s) of {root} do not match the upstream sha256 list (corrupted or modified; re-download or restore them):\n"
            + "\n".join(lines)
        )
    listed = set(sums)
    unlisted = sorted(
        p.relative_to(root).as_posix()
        for p in (root / SUBDIR).rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in listed
    )
    return present, missing, unlisted


def _slide_center(name: str) -> tuple[str, str]:
    stem = Path(name).stem
    slide = stem.rsplit("-", 1)[0] if "-" in stem else stem
    return slide, slide.split("_")[0]


def _write_if_changed(path: Path, text: str) -> None:
    if not (path.exists() and path.read_text() == text):
        write_text_atomic(path, text)


def _project_path(p: str | os.PathLike) -> Path:
    """``p`` with ``~`` expanded; relative -> relative to the project root."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else project_root() / p


def _source(outp: Path, mirror, url: str | None, progress: bool, say) -> tuple[Path, str]:
    """The folder holding ``Patches/Raw`` (the mirror, or the download extracted under ``out/source``)."""
    if url is not None and mirror is None:
        mirror = False  # an explicit URL means: download from it
    root = find_mirror(mirror)
    if root is not None:
        say(f"{NAME}: using local mirror {root}")
        return root, f"mirror {root}"
    url = url or ARCHIVE_URL
    root = outp / "source"
    marker = root / ".complete"
    if marker.exists() and marker.read_text().strip() == url:
        say(f"{NAME}: reusing the extracted download in {root}")
    else:
        archive = outp / "download" / (Path(url.split("?")[0]).name or "archive.zip")
        if not archive.exists():
            say(f"{NAME}: no local mirror; downloading {url}")
            download(url, archive, progress=progress)
        say(f"{NAME}: extracting {SUBDIR} from {archive}")
        extract_archive(archive, root)
        marker.write_text(url + "\n")
    return root, f"download {url}"


def _manifest_rows(root: Path, present: list[str]):
    """One row per verified image: label = its folder, slide and centre from its name, its mask when verified."""
    import pandas as pd

    images = [r for r in present if r.startswith(f"{SUBDIR}/Images/")]
    if not images:
        raise DatasetError(f"no verified images under {root / SUBDIR}/Images; is this the {NAME} data?")
    present_set, rows = set(present), []
    for rel in images:
        label, fname = rel.split("/")[-2:]
        slide, center = _slide_center(fname)
        mrel = f"{SUBDIR}/Masks/{fname}"
        rows.append(
            {
                "path": str(root / rel),
                "label": label,
                "slide": slide,
                "center": center,
                "mask": str(root / mrel) if mrel in present_set else "",
            }
        )
    return pd.DataFrame(rows).sort_values("path", kind="stable").reset_index(drop=True)


def _write_records(outp: Path, root: Path, df, source: str, files: tuple[list, list, list], sums) -> dict:
    """LICENSE, CITATION.txt, missing_files.txt and fetch.json beside the manifest; returns the report."""
    present, missing, unlisted = files
    lic = root / "LICENSE"
    _write_if_changed(
        outp / "LICENSE",
        f"{NAME} data license: {LICENSE_NAME}\n{LICENSE_URL}\n\n"
        + (lic.read_text(errors="replace") if lic.is_file() else ""),
    )
    _write_if_changed(outp / "CITATION.txt", CITATION)
    _write_if_changed(outp / "missing_files.txt", "".join(r + "\n" for r in missing))
    report = {
        "dataset": NAME,
        "source": source,
        "commit": COMMIT,
        "manifest": str(outp / "manifest.csv"),
        "images": len(df),
        "masks": int((df["mask"] != "").sum()),
        "slides": int(df["slide"].nunique()),
        "centers": sorted(df["center"].unique()),
        "labels": df["label"].value_counts().to_dict(),
        "verified_files": len(present),
        "missing_files": len(missing),
        "missing_images": len([r for r in missing if "/Images/" in r]),
        "unlisted_files_ignored": unlisted,
        "sums_sha256": hashlib.sha256(Path(sums or SUMS_RESOURCE).read_bytes()).hexdigest(),
    }
    _write_if_changed(outp / "fetch.json", json.dumps(report, indent=2) + "\n")
    return report


def _say_summary(say, report: dict, outp: Path) -> None:
    say(
        f"{NAME}: {report['images']} verified images ({', '.join(f'{k} {v}' for k, v in report['labels'].items())}), {report['slides']} slides, {len(report['centers'])} centres {report['centers']}"
    )
    if report["missing_files"]:
        say(
            f"{NAME}: {report['missing_files']} file(s) listed upstream are absent ({report['missing_images']} images; a partial mirror); list in {outp / 'missing_files.txt'}"
        )
    unlisted = report["unlisted_files_ignored"]
    if unlisted:
        say(f"{NAME}: {len(unlisted)} file(s) not in the upstream list were ignored (e.g. {unlisted[0]})")
    say(f"{NAME}: manifest {report['manifest']}")
    say("\n" + CITATION)


def fetch_glomeruli_pas(
    out: str | os.PathLike = DEFAULT_MANIFEST.parent,
    mirror: str | os.PathLike | None | bool = None,
    *,
    url: str | None = None,
    sums: str | os.PathLike | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Path:
    """Build (or reuse) the glomeruli-pas manifest in ``out`` and return the path to ``out/manifest.csv``.

    ``out`` relative -> relative to the project root. ``mirror=False`` (or an explicit ``url``
    without ``mirror``) forces the download. ``url`` (default: the pinned GitHub archive) and
    ``sums`` (default: the project's upstream sha256 list) are injectable for tests and other mirrors.
    Labels are ``GS`` (positive) / ``nonGS``; slide = file name before the last ``-``; center = first
    ``_`` token of the slide.
    """
    say = (lambda *a: print(*a, file=sys.stderr)) if verbose else (lambda *a: None)
    outp = _project_path(out).resolve()
    sums_map = read_sums(sums)
    root, source = _source(outp, mirror, url, progress, say)
    files = verify(root, sums_map)
    df = _manifest_rows(root, files[0])
    outp.mkdir(parents=True, exist_ok=True)
    manifest = outp / "manifest.csv"
    write_manifest(df, manifest)  # refuses to overwrite different content; same content = reuse
    write_dataset_info(
        manifest,
        POSITIVE_LABEL,
        NEGATIVE_LABEL,
        dataset=NAME,  # which label is positive
        description="PAS-stained human glomeruli: GS (globally sclerotic) vs nonGS",
        license=LICENSE_NAME,
    )
    _say_summary(say, _write_records(outp, root, df, source, files, sums), outp)
    return manifest


def ensure_default_manifest(path: str | os.PathLike = DEFAULT_MANIFEST) -> Path:
    """Return ``path``; when it is missing and names ``<folder>/manifest.csv``, build it with
    :func:`fetch_glomeruli_pas` (mirror first). Relative paths are relative to the project root."""
    p = _project_path(path)
    if p.exists():
        return p
    if p.name != "manifest.csv":
        raise FileNotFoundError(
            f"manifest {p} does not exist; create it (see data/README.md) or run 'glomlib data fetch {NAME}'"
        )
    return fetch_glomeruli_pas(out=p.parent)
