#!/usr/bin/env bash
# The demo: everything the pipeline has so far, for real, on Fashion-MNIST (see README).
#   1. Linf adversarial training of the small CNN (APGD-CE, 10 steps, eps 0.1), 2 epochs;
#   2. its AutoAttack evaluation (fast version) under Linf, L2 and L1 on 1000 test images.
# About 10 minutes on 2 CPU cores. Interrupted? Run it again: training resumes from its last
# checkpoint. EPOCHS, N_EXAMPLES and RUNS change the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUNS=${RUNS:-runs/demo}
EPOCHS=${EPOCHS:-2}
N_EXAMPLES=${N_EXAMPLES:-1000}
mkdir -p "$RUNS"

echo "== 1. Linf adversarial training of the small CNN on Fashion-MNIST ($RUNS/fmnist_linf)"
$PY -m seasoning.train --config=configs/fmnist_cnn_linf.py --workdir="$RUNS/fmnist_linf" \
  --config.num_epochs="$EPOCHS"

echo "== 2. AutoAttack (fast) under Linf 0.1, L2 0.8, L1 10 on $N_EXAMPLES test images"
$PY -m seasoning.evaluate --workdir="$RUNS/fmnist_linf" --version=fast \
  --n_examples="$N_EXAMPLES"
echo "Run files:"; ls "$RUNS/fmnist_linf"
