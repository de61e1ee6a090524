#!/usr/bin/env bash
# The GPU table of #22 in one command (bench/gpu.py): SD 1.5, SDXL, FLUX.1 dev (bf16, fp8), Z-Image-Turbo.
#   bench/gpu.sh                      # every row; writes bench/results/gpu.json and gpu.md after each
#   bench/gpu.sh --only sd15-compiled # rerun one row
# Uses $PYTHON, else .venv/bin/python, else python3; installs the project (quant extra: torchao for the
# fp8 row) into that environment first when it is not importable yet.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import sdworker.engine.diffusers_engine, torchao" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet -e '.[all]'
fi
exec "$PYTHON" bench/gpu.py "$@"
