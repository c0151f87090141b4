#!/usr/bin/env bash
# The test suite: sets itself up on first use, then runs pytest (CPU only).
# Extra arguments go to pytest, e.g. ./test.sh -k spec -x
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh dev
# Downloads (the default model) stay inside the repository's own cache folder.
export RUSTINFER_CACHE="${RUSTINFER_CACHE:-$PWD/.cache/rustinfer}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
