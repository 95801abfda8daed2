#!/usr/bin/env bash
# One-command GPU check (< 8 min on one GPU): see benchmarks/gpu_check.py. Extra options pass through,
# e.g. `bash benchmarks/gpu_check.sh --json /tmp/gpu-check.json` or `--tiny` (CPU, seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" benchmarks/gpu_check.py "$@"
