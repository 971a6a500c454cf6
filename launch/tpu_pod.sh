#!/usr/bin/env bash
# Run a driver on a multi-host TPU pod slice: the same command on every worker (--worker=all).
# jax.distributed starts by itself there (--distributed=on; the TPU environment names the
# hosts); each host reads only its rows of every global batch, the mesh spans every chip of
# the slice, and only process 0 writes results.
#   launch/tpu_pod.sh CONFIG[:arg] WORKDIR [--config.key=value ...]
#
# ViT-B/16, Linf (configs/vitb_linf.py) on a v4-32 (16 chips, 4 hosts):
#   TPU_NAME=my-v4-32 ZONE=us-central2-b REPO=https://github.com/YOU/seasoning.git \
#     launch/tpu_pod.sh configs/vitb_linf.py /mnt/runs/vitb_linf
# which runs:
#   gcloud compute tpus tpu-vm ssh my-v4-32 --zone us-central2-b --worker=all --command "
#     [ -d seasoning ] || git clone https://github.com/YOU/seasoning.git seasoning
#     cd seasoning && python3 -m venv .venv
#     .venv/bin/pip install -q -c constraints.txt -e '.[gcs,tpu]'
#     .venv/bin/python -m seasoning.train --config=configs/vitb_linf.py \
#       --workdir=/mnt/runs/vitb_linf --distributed=on"
# Other drivers (MODULE defaults to seasoning.train; an empty CONFIG passes no --config):
#   MODULE=seasoning.soup ... launch/tpu_pod.sh configs/soup_vitb.py:soup=l2 /mnt/runs/soup
#   MODULE=seasoning.shift ... launch/tpu_pod.sh configs/shift_imagenet_vitb16.py:runs=/mnt/runs /mnt/runs/shift
#   MODULE=seasoning.evaluate ... launch/tpu_pod.sh "" /mnt/runs/vitb_linf --n_examples=5000
# WORKDIR must be a path every worker sees: a gs:// bucket (the gcs extra is installed below)
# or a shared file system (NFS, a gcsfuse mount).
set -euo pipefail
usage="usage: TPU_NAME=... ZONE=... REPO=... launch/tpu_pod.sh CONFIG[:arg] WORKDIR [overrides]"
config=${1?$usage}
workdir=${2:?$usage}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
: "${REPO:?set REPO to the git URL of your seasoning fork}"
# Every value is quoted for the remote shell (%q), so paths and overrides pass through intact.
driver=(.venv/bin/python -m "${MODULE:-seasoning.train}" ${config:+"--config=$config"}
        "--workdir=$workdir" --distributed=on "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d seasoning ] || git clone $(printf %q "$REPO") seasoning
  cd seasoning && python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e '.[gcs,tpu]'
  $(printf '%q ' "${driver[@]}")
"
