#!/usr/bin/env bash
# The long Fashion-MNIST recipe behind the Ingredients, Soups and Shift tables of docs/soups.md
# and docs/shifts.md (what `make demo` ran before it was cut to minutes; `make demo` is the
# short version).
#   1. the root ingredient: Linf adversarial training of the small CNN (APGD-CE 10 steps,
#      eps 0.1), EPOCHS epochs;
#   2. its children, fine-tuned for 1 epoch each to L2 (0.8), L1 (10) and nominal training,
#      and the multi-norm baseline: E-AT (one of the three threat models per batch);
#   3. AutoAttack (fast) of all five under Linf, L2 and L1 on N_EXAMPLES test images;
#   4. the table of the ingredients and the baseline ($RUNS/ingredients.md);
#   5. the soups of the Linf model and its L2 child (11 soups): grid.csv, grid.json, plots;
#   6. the soups of Linf, Linf->L2 and Linf->L1 on a simplex of step 0.25 (15 soups).
#   7. the shift soups of the four ingredients (configs/shift_fmnist.py, ~10 minutes more).
# About 55 minutes on 2 CPU cores. Interrupted? Run it again: finished runs, evaluations and
# soups are reused, an interrupted run resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RUNS=${RUNS:-runs/fmnist_long}
EPOCHS=${EPOCHS:-2}
N_EXAMPLES=${N_EXAMPLES:-1000}
PARENT="$RUNS/fmnist_cnn_linf"
mkdir -p "$RUNS"

echo "== 1. Linf adversarial training of the small CNN on Fashion-MNIST ($PARENT)"
$PY -m seasoning.train --config=configs/fmnist_cnn_linf.py --workdir="$PARENT" \
  --config.num_epochs="$EPOCHS"

for child in l2 l1 nominal eat; do
  echo "== 2. Fine-tuning to $child ($RUNS/fmnist_cnn_linf_to_$child)"
  $PY -m seasoning.train --config="configs/fmnist_cnn_linf_to_$child.py:parent=$PARENT" \
    --workdir="$RUNS/fmnist_cnn_linf_to_$child"
done

runs=("$PARENT" "$RUNS/fmnist_cnn_linf_to_l2" "$RUNS/fmnist_cnn_linf_to_l1" \
      "$RUNS/fmnist_cnn_linf_to_nominal" "$RUNS/fmnist_cnn_linf_to_eat")
for run in "${runs[@]}"; do
  echo "== 3. AutoAttack (fast) of $run under Linf 0.1, L2 0.8, L1 10, $N_EXAMPLES test images"
  $PY -m seasoning.evaluate --workdir="$run" --version=fast --n_examples="$N_EXAMPLES"
done

echo "== 4. The ingredients and the E-AT baseline"
$PY -m seasoning.report --workdirs="$(IFS=,; echo "${runs[*]}")" --markdown="$RUNS/ingredients.md"

SOUP_EXAMPLES=${SOUP_EXAMPLES:-500}
echo "== 5. The soups of Linf and Linf->L2: 11 soups, AutoAttack (fast) on $SOUP_EXAMPLES test images"
$PY -m seasoning.soup --config="configs/soup_fmnist.py:soup=l2,runs=$RUNS" \
  --workdir="$RUNS/soup_linf_l2" --config.eval.n_examples="$SOUP_EXAMPLES" --resume

echo "== 6. The soups of Linf, Linf->L2 and Linf->L1: 15 soups, AutoAttack (fast) on 200 test images"
$PY -m seasoning.soup --config="configs/soup_fmnist.py:soup=l2_l1,runs=$RUNS,step=0.25" \
  --workdir="$RUNS/soup_linf_l2_l1" --config.eval.n_examples=200 --resume
echo "== 7. Soups for distribution shifts of the four ingredients"
$PY -m seasoning.shift --config="configs/shift_fmnist.py:runs=$RUNS" --workdir="$RUNS/shift" --resume
echo "Soup files:"; ls "$RUNS/soup_linf_l2" "$RUNS/soup_linf_l2_l1" "$RUNS/shift"
