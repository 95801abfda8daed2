"""Files that never lose anything.

Atomic writes (:mod:`.atomic`), exclusive run-folder claims and run status
(:mod:`.claims`), one writer per run folder (:mod:`.lock`), provenance (:mod:`.provenance`)."""

from glomlib.core.io.atomic import (  # noqa: F401
    TMP_MARK,
    DiskFullError,
    _fmt_bytes,
    atomic_path,
    free_space,
    is_disk_full,
    publish_new,
    sweep_stale_temp,
    utc_now,
    write_csv_atomic,
    write_csv_new,
    write_json_atomic,
    write_text_atomic,
    write_with,
)
from glomlib.core.io.claims import (  # noqa: F401
    CLAIM_FILE,
    RUN_STATUS,
    ResumeError,
    claim_dir,
    ensure_new_dir,
    mark_run,
    new_run_dir,
    open_for_resume,
    read_run_status,
    release_claim,
    run_status,
    track_run,
)
from glomlib.core.io.lock import LOCK_FILE, RunLockedError, acquire_lock, release_lock, run_lock  # noqa: F401
from glomlib.core.io.provenance import git_commit, software_versions, write_provenance  # noqa: F401
