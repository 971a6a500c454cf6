#!/usr/bin/env bash
# The demo (`make demo`): the whole method on Fashion-MNIST, then runs/demo/report.md.
#   Linf adversarial training of the small CNN, its L2 / L1 / nominal fine-tunes, a sweep of
#   their soups under a cheap attack, the ingredients and the selected soups re-checked with
#   the four attacks of AutoAttack standard, soups selected for distribution shifts, and the
#   report (configs/demo.py holds every size; docs/benchmarks.md gives its time on 2-core machines).
# A second run reuses the finished stages; an interrupted one resumes. Environment:
#   FRESH=1 deletes runs/demo first; RUNS=DIR puts the demo elsewhere;
#   DEMO_CONFIG=configs/demo.py:runlocal runs every stage at a few steps (seconds each).
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--config="${DEMO_CONFIG:-configs/demo.py}" --workdir="${RUNS:-runs/demo}")
if [ "${FRESH:-0}" = 1 ]; then
  args+=(--fresh)
fi
exec .venv/bin/python -m seasoning.demo "${args[@]}"
