#!/usr/bin/env bash
# Run a driver on one TPU VM (a single host, e.g. v4-8 = 4 chips): set-up once, then run.
# The mesh spans the VM's chips; jax.distributed is not needed on one host.
#   launch/tpu_vm.sh CONFIG[:arg] WORKDIR [--config.key=value ...]
#
# ViT-B/16, Linf (configs/vitb_linf.py):
#   TPU_NAME=my-tpu ZONE=us-central2-b REPO=https://github.com/YOU/seasoning.git \
#     launch/tpu_vm.sh configs/vitb_linf.py /mnt/runs/vitb_linf
# which runs, on the VM:
#   gcloud compute tpus tpu-vm ssh my-tpu --zone us-central2-b --command "
#     [ -d seasoning ] || git clone https://github.com/YOU/seasoning.git seasoning
#     cd seasoning && python3 -m venv .venv
#     .venv/bin/pip install -q -c constraints.txt -e '.[gcs,tpu]'
#     .venv/bin/python -m seasoning.train --config=configs/vitb_linf.py --workdir=/mnt/runs/vitb_linf"
#
# MODULE picks the driver (default seasoning.train); an empty CONFIG passes no --config, as
# seasoning.evaluate wants:  MODULE=seasoning.evaluate ... launch/tpu_vm.sh "" /mnt/runs/vitb_linf
set -euo pipefail
usage="usage: TPU_NAME=... ZONE=... REPO=... launch/tpu_vm.sh CONFIG[:arg] WORKDIR [overrides]"
config=${1?$usage}
workdir=${2:?$usage}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
: "${REPO:?set REPO to the git URL of your seasoning fork}"
# Every value is quoted for the remote shell (%q), so paths and overrides pass through intact.
driver=(.venv/bin/python -m "${MODULE:-seasoning.train}" ${config:+"--config=$config"}
        "--workdir=$workdir" "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --command "
  set -e
  [ -d seasoning ] || git clone $(printf %q "$REPO") seasoning
  cd seasoning && python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e '.[gcs,tpu]'
  $(printf '%q ' "${driver[@]}")
"
