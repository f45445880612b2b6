#!/usr/bin/env bash
# One-command GPU check: mmjax's ViT-B/16 SigLIP step (images/s, MFU, largest
# batch), open_clip's at the same batch, the ring loss's memory at batch 32k and
# the input pipeline's images/s per core; one JSON line on stdout, progress on
# stderr. The logic and what each figure means: gpu_check.py beside this file.
#
#   bash experiments/benchmarks/gpu_check.sh             # one GPU, under 8 minutes
#   bash experiments/benchmarks/gpu_check.sh --dry-run   # tiny shapes, CPU is fine
#
# Python: $PYTHON if set, else .venv/bin/python if it exists, else python3.
# mmjax is imported from this checkout, so an environment that has jax, flax
# and optax but not mmjax installed (a GPU image without network) works too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" experiments/benchmarks/gpu_check.py "$@"
