"""Read and validate a patch manifest (CSV), and fingerprint the data it names.

One row per image patch (see ``data/README.md``): ``path``, ``label`` (may be empty only with
``require_labels=False``), ``slide`` (the unit of grouping), and optionally ``patient``, ``center``, ``split``
(""/train/val/test/a fold number) and ``mask``; relative paths resolve against the manifest's folder.
:func:`read_manifest` runs every check of :mod:`.checks` and reports EVERY problem at once (row number + file);
nothing is dropped silently: ``on_error="skip"`` writes the dropped rows, with their reasons, to ``skipped_out``.
Unusual image modes are accepted, converted by :mod:`glomlib.data.images` and reported as warnings. Which label is
positive is said once, by a ``dataset.json`` beside the manifest (:mod:`.dataset`). No torch import here.
"""

from glomlib.data.manifest.dataset import read_dataset_info, resolve_positive_label, write_dataset_info
from glomlib.data.manifest.hashing import _HASH_MEMO, data_fingerprint, file_sha256, hash_files
from glomlib.data.manifest.problems import ManifestError, ManifestWarning, Problem, format_problems, write_skipped
from glomlib.data.manifest.read import DEFAULT_POSITIVE, _read_csv, read_manifest, validate_manifest, write_manifest

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# fmt: off
__all__ = ["DEFAULT_POSITIVE", "IMAGE_EXTENSIONS", "_HASH_MEMO", "_read_csv", "ManifestError", "ManifestWarning",
           "Problem", "data_fingerprint", "file_sha256", "format_problems", "hash_files", "read_dataset_info",
           "read_manifest", "resolve_positive_label", "validate_manifest", "write_dataset_info", "write_manifest",
           "write_skipped"]
