#!/usr/bin/env bash
# The Python packages a lent GPU machine lacks, made ready here to carry there (it has no
# network): wheels for CPython 3.12 on x86-64 Linux in .whl/, and pyautoattack (the reference
# AutoAttack) unpacked into .pysite/ without the 42 MB example model its wheel holds. The
# versions are the ones `make install` put into .venv, which CI tests.
#
#   make install && bash benchmarks/gpu_packages.sh
#
# Then one call of the device tool, carrying [".whl", ".pysite"] (about 12 MB):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
#   OUT=$OUT BUDGET=540 STEPS=issue27 bash benchmarks/gpu.sh
# (docs/training.md, "GPUs"). WHEELS and SITE name other folders; PIP another pip.
set -euo pipefail
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-.pysite}
PIP=${PIP:-python3 -m pip}
# The GPU machine's image has JAX, flax, optax, orbax-checkpoint, chex, absl-py, etils, scipy,
# pillow, torch and pytest (device tool, KINDS.md); of the project's dependencies and of the
# input benchmark's it lacks these, with what tensorflow-datasets and grain need.
MISSING=(
  ml-collections tensorboardx simplejpeg
  tensorflow-datasets tensorflow-metadata googleapis-common-protos termcolor toml
  immutabledict simple-parsing docstring-parser dm-tree array-record grain portpicker
)
BUILT=(promise)  # published as source only: built here into a (pure-Python) wheel
REFERENCE=pyautoattack

[[ -x .venv/bin/python ]] || {
  echo "gpu_packages.sh: no .venv here: run \`make install\` first (its versions are used)" >&2
  exit 2
}
installed=$(.venv/bin/uv pip list --python .venv/bin/python --format freeze)
version() {  # version NAME: the version .venv holds
  local found
  found=$(grep -i -E "^${1//-/[-_.]}==" <<<"$installed" | cut -d= -f3) || true
  [[ -n $found ]] || {
    echo "gpu_packages.sh: $1 is not installed in .venv: expected every package of MISSING" >&2
    exit 2
  }
  echo "$found"
}

mkdir -p "$WHEELS"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
specs=()
for name in "${MISSING[@]}"; do specs+=("$name==$(version "$name")"); done
# shellcheck disable=SC2086  # PIP is a command with its arguments
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$WHEELS" "${specs[@]}"
for name in "${BUILT[@]}"; do
  # shellcheck disable=SC2086
  $PIP wheel -q --no-deps -w "$WHEELS" "$name==$(version "$name")"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2086
$PIP download -q --no-deps --only-binary=:all: -d "$tmp" "$REFERENCE==$(version $REFERENCE)"
mkdir -p "$SITE"
python3 - "$tmp"/*.whl "$SITE" <<'EOF'
import sys, zipfile
wheel, site = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extractall(site, [n for n in z.namelist() if not n.endswith(".pt")])
EOF
echo "gpu_packages.sh: $(find "$WHEELS" -name '*.whl' | wc -l) wheels in $WHEELS/, $REFERENCE in" \
  "$SITE/; $(du -sh "$WHEELS" "$SITE" | awk '{print $1}' | paste -sd+) to carry"
