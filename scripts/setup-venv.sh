#!/usr/bin/env bash
# Creates .venv in the repository (once) and installs rustinfer into it.
# Usage: scripts/setup-venv.sh [EXTRAS]   e.g. "dev"
# The CPU build of torch is pinned here, not in pyproject.toml: on this kind of
# machine `torch==2.13.0` is a local CPU wheel, while a bare `torch` would pull a
# multi-GB CUDA build. Set RUSTINFER_TORCH to choose another torch requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
venv=.venv
stamp="$venv/.installed-${extras:-base}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Reinstall only when the project's requirements changed since the last install.
want="$(cat pyproject.toml scripts/setup-venv.sh | cksum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    spec="."; [ -n "$extras" ] && spec=".[$extras]"
    # numpy<2.4: triton's interpreter (used by the kernel tests) breaks on numpy 2.4.
    "$venv/bin/python" -m pip install -q "${RUSTINFER_TORCH:-torch==2.13.0}" "numpy<2.4" -e "$spec" 2>&1 \
        | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -c "import rustinfer.compiler, rustinfer.runtime, rustinfer.kernels, rustinfer.server"
    echo "$want" > "$stamp"
fi
