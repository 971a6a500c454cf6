#!/usr/bin/env bash
# Run a driver on this machine, as one process (every local device) or as PROCESSES local
# processes of one jax.distributed job (CPU devices; how to try on one machine what a pod does).
#   launch/local.sh CONFIG[:arg] WORKDIR [--config.key=value ...]
#
# ViT-B/16, Linf (configs/vitb_linf.py), one process driving every GPU of this machine:
#   launch/local.sh configs/vitb_linf.py runs/vitb_linf
# Its runlocal variant as a 2-process job on localhost (2 CPU devices each, 4 in all):
#   PROCESSES=2 launch/local.sh configs/vitb_linf.py:runlocal runs/vit_smoke
# which runs, for i = 0 and 1, with PORT a free local port:
#   JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 \
#     JAX_PROCESS_ID=i .venv/bin/python -m seasoning.train \
#     --config=configs/vitb_linf.py:runlocal --workdir=runs/vit_smoke --cpu_devices=2
#
# MODULE picks the driver (default seasoning.train); an empty CONFIG passes no --config, as
# seasoning.evaluate wants:  MODULE=seasoning.evaluate launch/local.sh "" runs/vitb_linf
# PROCESSES > 1: CPU_DEVICES (default 2) CPU devices a process; JAX_PLATFORMS defaults to cpu.
# Only process 0 prints and writes; the others' output goes to LOG_DIR (default: a temporary
# folder), shown if one fails.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: [PROCESSES=N] launch/local.sh CONFIG[:arg] WORKDIR [overrides]"
config=${1?$usage}
workdir=${2:?$usage}
shift 2
module=${MODULE:-seasoning.train}
processes=${PROCESSES:-1}
args=(-m "$module" ${config:+"--config=$config"} "--workdir=$workdir" "$@")
if [ "$processes" -le 1 ]; then
  exec .venv/bin/python "${args[@]}"
fi

log_dir=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$log_dir"
port=$(.venv/bin/python -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < processes; i++)); do
  env_vars=(JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" JAX_COORDINATOR_ADDRESS="127.0.0.1:$port"
            JAX_NUM_PROCESSES="$processes" JAX_PROCESS_ID="$i")
  command=(env "${env_vars[@]}" .venv/bin/python "${args[@]}" "--cpu_devices=${CPU_DEVICES:-2}")
  if [ "$i" -eq 0 ]; then
    "${command[@]}" &
  else
    "${command[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done
status=0
for ((i = 0; i < processes; i++)); do
  if ! wait "${pids[$i]}"; then
    status=1
    if [ "$i" -gt 0 ]; then
      echo "process $i failed; the end of its log ($log_dir/process_$i.log):" >&2
      tail -n 40 "$log_dir/process_$i.log" >&2
    fi
  fi
done
exit "$status"
