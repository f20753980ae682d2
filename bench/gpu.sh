#!/usr/bin/env bash
# Seed-scale GPU benchmark: one epoch of 77,494 synthetic CTL triplets (ResNet18, 64 px, batch 64),
# fine-tuned and with the frozen recipe + feature cache, plus catalog-build throughput, the release
# scale and the fine-tuning epoch compiled (model.compile; inductor compiles for a minute or more):
# the parts issue 13's goals are read from (--parts; default: epochs,catalog,release,compile). On
# request: bounds (the frozen step outside Lightning) and ddp_sweep (the README's sweep of DDP jobs).
#
#   bench/gpu.sh [--out DIR] [--data DIR]     # on a machine with a GPU (session 13: 251 s for
#                                             # epochs,compile,catalog and 125 s for release on an H200, before
#                                             # session 14 cut the rows the goals do not read)
#   bench/gpu.sh --smoke --out /tmp/gpu       # the same code on the CPU with tiny sizes (its ddp_sweep part
#                                             # runs the CPU sweep of tests/test_scaleout.py: --parts to skip it)
#
# Needs torch, pytorch-lightning, timm, scikit-learn and pytorch-metric-learning. Where
# pytorch-metric-learning is missing (e.g. a machine without network), wheels in .whl/ are used.
# Results: DIR/gpu-results.json and DIR/GPU-table.md; recorded in experiments/benchmarks/GPU.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import pytorch_metric_learning" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ctl-bench-site .whl/*.whl
  export PYTHONPATH="/tmp/ctl-bench-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
exec "$PY" -m ctl_lightning.benchmarks.gpu "$@"
