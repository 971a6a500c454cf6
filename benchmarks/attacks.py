"""Attack throughput: images/s of our jitted APGD-CE against fra31's PyTorch APGDAttack.

  .venv/bin/python benchmarks/attacks.py [--models=cnn-small,wrn-16-4] [--n_iter=10]
      [--norm=linf] [--batch_size=0] [--repeats=3] [--threads=0] [--unroll=auto]

Both sides attack the same batch with the same weights (the PyTorch twin of the Flax model,
`seasoning.testing.torch_twins`), the same threat model and the same budget (1 restart, `n_iter`
iterations), on this machine (the reference on the GPU when there is one, `--torch_device`),
after one warm-up call each (ours compiles in it). The labels are the model's own predictions,
so the reference (which only attacks correctly classified points) attacks the whole batch, as
ours does. Prints one JSON line per model. Run by hand; results go into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

# name -> (default batch size, image shape)
SETTINGS = {
    "cnn-small": (128, (28, 28, 1)),
    "wrn-16-4": (32, (32, 32, 3)),
    "wrn-28-10": (500, (32, 32, 3)),  # the models users evaluate (a GPU's sizes)
    "preact-resnet-18": (500, (32, 32, 3)),
}
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}

_MODELS = flags.DEFINE_list("models", list(SETTINGS), f"Models, from {list(SETTINGS)}.")
_N_ITER = flags.DEFINE_integer("n_iter", 10, "APGD iterations (1 restart).")
_NORM = flags.DEFINE_enum("norm", "linf", list(DEFAULT_EPS), "Threat model norm.")
_EPS = flags.DEFINE_float("eps", None, f"Radius (default per norm: {DEFAULT_EPS}).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Batch size (0: the model's default).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per side (the median is reported).")
_THREADS = flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: os.cpu_count()).")
_UNROLL = flags.DEFINE_string("unroll", "auto", "Our APGD loop: auto, true, or k >= 1.")
_TORCH_DEVICE = flags.DEFINE_enum(
    "torch_device", "auto", ["auto", "cpu", "cuda"], "The reference's device (auto: cuda if any)."
)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, batch: int, shape: tuple[int, ...], tm, unroll, device: str) -> dict:
    """Seconds per APGD-CE call (ours, first call, reference) on one model and batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from pyautoattack.autopgd_base import APGDAttack

    from seasoning import attacks, models
    from seasoning.testing import torch_twins

    model = models.get_model(name, num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    x = jax.random.uniform(jax.random.key(1), (batch, *shape))
    y = jnp.argmax(model.apply(variables, x, train=False), axis=-1)

    @jax.jit
    def ours(variables, x, y, key):
        logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
        return attacks.apgd(
            logits_fn,
            x,
            y,
            tm,
            key=key,
            loss="ce",
            n_iter=_N_ITER.value,
            n_restarts=1,
            unroll=unroll,
        )

    def run_ours():
        jax.block_until_ready(ours(variables, x, y, jax.random.key(2)))

    t0 = time.perf_counter()
    run_ours()
    first_s = time.perf_counter() - t0
    ours_s = _median_seconds(run_ours, _REPEATS.value)

    twin = torch_twins.torch_model(name, variables, num_classes=10).to(device)
    apgd = APGDAttack(
        twin,
        n_iter=_N_ITER.value,
        norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[tm.norm],
        n_restarts=1,
        eps=tm.eps,
        seed=0,
        loss="ce",
        device=device,
    )
    x_t = torch_twins.to_torch(x).to(device)
    y_t = torch.from_numpy(np.asarray(y, np.int64)).to(device)

    def run_reference():
        apgd.perturb(x_t, y_t)
        if device == "cuda":
            torch.cuda.synchronize()

    run_reference()
    reference_s = _median_seconds(run_reference, _REPEATS.value)
    return dict(ours=ours_s, first=first_s, reference=reference_s)


def main(argv):
    del argv
    import jax
    import torch

    from seasoning import threat

    threads = _THREADS.value or os.cpu_count()
    torch.set_num_threads(threads)
    device = _TORCH_DEVICE.value
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    unroll = {"auto": None, "true": True}.get(_UNROLL.value.lower())
    if unroll is None and _UNROLL.value.lower() != "auto":
        unroll = int(_UNROLL.value)
    eps = DEFAULT_EPS[_NORM.value] if _EPS.value is None else _EPS.value
    tm = threat.ThreatModel(_NORM.value, eps)
    for name in _MODELS.value:
        if name not in SETTINGS:
            raise app.UsageError(f"Unknown model {name!r}; choose from {list(SETTINGS)}.")
        default_batch, shape = SETTINGS[name]
        batch = _BATCH.value or default_batch
        s = bench(name, batch, shape, tm, unroll, device)
        print(
            json.dumps(
                {
                    "benchmark": "apgd-ce",
                    "model": name,
                    "batch_size": batch,
                    "image_shape": shape,
                    "norm": _NORM.value,
                    "eps": round(eps, 6),
                    "n_iter": _N_ITER.value,
                    "unroll": _UNROLL.value,
                    "backend": jax.default_backend(),
                    "cpu_count": os.cpu_count(),
                    "torch_threads": threads,
                    "torch_device": device,
                    "ours_images_per_s": round(batch / s["ours"], 1),
                    "reference_images_per_s": round(batch / s["reference"], 1),
                    "ratio": round(s["reference"] / s["ours"], 3),
                    "ours_first_call_s": round(s["first"], 2),
                }
            )
        )


if __name__ == "__main__":
    sys.exit(app.run(main))
