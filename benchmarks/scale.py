"""Scale-out: images/s and model FLOP utilisation (MFU) of training and attack programs.

  .venv/bin/python benchmarks/scale.py [--models=cnn-small] [--modes=clean,adversarial,apgd]
      [--batch_size=0] [--steps=0] [--apgd_iter=100] [--apgd_calls=3] [--compute_dtype=float32]
      [--cpu_devices=-1] [--peak_tflops=0]
  .venv/bin/python benchmarks/scale.py --devices=1,2,4,8 --processes=2   # a scaling table
  .venv/bin/python benchmarks/scale.py --estimate [--models=vit-b16,wrn-28-10]  # lowering only
  python benchmarks/scale.py --models=wrn-28-10,vit-b16 --compute_dtype=bfloat16  # on a GPU/TPU

Modes, each compiled ahead (`compile_s`), called once to warm up (`first_call_s`), then timed
on one random batch (`step_s`, the mean of `--steps` calls; `--apgd_calls` for `apgd`):
- `clean`: one nominal training step (`training.make_train_step`, SGD with momentum);
- `adversarial`: one adversarial training step with the training attack of
  `adversarial.make_training_attack`: APGD-CE, 10 iterations, Linf 8/255, no random start,
  the model in eval mode, then the update in train mode;
- `apgd`: `attacks.apgd` (APGD-CE, `--apgd_iter` iterations, one restart) on the batch, as the
  evaluator runs it.

FLOPs. XLA's cost analysis (`compiled.cost_analysis()['flops']`) counts the body of a while
loop once, whatever its trip count (checked on XLA:CPU: a `lax.scan` or `fori_loop` of ten
matmuls reports the FLOPs of one), and a compiled SPMD program reports one device's share.
And XLA:GPU's count of a compiled program leaves out what it hands to cuDNN/cuBLAS. So the
FLOPs of a step are counted from passes (`seasoning.flops.pass_flops`): the cost analysis of one
forward pass, one forward+backward pass to the input (the attack's gradient) and one clean
training step (the model's forward+backward to the parameters and the update), each lowered
for a CPU device without loops (the same count whatever backend runs the step), times the
number of times the step runs it. An APGD run of n iterations evaluates its
start and every iterate: n + 1 forward+backward passes, plus the clean forward; a fully unrolled
loop (CPU, at most 16 evaluations) skips the last backward: n forward+backward and 2 forwards.
Model FLOPs: with `--remat`, the forward passes the backward passes recompute are not
counted (`pass_flops` lowers the model without remat), so MFU compares across remat settings.
On XLA:CPU, where the compiled step has no while loop at all (and no remat), its own cost
analysis (times the device count) is exact and is used; `flops_xla` is the raw figure of the
compiled step (on a GPU an undercount, kept to show it) and `flops_passes` the count from
passes (they agree within ~1-4% where both are exact). No MFU is printed from a count of 0.

Peak. On CPU, the machine's measured float32 matmul rate (a batched `jnp.dot` over every local
device; fake CPU devices and local processes share the same cores); on GPU and TPU, the dense
bf16 peak of the device kind (`PEAKS`) times the device count. `--peak_tflops` overrides the
peak of one device (CPU: of the whole machine).

Scaling (CPU): `--devices=1,2,4,8` runs every mode in a subprocess per device count (fake CPU
devices, `--cpu_devices`) at the same global batch; `--processes=2` adds a 2-process
jax.distributed job on localhost (`--process_devices` CPU devices each). The parent measures
the peak once and passes it on; only process 0 of a job prints.

Estimate (`--estimate`): lowers each model at its real resolution on this machine (nothing
runs), counts the FLOPs of an adversarial training step per image as above (a rolled attack
loop, as on accelerators), and turns them into images/s and minutes per epoch on `ESTIMATES`
(TPU v4-32: 16 chips; 8x H100 SXM) at an assumed MFU (`--assumed_mfu`). These are estimates,
not measurements, and are labelled so.

Prints one JSON line per model and mode and a markdown table. Run by hand; results go into
docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

# name -> (image shape, classes, default global batch, default timed steps, dataset size).
SETTINGS = {
    "cnn-small": ((28, 28, 1), 10, 128, 10, 60_000),
    "wrn-16-4": ((32, 32, 3), 10, 32, 3, 50_000),
    "wrn-28-10": ((32, 32, 3), 10, 128, 10, 50_000),
    "vit-b16": ((224, 224, 3), 1000, 128, 10, 1_281_167),
}
MODES = ("clean", "adversarial", "apgd")
EPS = 8 / 255
TRAIN_ATTACK_ITER = 10
# The `attack` config section of the adversarial mode: the fine-tuning recipe's APGD-CE 10.
TRAIN_ATTACK = dict(
    name="apgd", loss="ce", steps=TRAIN_ATTACK_ITER, step_size=0.0, random_start=False
)

# Dense bf16 peak TFLOP/s of one JAX device (one chip: v4 and v5p chips are one megacore
# device), from the vendors' data sheets (NVIDIA's "with sparsity" figures halved). Matched as
# substrings of the lower-cased `device.device_kind`, first match wins.
PEAKS = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h200 nvl", 835.0),
    ("h200", 989.0),  # SXM
    ("a100", 312.0),
    ("l40s", 362.0),
    ("l40", 181.0),
    ("l4", 121.0),
    ("tpu v4", 275.0),
    ("tpu v5 lite", 197.0),  # v5e
    ("tpu v5e", 197.0),
    ("tpu v5", 459.0),  # v5p ("TPU v5" or "TPU v5p")
    ("tpu v6 lite", 918.0),  # v6e (Trillium)
    ("tpu v6e", 918.0),
)
# Targets of `--estimate`: name -> (chip, chips, dense bf16 TFLOP/s per chip).
ESTIMATES = {
    "TPU v4-32": ("TPU v4", 16, 275.0),  # v4-N counts TensorCores: 16 chips, 4 hosts
    "8x H100 SXM": ("H100 SXM", 8, 989.0),
}

_MODELS = flags.DEFINE_list("models", ["cnn-small"], f"Models, from {list(SETTINGS)}.")
_MODES = flags.DEFINE_list("modes", list(MODES), f"What to time, from {list(MODES)}.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the model's default).")
_STEPS = flags.DEFINE_integer("steps", 0, "Timed calls per mode (0: the model's default).")
_APGD_ITER = flags.DEFINE_integer("apgd_iter", 100, "APGD iterations of the `apgd` mode.")
_APGD_CALLS = flags.DEFINE_integer("apgd_calls", 3, "Timed calls of the `apgd` mode.")
_VIT_ATTENTION = flags.DEFINE_enum(
    "vit_attention",
    "einsum",
    ["einsum", "fused"],
    "ViT models: Flax's attention, or jax.nn.dot_product_attention (cuDNN's on GPUs).",
)
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise every block (models that have remat).")
_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", ["float32", "bfloat16"], "The models' compute dtype."
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", -1, "CPU only: JAX devices to split the host CPU into (-1: as the drivers)."
)
_PEAK = flags.DEFINE_float(
    "peak_tflops", 0.0, "Peak TFLOP/s of one device (CPU: the machine); 0: table or measured."
)
_DEVICES = flags.DEFINE_list(
    "devices", [], "Scaling: a subprocess per CPU device count (e.g. 1,2,4,8), same global batch."
)
_PROCESSES = flags.DEFINE_list(
    "processes", [], "Scaling: also a jax.distributed job of this many local processes (e.g. 2)."
)
_PROCESS_DEVICES = flags.DEFINE_integer("process_devices", 2, "CPU devices per local process.")
_ESTIMATE = flags.DEFINE_bool(
    "estimate", False, "Only estimate adversarial training on ESTIMATES (lowering, no running)."
)
_ASSUMED_MFU = flags.DEFINE_float("assumed_mfu", 0.4, "The MFU the estimate assumes.")
_ESTIMATE_ITER = flags.DEFINE_list(
    "estimate_attack_iter", ["2", "10"], "APGD iterations of the estimated training attack."
)
_CHILD = flags.DEFINE_bool("child", False, "Internal: one layout of a scaling run (no table).")
_PEAK_SOURCE = flags.DEFINE_string("peak_source", "", "Internal: where --peak_tflops came from.")


# --------------------------------------------------------------------------------------------
# FLOPs and peaks


def attack_passes(n_iter: int, unrolled: bool) -> tuple[int, int]:
    """(forward+backward passes, forward-only passes) of one APGD run of `n_iter` iterations."""
    return (n_iter, 2) if unrolled else (n_iter + 1, 1)


def step_passes(mode: str, per_image: dict[str, float], apgd_iter: int) -> float:
    """FLOPs per image of one call of `mode`, counted from passes (see module doc)."""
    from seasoning.attacks.apgd import resolve_unroll

    if mode == "clean":
        return per_image["train"]
    n_iter = TRAIN_ATTACK_ITER if mode == "adversarial" else apgd_iter
    unrolled = resolve_unroll(None, n_iter + 1) is True
    grads, forwards = attack_passes(n_iter, unrolled)
    attack = grads * per_image["input_grad"] + forwards * per_image["forward"]
    return attack + (per_image["train"] if mode == "adversarial" else 0.0)


def device_peak_tflops(device) -> tuple[float, str]:
    """(dense bf16 peak TFLOP/s, source) of one accelerator, or (0, reason) if unknown."""
    kind = device.device_kind.lower()
    for pattern, peak in PEAKS:
        if pattern in kind:
            return peak, f"table: {device.device_kind} bf16 dense"
    return 0.0, f"unknown device kind {device.device_kind!r}: pass --peak_tflops"


def measure_cpu_peak_tflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 matmul rate: a batched `jnp.dot`, one [n, n] matmul a device."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from seasoning import parallel

    mesh = parallel.make_mesh(jax.local_devices())
    sharding = NamedSharding(mesh, PartitionSpec(parallel.DATA_AXIS))
    a = jax.device_put(jnp.ones((mesh.size, n, n), jnp.float32), sharding)
    matmul = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a), out_shardings=sharding)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * mesh.size * n**3 / best / 1e12


def peak_tflops() -> tuple[float, str]:
    """(peak TFLOP/s of every device together, source)."""
    import jax

    if jax.default_backend() == "cpu":
        if _PEAK.value:
            return _PEAK.value, _PEAK_SOURCE.value or "--peak_tflops (CPU machine)"
        return measure_cpu_peak_tflops(), "measured float32 matmul (CPU machine)"
    if _PEAK.value:
        return _PEAK.value * jax.device_count(), "--peak_tflops x devices"
    peak, source = device_peak_tflops(jax.devices()[0])
    if _DTYPE.value != "bfloat16":
        source += f" (the models compute in {_DTYPE.value})"
    return peak * jax.device_count(), f"{source} x {jax.device_count()}"


# --------------------------------------------------------------------------------------------
# Measurement


def _timed(call, steps: int) -> tuple[float, float]:
    """(first call, mean of the next `steps` calls) in seconds; `call()` must block."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        call()
    return first, (time.perf_counter() - t0) / steps


