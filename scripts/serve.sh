#!/usr/bin/env bash
# The one serve command: sets up the gateway's virtual environment (.venv) on first use,
# then runs `vlm-gateway serve` with the given arguments, e.g.
#   scripts/serve.sh --config gateway.yaml --host 0.0.0.0 --port 8000
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# Installs again when the console script does not run (a fresh machine, or a .venv from before
# the `vlm_gateway` package, whose script points at a module that is gone).
if ! .venv/bin/vlm-gateway --help >/dev/null 2>&1; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[blip2]"
fi
exec .venv/bin/vlm-gateway serve "$@"
