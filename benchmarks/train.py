"""Training throughput: images/s of the jitted, sharded train_step on this machine.

  .venv/bin/python benchmarks/train.py [--model=cnn-small] [--batch_size=128] [--devices=1]

Prints one JSON line per setting. Run by hand; results go into README.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "cnn-small", "Model name (models.get_model).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Fake CPU devices (1 = the plain CPU).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after one warm-up step).")
_IMAGE = flags.DEFINE_string("image_shape", "28,28,1", "H,W,C of the inputs.")


def main(argv):
    del argv
    import jax

    jax.config.update("jax_num_cpu_devices", _DEVICES.value)
    import numpy as np
    import optax

    from seasoning import models, parallel, training

    shape = tuple(int(s) for s in _IMAGE.value.split(","))
    model = models.get_model(_MODEL.value, num_classes=10)
    mesh = parallel.make_mesh()
    state = jax.jit(
        lambda key: training.create_train_state(model, optax.sgd(0.01, 0.9), key, shape),
        out_shardings=parallel.replicated(mesh),
    )(jax.random.key(0))
    step = training.make_train_step(mesh, model=model)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((_BATCH.value, *shape), dtype=np.float32),
        "label": rng.integers(0, 10, _BATCH.value).astype(np.int32),
    }
    batch = parallel.host_to_global(batch, mesh)
    t0 = time.perf_counter()
    state, metrics = step(state, batch, jax.random.key(0))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(_STEPS.value):
        state, metrics = step(state, batch, jax.random.key(i))
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / _STEPS.value
    print(json.dumps({
        "benchmark": "train_step", "mode": "nominal", "model": _MODEL.value,
        "batch_size": _BATCH.value, "devices": jax.device_count(),
        "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
        "ms_per_step": round(1000 * seconds, 2), "images_per_s": round(_BATCH.value / seconds, 1),
        "first_step_s": round(compile_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    sys.exit(app.run(main))