def measure(name: str, mode: str, batch: int, steps: int) -> dict:
    """Seconds per call of `mode` on `name` and the FLOPs of the compiled program."""
    import jax
    import ml_collections
    import numpy as np
    import optax

    from seasoning import adversarial, attacks, models, parallel, threat, training
    from seasoning import flops as flops_lib

    shape, num_classes = SETTINGS[name][:2]
    model = models.get_model(name, num_classes=num_classes, **model_options(name))
    mesh = parallel.make_mesh()
    parallel.check_batch_size(batch, mesh)
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
    state = jax.jit(
        lambda key: training.create_train_state(model, optax.sgd(0.01, 0.9), key, shape),
        out_shardings=replicated,
    )(jax.random.key(0))
    rows = batch // jax.process_count()
    rng = np.random.default_rng(jax.process_index())
    data = parallel.host_to_global(
        {
            "image": rng.random((rows, *shape), dtype=np.float32),
            "label": rng.integers(0, num_classes, rows).astype(np.int32),
        },
        mesh,
    )
    keys = iter(range(10**9))
    if mode == "apgd":
        tm = threat.ThreatModel("linf", EPS)

        def run(variables, x, y, key):
            logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
            return attacks.apgd(
                logits_fn, x, y, tm, key=key, loss="ce", n_iter=_APGD_ITER.value, n_restarts=1
            )

        program = jax.jit(
            run, in_shardings=(replicated, sharded, sharded, replicated), out_shardings=sharded
        )
        variables = state.variables()
        args = (variables, data["image"], data["label"], jax.random.key(0))

        def call():
            jax.block_until_ready(
                program(variables, data["image"], data["label"], jax.random.key(next(keys)))
            )

    else:
        attack = None
        if mode == "adversarial":
            attack = adversarial.make_training_attack(
                ml_collections.ConfigDict({"norm": "linf", "eps": EPS}),
                ml_collections.ConfigDict(TRAIN_ATTACK),
            )
        program = training.make_train_step(mesh, model=model, attack=attack)
        args = (state, data, jax.random.key(0))

        def call():
            nonlocal state
            state, metrics = program(state, data, jax.random.key(next(keys)))
            jax.block_until_ready(metrics)

    t0 = time.perf_counter()
    program = program.lower(*args).compile()  # the calls above run this compiled program
    compile_s = time.perf_counter() - t0
    # What the backend made of the step: XLA fusions, library calls (cuDNN, cuBLAS, ...),
    # loops and host round trips (none expected).
    counts = flops_lib.program_ops(program)
    has_loop = counts["while_loops"] > 0
    flops_xla = flops_lib.cost_flops(program) * mesh.size  # one device's share of the SPMD program
    first, seconds = _timed(call, steps)
    return dict(
        seconds=seconds,
        first=first,
        compile=compile_s,
        flops_xla=flops_xla,
        has_loop=has_loop,
        hlo=counts,
    )


