#!/usr/bin/env bash
# The main job: sets itself up on first use, then serves the default model
# (SmolLM2-135M-Instruct) with the OpenAI API and a chat page on http://127.0.0.1:8000.
#   ./run.sh                      rustinfer serve (add serve options: ./run.sh serve --port 8080)
#   ./run.sh generate "Hi"        any other `rustinfer` command: generate, chat, bench, inspect
#   ./run.sh --help               the commands; ./run.sh serve --help: the server's options
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh
if [ $# -eq 0 ]; then
    set -- serve
fi
exec .venv/bin/rustinfer "$@"
