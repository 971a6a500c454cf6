"""Training throughput: images/s of our jitted train_step beside a PyTorch loop.

  .venv/bin/python benchmarks/train.py [--models=cnn-small,wrn-16-4] [--modes=nominal,linf]
      [--devices=-1] [--steps=0] [--batch_size=0] [--reference=true] [--threads=0]
      [--torch_device=auto]

For each model and mode, one optimiser step (SGD, momentum 0.9) on a fixed batch:
`nominal` trains on the clean images; `linf`, `l2` and `l1` first attack the batch with
APGD-CE, 10 iterations, as adversarial training does (`seasoning.adversarial`, the
fine-tuning recipe's attack), with the model in eval mode, then update it in train mode.

The PyTorch loop runs the same model (the twin from `seasoning.testing.torch_twins`, built from the
same initial weights), batch and attack: fra31's APGD (`pyautoattack`,
`APGDAttack.attack_single_run`: every point of the batch, 10 iterations, no random start,
the highest-loss point kept), then a train-mode forward, backward and `torch.optim.SGD` step.
Both sides get one warm-up step (ours compiles in it). Our side uses `--devices` CPU devices
(-1: what the drivers use, `parallel.split_cpu`); PyTorch uses `--threads` threads (0: all
cores) on `--torch_device` (auto: CUDA when torch sees a GPU, else the CPU). On a GPU both
sides run on the one accelerator and `--devices` has no effect.

Prints one JSON line per model and mode. Run by hand; results go into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

# name -> (default batch size, image shape, default timed steps)
SETTINGS = {
    "cnn-small": (128, (28, 28, 1), 10),
    "wrn-16-4": (32, (32, 32, 3), 3),
}
# The radii of the soups paper on CIFAR-10 (the inputs are random: only the speed matters).
EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}
N_ITER = 10

_MODELS = flags.DEFINE_list("models", list(SETTINGS), f"Models, from {list(SETTINGS)}.")
_MODES = flags.DEFINE_list("modes", ["nominal", "linf"], "Modes: nominal, linf, l2, l1.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch size (0: the model's default).")
_DEVICES = flags.DEFINE_integer(
    "devices", -1, "Our CPU devices: -1 as the drivers (split_cpu), 0 or 1 the plain CPU."
)
_STEPS = flags.DEFINE_integer("steps", 0, "Timed steps per side (0: the model's default).")
_REFERENCE = flags.DEFINE_bool("reference", True, "Also time the PyTorch loop.")
_THREADS = flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: os.cpu_count()).")
_TORCH_DEVICE = flags.DEFINE_enum(
    "torch_device", "auto", ["auto", "cpu", "cuda"], "PyTorch device (auto: cuda if available)."
)


def _seconds_per_step(step, steps: int) -> tuple[float, float]:
    """(first call, mean of the next `steps` calls) in seconds; `step()` must block."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - t0) / steps


def ours(name, mode, batch, shape, steps, rng):
    """Seconds per step of `training.make_train_step` and the initial variables."""
    import jax
    import ml_collections
    import numpy as np
    import optax

    from seasoning import adversarial, models, parallel, training

    model = models.get_model(name, num_classes=10)
    mesh = parallel.make_mesh()
    state = jax.jit(
        lambda key: training.create_train_state(model, optax.sgd(0.01, 0.9), key, shape),
        out_shardings=parallel.replicated(mesh),
    )(jax.random.key(0))
    initial = jax.tree.map(np.asarray, state.variables())  # before donation
    norm = "none" if mode == "nominal" else mode
    attack = adversarial.make_training_attack(
        ml_collections.ConfigDict({"norm": norm, "eps": EPS.get(mode, 0.0)}),
        ml_collections.ConfigDict(
            {
                "name": "none" if mode == "nominal" else "apgd",
                "loss": "ce",
                "steps": N_ITER,
                "step_size": 0.0,
                "random_start": False,
            }
        ),
    )
    train_step = training.make_train_step(mesh, model=model, attack=attack)
    data = parallel.host_to_global(
        {
            "image": rng.random((batch, *shape), dtype=np.float32),
            "label": rng.integers(0, 10, batch).astype(np.int32),
        },
        mesh,
    )
    counter = iter(range(10**9))

    def step():
        nonlocal state
        state, metrics = train_step(state, data, jax.random.key(next(counter)))
        jax.block_until_ready(metrics)

    first, seconds = _seconds_per_step(step, steps)
    return first, seconds, initial, jax.tree.map(np.asarray, data)


def reference(name, mode, variables, data, steps, device):
    """Seconds per step of the PyTorch loop on the twin of `variables`, on `device`."""
    import numpy as np
    import torch
    from pyautoattack.autopgd_base import APGDAttack

    from seasoning.testing import torch_twins

    twin = torch_twins.torch_model(name, variables, num_classes=10).to(device)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    x = torch_twins.to_torch(data["image"]).to(device)
    y = torch.from_numpy(np.asarray(data["label"], np.int64)).to(device)
    apgd = None
    if mode != "nominal":
        apgd = APGDAttack(
            twin,
            n_iter=N_ITER,
            norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[mode],
            n_restarts=1,
            eps=EPS[mode],
            seed=0,
            loss="ce",
            device=device,
        )
        apgd.init_hyperparam(x)  # what `perturb` does before attacking

    def step():
        images = x
        if apgd is not None:
            twin.eval()
            images = apgd.attack_single_run(x, y, x_init=x)[0].detach()  # no random start
        twin.train()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(twin(images), y)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return _seconds_per_step(step, steps)


def main(argv):
    del argv
    import jax

    from seasoning import parallel

    first_batch = _BATCH.value or SETTINGS[_MODELS.value[0]][0]
    if _DEVICES.value < 0:
        parallel.split_cpu(-1, first_batch)
    elif _DEVICES.value > 1:
        jax.config.update("jax_num_cpu_devices", _DEVICES.value)
    import numpy as np

    threads = _THREADS.value or os.cpu_count()
    torch_device = "cpu"
    if _REFERENCE.value:
        import torch

        torch.set_num_threads(threads)
        torch_device = _TORCH_DEVICE.value
        if torch_device == "auto":
            torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in _MODELS.value:
        if name not in SETTINGS:
            raise app.UsageError(f"Unknown model {name!r}; choose from {list(SETTINGS)}.")
        default_batch, shape, default_steps = SETTINGS[name]
        batch = _BATCH.value or default_batch
        steps = _STEPS.value or default_steps
        for mode in _MODES.value:
            if mode != "nominal" and mode not in EPS:
                raise app.UsageError(f"Unknown mode {mode!r}; choose nominal, linf, l2 or l1.")
            rng = np.random.default_rng(0)
            first, seconds, variables, data = ours(name, mode, batch, shape, steps, rng)
            out = {
                "benchmark": "train_step",
                "model": name,
                "mode": mode,
                "attack": "none" if mode == "nominal" else f"apgd-ce {N_ITER} it.",
                "batch_size": batch,
                "devices": jax.device_count(),
                "backend": jax.default_backend(),
                "cpu_count": os.cpu_count(),
                "ours_images_per_s": round(batch / seconds, 1),
                "ours_first_step_s": round(first, 2),
            }
            if _REFERENCE.value:
                _, ref_seconds = reference(name, mode, variables, data, steps, torch_device)
                out["torch_device"] = torch_device
                out["torch_threads"] = threads
                out["reference_images_per_s"] = round(batch / ref_seconds, 1)
                out["ratio"] = round(ref_seconds / seconds, 3)
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(app.run(main))
