#!/usr/bin/env bash
# Run a driver on a multi-host TPU pod slice: the same command on every worker (--worker=all).
# jax.distributed starts by itself there (TPU_WORKER_HOSTNAMES lists the hosts); each host
# reads only its shard of every batch, the mesh spans every chip of the slice, and only
# process 0 writes results.
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh configs/vitb_linf.py /mnt/runs/vitb_linf
#   MODULE=seasoning.soup ... launch/tpu_pod.sh configs/soup_vitb.py:soup=l2 /mnt/runs/soup
#   MODULE=seasoning.shift ... launch/tpu_pod.sh configs/shift_imagenet_vitb16.py:runs=/mnt/runs /mnt/runs/shift
#   MODULE=seasoning.evaluate ... launch/tpu_pod.sh "" /mnt/runs/vitb_linf --n_examples=5000
# (MODULE defaults to seasoning.train; an empty CONFIG passes no --config, as evaluate wants.)
# WORKDIR must be a filesystem path every worker sees (NFS, or a bucket mounted with gcsfuse);
# gs:// URLs are not supported yet (workdir files are written with os-level atomic renames).
set -euo pipefail
config=${1?usage: launch/tpu_pod.sh CONFIG[:arg] WORKDIR [overrides]}
workdir=${2:?usage: launch/tpu_pod.sh CONFIG[:arg] WORKDIR [overrides]}
shift 2
module=${MODULE:-seasoning.train}
config_flag=${config:+--config=$config}
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
: "${REPO:?set REPO to the git URL of your seasoning fork}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d seasoning ] || git clone $REPO seasoning
  cd seasoning && python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . 'jax[tpu]==0.10.2'
  .venv/bin/python -m $module $config_flag --workdir=$workdir --distributed=on $*
"
