"""Soup-grid throughput: the compiled, vmapped grid against a Python loop over soups.

  .venv/bin/python benchmarks/grid.py [--model=cnn-small] [--soups=66] [--points=1000]

Prints JSON lines: seconds and soups/s for (1) G forward passes of one plain model on the
points, (2) the compiled grid (clean accuracy of G soups), (3) the loop that materialises each
soup (`soup.combine`) and evaluates it; and the same for robust accuracy (APGD-CE + APGD-T,
few iterations). Targets: (2) <= 1.1 x (1) and (3) >= 3 x (2). Run by hand; results go into
README.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "cnn-small", "Model name.")
_SOUPS = flags.DEFINE_integer("soups", 66, "G: soups in the grid (simplex of 3, step 0.1: 66).")
_POINTS = flags.DEFINE_integer("points", 1000, "Evaluation points.")
_ROBUST_POINTS = flags.DEFINE_integer("robust_points", 100, "Points for the robust runs.")
_CHUNK = flags.DEFINE_integer("chunk", 11, "Soups per compiled call.")
_VECTORIZE = flags.DEFINE_integer("vectorize", 1, "Soups vmapped side by side in the program.")


def _timed(fn, repeats: int = 2) -> float:
    fn()  # compile / warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv):
    del argv
    import jax
    import numpy as np

    from seasoning import models, parallel, soup, threat
    from seasoning.soup import grid as grid_lib

    model = models.get_model(_MODEL.value, num_classes=10)
    shape = (28, 28, 1) if _MODEL.value == "cnn-small" else (32, 32, 3)
    ingredients = [
        model.init(jax.random.key(i), np.zeros((1, *shape), np.float32), train=False)
        for i in range(3)
    ]
    weights = soup.simplex_grid(3, 0.1)[: _SOUPS.value].astype(np.float32)
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)

    def apply_fn(v, x):
        return model.apply(v, x, train=False)

    stacked = soup.stack(ingredients)
    info = {
        "model": _MODEL.value,
        "soups": len(weights),
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
    }

    def run_one(kind, n_points, threats):
        x = rng.random((n_points, *shape), dtype=np.float32)
        batch = {
            "image": x,
            "label": rng.integers(0, 10, n_points).astype(np.int32),
            "mask": np.ones(n_points, np.float32),
        }

        def batches(batch=batch):
            return iter([batch])

        settings = dict(threats=threats, version="fast", n_iter=5, n_target_classes=1)
        key = jax.random.key(0)
        program = grid_lib.make_chunk_program(
            apply_fn, mesh, vectorize=_VECTORIZE.value, **settings
        )
        grid_s = _timed(
            lambda: grid_lib.evaluate_grid(
                program, stacked, weights, batches, key=key, chunk=_CHUNK.value, mesh=mesh
            )
        )
        loop_s = _timed(
            lambda: grid_lib.evaluate_one_by_one(
                apply_fn, ingredients, weights, batches, key=key, mesh=mesh, **settings
            ),
            1,
        )
        out = {
            "benchmark": "soup_grid",
            "vectorize": _VECTORIZE.value,
            "metric": kind,
            "points": n_points,
            **info,
            "grid_s": round(grid_s, 3),
            "loop_s": round(loop_s, 3),
            "grid_soups_per_s": round(len(weights) / grid_s, 2),
            "loop_over_grid": round(loop_s / grid_s, 2),
        }
        if kind == "clean":
            forward = jax.jit(lambda v, x: apply_fn(v, x).argmax(-1))
            xs = parallel.host_to_global(x, mesh)
            plain_s = _timed(
                lambda: [
                    forward(ingredients[0], xs).block_until_ready() for _ in range(len(weights))
                ]
            )
            out["plain_forward_s"] = round(plain_s, 3)
            out["grid_over_plain"] = round(grid_s / plain_s, 2)
        print(json.dumps(out), flush=True)

    for kind, n_points, threats in (
        ("clean", _POINTS.value, []),
        ("robust", _ROBUST_POINTS.value, [threat.ThreatModel("linf", 0.1)]),
    ):
        run_one(kind, n_points, threats)


if __name__ == "__main__":
    sys.exit(app.run(main))
