#!/usr/bin/env bash
# The main job: sets itself up on first use, then runs the `rustinfer` CLI.
# With no arguments it asks the default model (SmolLM2-135M-Instruct) a question.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh
if [ $# -eq 0 ]; then
    set -- generate "What is the capital of France?"
fi
exec .venv/bin/rustinfer "$@"
