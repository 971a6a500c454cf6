#!/usr/bin/env bash
# Train on this machine: launch/local.sh CONFIG[:arg] WORKDIR [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/local.sh CONFIG[:arg] WORKDIR [overrides]}
workdir=${2:?usage: launch/local.sh CONFIG[:arg] WORKDIR [overrides]}
shift 2
exec .venv/bin/python -m seasoning.train --config="$config" --workdir="$workdir" "$@"