def model_options(name: str) -> dict:
    """`get_model` options of the flags: dtype, remat, and the ViT's attention."""
    options = {"dtype": _DTYPE.value}
    if _REMAT.value:
        options["remat"] = True
    if name.startswith("vit"):
        options["attention"] = _VIT_ATTENTION.value
    return options


def describe(mode: str) -> str:
    if mode == "clean":
        return "none"
    n_iter = TRAIN_ATTACK_ITER if mode == "adversarial" else _APGD_ITER.value
    return f"apgd-ce {n_iter} it., linf {EPS:.4f}"


def run_modes() -> list[dict]:
    """Times every model and mode on this process's devices; process 0 prints JSON lines."""
    import jax

    from seasoning import flops as flops_lib
    from seasoning import models

    peak, peak_source = peak_tflops()
    rows = []
    for name in _MODELS.value:
        shape, num_classes, default_batch, default_steps, _ = SETTINGS[name]
        batch = _BATCH.value or default_batch
        steps = _STEPS.value or default_steps
        model = models.get_model(name, num_classes=num_classes, **model_options(name))
        per_image = flops_lib.pass_flops(model, shape, batch)
        for mode in _MODES.value:
            m = measure(name, mode, batch, _APGD_CALLS.value if mode == "apgd" else steps)
            passes = step_passes(mode, per_image, _APGD_ITER.value) * batch
            # The compiled step's own count only where it is exact: XLA:CPU, no while loop,
            # no rematerialisation (whose recomputed forward passes are not model FLOPs).
            exact_xla = jax.default_backend() == "cpu" and not m["has_loop"] and not _REMAT.value
            flops = m["flops_xla"] if exact_xla else passes
            achieved = flops / m["seconds"] / 1e12
            row = {
                "benchmark": "scale",
                "model": name,
                "mode": mode,
                "attack": describe(mode),
                "compute_dtype": _DTYPE.value,
                "batch_size": batch,
                "model_options": model_options(name),
                "hlo": m["hlo"],
                "devices": jax.device_count(),
                "processes": jax.process_count(),
                "backend": jax.default_backend(),
                "device_kind": jax.devices()[0].device_kind,
                "cpu_count": os.cpu_count(),
                "step_s": round(m["seconds"], 4),
                "images_per_s": round(batch / m["seconds"], 1),
                "compile_s": round(m["compile"], 2),
                "first_call_s": round(m["first"], 3),
                "gflops_per_image": round(flops / batch / 1e9, 4),
                "flops_method": "xla, compiled (cpu, no loop)"
                if exact_xla
                else "passes, lowered for the cpu",
                "flops_xla": m["flops_xla"],
                "flops_passes": passes,
                "achieved_tflops": round(achieved, 4),
                "peak_tflops": round(peak, 4),
                "peak_source": peak_source,
                "mfu": round(achieved / peak, 4) if peak and flops > 0 else None,
            }
            rows.append(row)
            if jax.process_index() == 0:
                print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# Scaling: one subprocess (or one jax.distributed job) per layout


