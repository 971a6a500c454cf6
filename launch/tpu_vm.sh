#!/usr/bin/env bash
# Train on one TPU VM (a single host): set-up once, then run.
#   TPU_NAME=my-tpu ZONE=us-central2-b launch/tpu_vm.sh configs/vitb_linf.py /mnt/runs/vitb_linf
set -euo pipefail
config=${1:?usage: launch/tpu_vm.sh CONFIG[:arg] WORKDIR [overrides]}
workdir=${2:?usage: launch/tpu_vm.sh CONFIG[:arg] WORKDIR [overrides]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
: "${REPO:?set REPO to the git URL of your seasoning fork}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --command "
  set -e
  [ -d seasoning ] || git clone $REPO seasoning
  cd seasoning && python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . 'jax[tpu]==0.10.2'
  .venv/bin/python -m seasoning.train --config=$config --workdir=$workdir $*
"
