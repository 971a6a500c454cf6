#!/usr/bin/env bash
# The demo: everything the pipeline has so far, for real, on Fashion-MNIST (see README).
#   1. the root ingredient: Linf adversarial training of the small CNN (APGD-CE 10 steps,
#      eps 0.1), EPOCHS epochs;
#   2. its children, fine-tuned for 1 epoch each to L2 (0.8), L1 (10) and nominal training;
#   3. AutoAttack (fast) of all four under Linf, L2 and L1 on N_EXAMPLES test images;
#   4. the table of the four ingredients ($RUNS/ingredients.md);
#   5. the soups of the Linf model and its L2 child: grid.csv, grid.json, plots.
# About 35 minutes on 2 CPU cores (the soup grid is the slow part: see README). Interrupted? Run it again: finished runs and evaluations
# are reused, an interrupted run resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUNS=${RUNS:-runs/demo}
EPOCHS=${EPOCHS:-2}
N_EXAMPLES=${N_EXAMPLES:-1000}
PARENT="$RUNS/fmnist_cnn_linf"
mkdir -p "$RUNS"

echo "== 1. Linf adversarial training of the small CNN on Fashion-MNIST ($PARENT)"
$PY -m seasoning.train --config=configs/fmnist_cnn_linf.py --workdir="$PARENT" \
  --config.num_epochs="$EPOCHS"

for child in l2 l1 nominal; do
  echo "== 2. Fine-tuning to $child ($RUNS/fmnist_cnn_linf_to_$child)"
  $PY -m seasoning.train --config="configs/fmnist_cnn_linf_to_$child.py:parent=$PARENT" \
    --workdir="$RUNS/fmnist_cnn_linf_to_$child"
done

runs=("$PARENT" "$RUNS/fmnist_cnn_linf_to_l2" "$RUNS/fmnist_cnn_linf_to_l1" \
      "$RUNS/fmnist_cnn_linf_to_nominal")
for run in "${runs[@]}"; do
  echo "== 3. AutoAttack (fast) of $run under Linf 0.1, L2 0.8, L1 10, $N_EXAMPLES test images"
  $PY -m seasoning.evaluate --workdir="$run" --version=fast --n_examples="$N_EXAMPLES"
done

echo "== 4. The four ingredients"
$PY -m seasoning.report --workdirs="$(IFS=,; echo "${runs[*]}")" --markdown="$RUNS/ingredients.md"

echo "== 5. The soups of Linf and Linf->L2: 11 soups, AutoAttack (fast) on 200 test images"
$PY -m seasoning.soup --config="configs/soup_fmnist.py:soup=l2,runs=$RUNS" \
  --workdir="$RUNS/soup_linf_l2" --config.eval.n_examples=200 --resume
echo "Soup files:"; ls "$RUNS/soup_linf_l2"
