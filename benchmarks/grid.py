"""Soup-grid throughput: the compiled, vmapped grid against a Python loop over soups.

  .venv/bin/python benchmarks/grid.py [--model=cnn-small] [--soups=66] [--points=1000]
  .venv/bin/python benchmarks/grid.py --ingredients=runs/demo/fmnist_cnn_linf,\
      runs/demo/fmnist_cnn_linf_to_l2,runs/demo/fmnist_cnn_linf_to_l1

Prints JSON lines: seconds and soups/s for (1) G forward passes of one plain model on the
points, (2) the compiled grid (clean accuracy of G soups), (3) the loop that materialises each
soup (`soup.combine`) and evaluates it; and the same for robust accuracy (AutoAttack fast,
few iterations), where (4) the per-soup mode (`grid.evaluate_one_by_one`: later attacks only on
the points still robust) joins in. (3) is the one evaluator's all_points schedule run on each
soup in turn. Targets: (2) <= 1.1 x (1) and (3) >= 3 x (2).

Ingredients: three randomly initialised models on random points and labels (default), or
trained run dirs (`--ingredients`) on their test set, where robust accuracy, and so the
per-soup mode's saving, is realistic. Run by hand; results go into docs/benchmarks.md.
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
_INGREDIENTS = flags.DEFINE_list("ingredients", [], "Run dirs (default: random models).")
_N_ITER = flags.DEFINE_integer("n_iter", 5, "AutoAttack iterations for the robust runs.")


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

    from seasoning import data, evaluation, models, parallel, runs, soup, threat
    from seasoning.soup import grid as grid_lib

    if _INGREDIENTS.value:
        loaded = runs.load_ingredients(_INGREDIENTS.value)
        model, ingredients = loaded[0].model, [r.variables for r in loaded]
        config = loaded[0].config
        source = data.get_source(config.dataset, config.dataset.eval_split)
        name = config.model.name
    else:
        model = models.get_model(_MODEL.value, num_classes=10)
        shape = (28, 28, 1) if _MODEL.value == "cnn-small" else (32, 32, 3)
        ingredients = [
            model.init(jax.random.key(i), np.zeros((1, *shape), np.float32), train=False)
            for i in range(3)
        ]
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (_POINTS.value, *shape), dtype=np.uint8)
        source = data.ArraySource(images, rng.integers(0, 10, _POINTS.value).astype(np.int32), 10)
        name = _MODEL.value
    k = len(ingredients)
    weights = soup.simplex_grid(k, 0.1)[: _SOUPS.value].astype(np.float32)
    mesh = parallel.make_mesh()

    def apply_fn(v, x):
        return model.apply(v, x, train=False)

    stacked = grid_lib.stacked_on_mesh(soup.stack(ingredients), mesh)
    info = {
        "model": name,
        "ingredients": "trained" if _INGREDIENTS.value else "random",
        "soups": len(weights),
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
    }

    def run_one(kind, n_points, threats):
        indices = np.arange(n_points)
        settings = evaluation.AttackSettings.make(
            threats, "fast", n_iter=_N_ITER.value, n_target_classes=1
        )
        key = jax.random.key(0)
        common = dict(settings=settings, key=key, mesh=mesh, batch_size=n_points)
        grid_s = _timed(
            lambda: grid_lib.evaluate_batched(
                apply_fn,
                stacked,
                weights,
                source,
                indices,
                chunk=_CHUNK.value,
                vectorize=_VECTORIZE.value,
                **common,
            )
        )
        evaluator = evaluation.Evaluator(
            apply_fn, settings, schedule="all_points", batch_size=n_points, mesh=mesh
        )
        loop_s = _timed(
            lambda: [
                evaluator.run(soup.combine(ingredients, w), source, indices, key=key)
                for w in weights
            ],
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
        if kind == "robust":
            per_soup_s = _timed(
                lambda: grid_lib.evaluate_one_by_one(
                    apply_fn, stacked, weights, source, indices, **common
                ),
                1,
            )
            out["per_soup_s"] = round(per_soup_s, 3)
            out["loop_over_per_soup"] = round(loop_s / per_soup_s, 2)
        if kind == "clean":
            forward = jax.jit(lambda v, x: apply_fn(v, x).argmax(-1))
            images, _ = source.get(indices)
            xs = parallel.host_to_global(data.to_float(images), mesh)
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
