#!/usr/bin/env bash
# Idempotent set-up of a local virtual environment in .venv.
#   scripts/setup.sh          runtime dependencies (CPU build of torch first, so
#                              pip never pulls a multi-GB CUDA build)
#   scripts/setup.sh test     + test tools and the optional torch-scatter /
#                              torch-sparse extension ("fast" extra), built from
#                              source on first use (~10 min; pip caches wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPIP=".venv/bin/python -m pip --disable-pip-version-check -q"
.venv/bin/python -c "import torch" 2>/dev/null || $VPIP install "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
  $VPIP install setuptools wheel
  .venv/bin/python -c "import torch_scatter, torch_sparse" 2>/dev/null || \
    $VPIP install --no-build-isolation torch-scatter torch-sparse
  $VPIP install -e ".[test,fast,plot,docs,text]"
else
  $VPIP install -e .
fi
