#!/usr/bin/env bash
# The test suite: sets itself up on first use, then runs pytest (CPU only).
# Extra arguments go to pytest, e.g. ./test.sh -k spec -x
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh dev
# The chat page's browser test drives Debian's chromium through chromedriver; it
# skips itself without them. RUSTINFER_NO_BROWSER=1 skips installing them.
if [ -z "${RUSTINFER_NO_BROWSER:-}" ] && ! command -v chromedriver >/dev/null \
        && command -v apt-get >/dev/null; then
    echo "rustinfer: installing chromium + chromium-driver for the browser test..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver; } >/dev/null 2>&1 \
        || echo "rustinfer: could not install chromium; the browser test will be skipped" >&2
fi
# Downloads (the default model) stay inside the repository's own cache folder.
export RUSTINFER_CACHE="${RUSTINFER_CACHE:-$PWD/.cache/rustinfer}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q -rs "$@"
