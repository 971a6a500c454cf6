#!/usr/bin/env bash
# The GPU checks in one prepared run, for a CUDA machine that already has jax[cuda], flax,
# optax, orbax-checkpoint, chex, absl-py, pytest and torch (e.g. a lent GPU machine). Steps,
# in the order `all` runs them (issue 27's figures first):
#   versions: versions and devices;
#   scale: benchmarks/scale.py: images/s and MFU of WRN-28-10 and ViT-B/16 clean and
#     adversarial (APGD-CE 10) training steps in bf16 (peak from the device kind's table; FLOPs
#     lowered for the CPU, `seasoning.flops`);
#   autoattack_cifar, apgd_cifar: benchmarks/autoattack.py and benchmarks/attacks.py on
#     WRN-28-10 and PreActResNet-18, both sides on the GPU, ours searching in float32 and in
#     bfloat16 (`--search_dtype`);
#   vit_*: ViT-B/16's levers: fused attention, per-device batch 256 and 512, remat on and off;
#   input: benchmarks/input.py: the input pipeline's images/s over 1-16 worker processes on
#     the host's cores (ImageNet-like JPEGs, CIFAR-like PNGs);
#   grid_*: benchmarks/grid.py: clean and robust soup grids, vmapped side by side or not;
#   autoattack: the whole standard AutoAttack beside the reference's on the Fashion-MNIST
#     models; train: adversarial-training images/s beside the PyTorch loop on the GPU;
#   tests: the attack and soup tests on the GPU (correctness of the GPU path: exact robust
#     accuracies, every adversarial example in its ball and the [0,1] box).
#
#   OUT=/tmp/gpu_run bash benchmarks/gpu.sh
#   OUT=$OUT BUDGET=540 STEPS=issue27 bash benchmarks/gpu.sh   # issue 27's figures, one call
#
# STEPS (default all) names the steps to run, in the order given, or a plan: issue27 (the
# steps issue 27's figures come from). BUDGET (seconds, default 0: none) bounds the whole run:
# each step's time limit is cut to what is left, and a step that would get under MIN_STEP
# seconds (default 20) is skipped and named in the log, to run in another call. Each step has
# its own time limit, and a failed step does not stop the next. Packages the machine lacks
# come from benchmarks/gpu_packages.sh, run where there is a network: wheels to install there
# first, and pyautoattack unpacked in SITE (default .pysite), which goes first on PYTHONPATH.
# Logs: $OUT/log.txt; benchmark JSON lines: $OUT/results.jsonl (each script prints a line per
# row as it finishes, so a step cut short keeps the rows it finished).
set -u
OUT=${OUT:-/tmp/seasoning_gpu}
SITE=${SITE:-.pysite}
PY=${PY:-python3}
BUDGET=${BUDGET:-0}
MIN_STEP=${MIN_STEP:-20}
for setting in "BUDGET=$BUDGET" "MIN_STEP=$MIN_STEP"; do
  [[ ${setting#*=} =~ ^[0-9]+$ ]] || {
    echo "gpu.sh: $setting: expected whole seconds (BUDGET 0: no bound)" >&2
    exit 2
  }
done

declare -a ORDER=()
declare -A LIMIT=() COMMAND=() SHOWN=()
define() {  # define NAME SECONDS COMMAND...: a step, its time limit and its command
  ORDER+=("$1")
  LIMIT[$1]=$2
  COMMAND[$1]=$(printf '%q ' "${@:3}")
  SHOWN[$1]="${*:3}"
}

define versions 60 bash -c 'nvidia-smi -L; '"$PY"' -c "
import jax, jaxlib, flax, optax, orbax.checkpoint, chex, ml_collections, torch
print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__,
      \"torch\", torch.__version__, \"backend\", jax.default_backend(), jax.devices())"'

# MFU of bf16 training (issues 13 and 27), the CPU-lowered FLOP count.
define scale "${SCALE_LIMIT:-180}" "$PY" benchmarks/scale.py --models=wrn-28-10,vit-b16 \
  --modes=clean,adversarial --compute_dtype=bfloat16 --steps=5

# Issue 27: AutoAttack and APGD-CE on the CIFAR-shaped models users evaluate, both sides on
# the GPU (random weights, labels = the model's predictions; rows say the points attacked),
# ours searching in float32 (TF32) and in bfloat16, every point judged in full float32.
define autoattack_cifar "${AA_CIFAR_LIMIT:-260}" "$PY" benchmarks/autoattack.py \
  --models=wrn-28-10,preact-resnet-18 --n_points=500 --batch_size=500 \
  --search_dtypes=float32,bfloat16

# Issue 27's levers for ViT-B/16 adversarial training (bf16, APGD-CE 10), each against the
# scale step: fused attention (cuDNN), a bigger per-device batch, remat on and off.
vit=("$PY" benchmarks/scale.py --models=vit-b16 --modes=adversarial --compute_dtype=bfloat16
     --steps=3)
define vit_fused "${VIT_LIMIT:-70}" "${vit[@]}" --vit_attention=fused
define vit_b256 "${VIT_LIMIT:-70}" "${vit[@]}" --vit_attention=fused --batch_size=256
define vit_b256_remat "${VIT_LIMIT:-70}" "${vit[@]}" --vit_attention=fused --batch_size=256 --remat
define vit_b512_remat "${VIT_LIMIT:-70}" "${vit[@]}" --vit_attention=fused --batch_size=512 --remat

define apgd_cifar "${APGD_LIMIT:-120}" "$PY" benchmarks/attacks.py \
  --models=wrn-28-10,preact-resnet-18 --n_iter=100 --norm=linf --batch_size=500

define input "${INPUT_LIMIT:-200}" "$PY" benchmarks/input.py --seconds=3 --jpegs=1024 \
  --pipelines=pil_one_thread,imagenet_train,imagenet_eval,cifar10_train --workers=0,1,2,4,8,16

define grid_cnn_v1 "${GRID_LIMIT:-90}" "$PY" benchmarks/grid.py --model=cnn-small \
  --soups=66 --chunk=66 --vectorize=1 --points=5000 --robust_points=1000
define grid_cnn_v11 "${GRID_LIMIT:-90}" "$PY" benchmarks/grid.py --model=cnn-small \
  --soups=66 --chunk=66 --vectorize=11 --points=5000 --robust_points=1000
define grid_wrn_v1 "${GRID_LIMIT:-90}" "$PY" benchmarks/grid.py --model=wrn-16-4 \
  --soups=11 --chunk=11 --vectorize=1 --points=2000 --robust_points=500

define autoattack "${AA_LIMIT:-240}" "$PY" benchmarks/autoattack.py --models=mlp,cnn-small \
  --n_points=1000 --batch_size=1000 --search_dtypes=float32,bfloat16
define train "${TRAIN_LIMIT:-120}" "$PY" benchmarks/train.py --models=cnn-small,wrn-16-4 \
  --modes=nominal,linf --batch_size=128 --steps=20
# Several test processes share the GPU: no up-front 75% allocation each. XLA:GPU of jax 0.11.2
# aborts compiling one small L1 test program ("select_n... is live and cannot be removed");
# disabling the multi-output fusion pass avoids it (see docs/training.md, "GPUs").
read -r -a tests <<<"${TESTS:-tests/test_attacks.py tests/test_soup.py}"
define tests "${TEST_LIMIT:-150}" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_disable_hlo_passes=multi_output_fusion" "$PY" -m pytest -q \
  -n 8 -p no:cacheprovider "${tests[@]}"

declare -A PLANS=(
  [all]="${ORDER[*]}"
  [issue27]="versions scale autoattack_cifar vit_fused vit_b256 vit_b256_remat vit_b512_remat apgd_cifar"
)
selected=()
read -r -a words <<<"${STEPS:-all}"
for name in "${words[@]}"; do  # a plan's name stands for its steps
  read -r -a named <<<"${PLANS[$name]:-$name}"
  selected+=("${named[@]}")
done
for name in "${selected[@]}"; do
  [[ -v "LIMIT[$name]" ]] || {
    echo "gpu.sh: STEPS names '$name': expected steps from (${ORDER[*]}) or a plan (${!PLANS[*]})" >&2
    exit 2
  }
done

mkdir -p "$OUT"
export PYTHONPATH="$PWD/$SITE:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
LOG="$OUT/log.txt"
echo "== gpu.sh ($(date +%T)): ${selected[*]}; BUDGET ${BUDGET} s" | tee -a "$LOG"
skipped=()
for name in "${selected[@]}"; do
  limit=${LIMIT[$name]}
  if ((BUDGET)); then
    left=$((BUDGET - SECONDS - 2))
    if ((left < MIN_STEP)); then
      echo "== $name: skipped, ${left} s of BUDGET=$BUDGET left (run it in another call)" |
        tee -a "$LOG"
      skipped+=("$name")
      continue
    fi
    ((limit > left)) && limit=$left
  fi
  echo "== $name ($(date +%T), limit ${limit}s): ${SHOWN[$name]}" | tee -a "$LOG"
  t0=$SECONDS
  # Both the tee and stderr append to the log (never read from it).
  # shellcheck disable=SC2094
  eval "timeout $limit ${COMMAND[$name]}" \
    > >(tee -a "$LOG" | grep '^{' >>"$OUT/results.jsonl") 2>>"$LOG"
  echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$LOG"
done
echo "== done ($(date +%T))" | tee -a "$LOG"
if ((${#skipped[@]})); then
  echo "== not run for lack of BUDGET: STEPS=\"${skipped[*]}\" in another call" | tee -a "$LOG"
fi
