#!/usr/bin/env bash
# The demo: everything the pipeline has so far, for real, on Fashion-MNIST (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUNS=${RUNS:-runs/demo}
mkdir -p "$RUNS"

echo "== 1. Train the small CNN on Fashion-MNIST ($RUNS/fmnist_linf)"
# Resumes if it was interrupted; a finished run just re-evaluates.
$PY -m seasoning.train --config=configs/fmnist_cnn_linf.py --workdir="$RUNS/fmnist_linf" "$@"
echo "Run files:"; ls "$RUNS/fmnist_linf"
