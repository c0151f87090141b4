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
    spec="."; [ -n "$extras" ] && spec=".[$extras]"
    echo "rustinfer: installing into $venv (first run only; a few minutes)..." >&2
    log="$venv/install.log"
    # numpy<2.4: triton's interpreter (used by the kernel tests) breaks on numpy 2.4.
    if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
           "$venv/bin/python" -m pip install -q "${RUSTINFER_TORCH:-torch==2.13.0}" "numpy<2.4" \
               -e "$spec"; } > "$log" 2>&1; then
        cat "$log" >&2
        echo "rustinfer: installation failed (log above, also in $log)" >&2
        exit 1
    fi
    "$venv/bin/python" -c "import rustinfer.compiler, rustinfer.runtime, rustinfer.kernels, rustinfer.server"
    echo "$want" > "$stamp"
fi
