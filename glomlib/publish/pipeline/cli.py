"""``glomlib run``: its command-line options."""

from __future__ import annotations

import argparse

from glomlib.core.config import list_profiles
from glomlib.core.paths import DEFAULT_MANIFEST
from glomlib.publish.pipeline.run import run_pipeline


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run notebooks 01..05 with a profile and render HTML reports",
        description="Execute notebooks 01..05 with papermill into runs/<stamp>-<profile>/ and render "
        "code-free HTML reports into reports/<run>/.",
    )
    p.add_argument("--profile", help=f"profile name ({', '.join(list_profiles()) or 'none yet'}) or a YAML file")
    p.add_argument("--data", help=f"manifest CSV (default {DEFAULT_MANIFEST}, built from the shared mirror if missing)")
    p.add_argument(
        "--ssl-data",
        metavar="MANIFEST",
        help="a separate (e.g. unlabeled) manifest for SimCLR pretraining (02); default: --data",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run: skip steps that completed")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="STEP",
        help="run only these steps (e.g. 01, ssl, 03/glom, finetune, 05_error_analysis); with --resume, re-run them",
    )
    p.add_argument(
        "--pseudonymise",
        "--pseudonymize",
        action="store_true",
        help="replace slide, patient and file names with stable pseudonyms where the data enters the run "
        "(the notebooks get a manifest of pseudonym-named links, so no table, figure or log can show "
        "a real identifier; the mapping stays in <run>/data/); the report goes to "
        "reports/<run>-pseudonymised/. A run made without it cannot be pseudonymised afterwards.",
    )
    p.add_argument("--runs-root", default="runs", help="where run folders go (default: runs)")
    p.add_argument("--reports-root", default="reports", help="where HTML reports go (default: reports)")
    p.add_argument("--notebooks", default=None, help="folder holding the notebooks (default: notebooks)")
    p.add_argument("--no-report", action="store_true", help="do not render HTML reports")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    """Failures (PipelineError: a step failed or a run cannot go on; ConfigError; ManifestError...) become one
    message and a documented exit code in :func:`glomlib.cli.main`."""
    run_pipeline(
        args.profile,
        data=args.data,
        ssl_data=args.ssl_data,
        resume=args.resume,
        only=args.only,
        pseudonymise=args.pseudonymise,
        runs_root=args.runs_root,
        reports_root=args.reports_root,
        notebooks_dir=args.notebooks,
        render=not args.no_report,
    )
    return 0