def _child_argv(cpu_devices: int, peak: float, peak_source: str) -> list[str]:
    return [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"--models={','.join(_MODELS.value)}",
        f"--modes={','.join(_MODES.value)}",
        f"--batch_size={_BATCH.value}",
        f"--steps={_STEPS.value}",
        f"--apgd_iter={_APGD_ITER.value}",
        f"--apgd_calls={_APGD_CALLS.value}",
        f"--compute_dtype={_DTYPE.value}",
        f"--vit_attention={_VIT_ATTENTION.value}",
        f"--remat={_REMAT.value}",
        f"--cpu_devices={cpu_devices}",
        f"--peak_tflops={peak}",
        f"--peak_source={peak_source}",
    ]


def run_layout(processes: int, cpu_devices: int, peak: float, peak_source: str) -> list[dict]:
    """Runs one layout (`processes` local processes, `cpu_devices` each); process 0's rows."""
    from seasoning import parallel

    layout = f"{processes}x{cpu_devices}"
    port = parallel.free_local_port()
    procs = []
    with tempfile.TemporaryDirectory() as logs:  # files, not pipes: nobody reads while they run
        for i in range(processes):
            with open(os.path.join(logs, f"{i}.log"), "w") as log:
                procs.append(
                    subprocess.Popen(
                        _child_argv(cpu_devices, peak, peak_source),
                        env=parallel.local_process_env(i, processes, port),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for p in procs:
            p.wait()
        outputs = []
        for i in range(processes):
            with open(os.path.join(logs, f"{i}.log")) as log:
                outputs.append(log.read())
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        if p.returncode:
            raise RuntimeError(f"layout {layout}, process {i} failed:\n{out[-4000:]}")
    rows = [json.loads(line) for line in outputs[0].splitlines() if line.startswith("{")]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def scaling() -> list[dict]:
    """Every layout of `--devices` and `--processes`, on fake CPU devices."""
    os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX starts: the peak of the CPU
    if _PEAK.value:
        peak, source = _PEAK.value, "--peak_tflops (CPU machine)"
    else:
        peak, source = measure_cpu_peak_tflops(), "measured float32 matmul (CPU machine, once)"
    rows = []
    for count in _DEVICES.value:
        rows += run_layout(1, int(count), peak, source)
    for count in _PROCESSES.value:
        rows += run_layout(int(count), _PROCESS_DEVICES.value, peak, source)
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table of measured rows, speed-up against the 1-device, 1-process row."""
    base = {
        (r["model"], r["mode"]): r["step_s"]
        for r in rows
        if r["devices"] == 1 and r["processes"] == 1
    }
    peaks = sorted({f"{r['peak_tflops']} TFLOP/s ({r['peak_source']})" for r in rows})
    lines = [
        f"MFU: the model FLOPs of a step (every pass, the attack's included) / step time / peak; "
        f"peak: {'; '.join(peaks)}",
        "",
        "| model | mode | processes x devices | global batch | step (ms) | images/s | "
        "speed-up vs 1 device | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one = base.get((r["model"], r["mode"]))
        speedup = f"{one / r['step_s']:.2f}x" if one else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['processes']} x "
            f"{r['devices'] // r['processes']} | {r['batch_size']} | {1000 * r['step_s']:.1f} | "
            f"{r['images_per_s']:.1f} | {speedup} | {mfu} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Estimate


def estimate() -> None:
    """Lowers each model at its resolution and prints estimated images/s on `ESTIMATES`."""
    from seasoning import flops as flops_lib
    from seasoning import models

    names = _MODELS.value if _MODELS.present else ["vit-b16", "wrn-28-10"]
    lines = [
        f"ESTIMATE (not measured): adversarial training at an assumed MFU of "
        f"{100 * _ASSUMED_MFU.value:.0f}%, dense bf16 peaks, FLOPs from XLA's cost analysis of "
        "one forward, one input gradient and one training step (lowered on this machine)",
        "",
        "| model | image | attack | GFLOP/image/step | target | peak (TFLOP/s) | images/s | "
        "min/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        shape, num_classes, _, _, epoch = SETTINGS[name]
        model = models.get_model(name, num_classes=num_classes, **model_options(name))
        per_image = flops_lib.pass_flops(model, shape, batch=8)
        for n_iter in (int(n) for n in _ESTIMATE_ITER.value):
            grads, forwards = attack_passes(n_iter, unrolled=False)  # a rolled loop
            flops = (
                per_image["train"]
                + grads * per_image["input_grad"]
                + forwards * per_image["forward"]
            )
            for target, (chip, chips, chip_peak) in ESTIMATES.items():
                peak = chips * chip_peak * 1e12
                images_per_s = _ASSUMED_MFU.value * peak / flops
                row = {
                    "benchmark": "scale_estimate",
                    "estimate": True,
                    "model": name,
                    "image_shape": shape,
                    "attack": f"apgd-ce {n_iter} it.",
                    "passes": {"train_step": 1, "input_grad": grads, "forward": forwards},
                    "gflops_per_image": {k: round(v / 1e9, 4) for k, v in per_image.items()},
                    "gflops_per_image_step": round(flops / 1e9, 3),
                    "target": target,
                    "chip": chip,
                    "chips": chips,
                    "peak_tflops": chips * chip_peak,
                    "assumed_mfu": _ASSUMED_MFU.value,
                    "images_per_s": round(images_per_s, 1),
                    "minutes_per_epoch": round(epoch / images_per_s / 60, 2),
                    "epoch_images": epoch,
                }
                print(json.dumps(row), flush=True)
                lines.append(
                    f"| {name} | {'x'.join(map(str, shape))} | {row['attack']} | "
                    f"{flops / 1e9:.1f} | {target} | {chips * chip_peak:.0f} | "
                    f"{images_per_s:.0f} | {row['minutes_per_epoch']:.1f} |"
                )
    print("\n" + "\n".join(lines))


def main(argv):
    del argv
    for name in _MODELS.value:
        if name not in SETTINGS:
            raise app.UsageError(f"Unknown model {name!r}; choose from {list(SETTINGS)}.")
    for mode in _MODES.value:
        if mode not in MODES:
            raise app.UsageError(f"Unknown mode {mode!r}; choose from {list(MODES)}.")
    if _ESTIMATE.value:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # lowering only: no accelerator needed
        estimate()
        return
    if _DEVICES.value or _PROCESSES.value:
        print("\n" + table(scaling()))
        return
    import jax

    from seasoning import parallel

    first_batch = _BATCH.value or SETTINGS[_MODELS.value[0]][2]
    parallel.split_cpu(_CPU_DEVICES.value, first_batch)
    parallel.initialize_distributed("auto")
    if jax.default_backend() == "cpu" and not _CHILD.value:
        big = [n for n in _MODELS.value if n in ("wrn-28-10", "vit-b16")]
        if big:
            print(f"note: timing {big} on the CPU is slow; see --estimate", file=sys.stderr)
    rows = run_modes()
    if not _CHILD.value and jax.process_index() == 0:
        print("\n" + table(rows))


if __name__ == "__main__":
    sys.exit(app.run(main))
