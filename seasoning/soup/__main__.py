"""Sweep soups of fine-tuned ingredients: `python -m seasoning.soup --config=... --workdir=...`.

    python -m seasoning.soup --config=configs/soup_fmnist.py:soup=l2 --workdir=runs/soup_l2

Loads the ingredients (run dirs of `seasoning.train`, checked to share one model), builds the
grid of soup weights, evaluates every soup's clean and robust accuracy (`soup.grid`: many soups
per compiled program, or soup by soup as `seasoning.evaluate` attacks a model; config
`evaluation`), and writes into the workdir:

- `grid.json`: settings (ingredients and their checkpoint steps, weights, threat models,
  attack settings, seed, evaluation mode) and one row per soup with every metric; written
  after every chunk of soups (every soup in per_soup mode), so `--resume` continues an
  interrupted sweep where it stopped;
- `grid.csv`: the same rows as a table;
- plots: each metric against w (two ingredients), a simplex heat map per metric (three), and
  the trade-off front between two metrics (`config.front`) with the ingredients marked.
"""

from __future__ import annotations

import csv
import io
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from seasoning import cli, config_lib, data, errors, evaluate, parallel, plots, soup, threat
from seasoning import workdir as workdir_lib
from seasoning.models import normalization
from seasoning.soup import grid as grid_lib

_RESUME = flags.DEFINE_bool("resume", False, "Continue an interrupted sweep in --workdir.")

GRID_FILE, CSV_FILE = "grid.json", "grid.csv"


def load_ingredients(
    run_dirs: list[str], compute_dtype: str = "float32"
) -> tuple[ml_collections.ConfigDict, Any, list, list]:
    """(first run's config, model computing in `compute_dtype`, variables of each run, steps).

    Raises:
      ValueError: the runs differ in model or dataset, or their weights in structure (the
        message names the first differing path).
    """
    runs = [evaluate.load_run(d, compute_dtype=compute_dtype) for d in run_dirs]
    config, model = runs[0][0], runs[0][1]
    for d, (c, _, _, _) in zip(run_dirs[1:], runs[1:], strict=True):
        for key in ("model", "dataset"):
            if c[key].to_dict() != config[key].to_dict():
                diffs = "; ".join(workdir_lib.diff_dicts(config[key].to_dict(), c[key].to_dict()))
                raise errors.UserError(
                    f"Ingredient {d} has another {key} than {run_dirs[0]}: {diffs}"
                )
    return config, model, [r[2] for r in runs], [r[3] for r in runs]


def weight_grid(grid_cfg: ml_collections.ConfigDict, k: int) -> np.ndarray:
    """[G, K] soup weights from config section `grid`."""
    if grid_cfg.kind == "line":
        return soup.line_grid(grid_cfg.step, low=grid_cfg.low, high=grid_cfg.high)
    return soup.simplex_grid(k, grid_cfg.step)


def recalibrate_in_program(model, calibration_images: jax.Array):
    """A `prepare` for `grid_lib`: a soup's BatchNorm statistics re-estimated in one pass.

    One train-mode forward pass over the calibration images from zeroed running statistics
    leaves (1 - momentum) x the batch statistics in them; dividing gives the exact mean and
    variance of every BN layer's input over those images.
    """
    scale = 1.0 / (1.0 - normalization.BN_MOMENTUM)

    def prepare(variables):
        if "batch_stats" not in variables:
            return variables
        zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
        _, updates = model.apply(
            {**variables, "batch_stats": zeros},
            calibration_images,
            train=True,
            mutable=["batch_stats"],
        )
        stats = jax.tree.map(lambda s: s * scale, updates["batch_stats"])
        return {**variables, "batch_stats": stats}

    return prepare


def run_sweep(config: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
    """The whole sweep (see module doc); returns the content of grid.json."""
    config_lib.validate_soup_config(config)
    run_dirs = list(config.ingredients)
    labels = list(config.labels) or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    train_config, model, ingredients, steps = load_ingredients(run_dirs, config.eval.compute_dtype)
    stacked = soup.stack(ingredients)  # raises naming the first differing path
    weights = weight_grid(config.grid, len(run_dirs))
    threats = [threat.parse(s) for s in config.eval.threats] or list(
        threat.default_threats(train_config.dataset.name)
    )
    names = grid_lib.metric_names(threats)
    unknown = [n for n in config.front if n not in names]
    if unknown:
        raise errors.UserError(f"Config front names {unknown}, not metrics of this sweep: {names}.")
    overrides = {
        k: v
        for k, v in (
            ("n_iter", config.eval.n_iter),
            ("n_target_classes", config.eval.n_target_classes),
        )
        if v
    }
    split = config.eval.split or train_config.dataset.eval_split
    mode = grid_lib.resolve_mode(config.evaluation)
    settings = {
        "evaluation": mode,
        "ingredients": run_dirs,
        "labels": labels,
        "checkpoint_steps": steps,
        "weights": weights.tolist(),
        "metrics": names,
        "version": config.eval.version,
        "compute_dtype": config.eval.compute_dtype,
        "overrides": overrides,
        "split": split,
        "n_examples": config.eval.n_examples,
        "bn_policy": config.bn_policy,
        "calibration_examples": config.calibration_examples,
        "seed": config.seed,
    }
    out_path = os.path.join(workdir, GRID_FILE)
    rows = _previous_rows(out_path, settings, resume)

    mesh = parallel.make_mesh()
    source = data.get_source(train_config.dataset, split, seed=train_config.seed)
    batch_size = parallel.round_up_to_devices(config.eval.batch_size, mesh)

    def batches():
        return data.eval_batches(source, batch_size, num_examples=config.eval.n_examples)

    prepare = None
    if config.bn_policy == "recalibrate":
        train_source = data.get_source(train_config.dataset, train_config.dataset.train_split)
        images, _ = train_source.get(np.arange(min(config.calibration_examples, len(train_source))))
        prepare = recalibrate_in_program(model, jnp.asarray(data.to_float(images)))

    def apply_fn(variables, x):
        return model.apply(variables, x, train=False)

    os.makedirs(workdir, exist_ok=True)
    start = time.monotonic()

    def save(first: int, acc: np.ndarray) -> None:
        for i, values in enumerate(acc):
            rows.append(
                {
                    "weights": weights[first + i].tolist(),
                    **{n: float(v) for n, v in zip(names, values, strict=True)},
                }
            )
        workdir_lib.write_json(
            out_path, {"settings": settings, "rows": rows, "complete": len(rows) == len(weights)}
        )

    if len(rows) < len(weights):
        logging.info(
            "Evaluating %d soups of %d ingredients (%d done) on %d points: %s",
            len(weights),
            len(run_dirs),
            len(rows),
            config.eval.n_examples,
            ", ".join(names),
        )
        key = jax.random.key(config.seed)
        common = dict(threats=threats, version=config.eval.version, prepare=prepare, **overrides)
        if mode == "grid":
            program = grid_lib.make_chunk_program(
                apply_fn, mesh, vectorize=config.vectorize, **common
            )
            grid_lib.evaluate_grid(
                program,
                jax.device_put(stacked, parallel.replicated(mesh)),
                weights,
                batches,
                key=key,
                chunk=config.chunk,
                mesh=mesh,
                on_chunk=save,
                start_row=len(rows),
            )
        else:
            count = min(config.eval.n_examples or len(source), len(source))
            eval_images, eval_labels = source.get(np.arange(count))
            grid_lib.evaluate_per_soup(
                apply_fn,
                jax.device_put(stacked, parallel.replicated(mesh)),
                weights,
                data.to_float(eval_images),
                np.asarray(eval_labels, np.int32),
                key=key,
                mesh=mesh,
                batch_size=batch_size,
                on_chunk=save,
                start_row=len(rows),
                **common,
            )
    result = {
        "settings": settings,
        "rows": rows,
        "complete": True,
        "seconds": round(time.monotonic() - start, 2),
        "jax": parallel.runtime_info(),
    }
    workdir_lib.write_json(out_path, result)
    workdir_lib.write_atomic(os.path.join(workdir, CSV_FILE), to_csv(rows, labels, names))
    make_plots(result, labels, names, list(config.front), workdir)
    return result


def _previous_rows(path: str, settings: dict[str, Any], resume: bool) -> list[dict[str, Any]]:
    """Rows already evaluated with these settings (resuming), or [] for a new sweep.

    Raises:
      ValueError: `path` holds a sweep with other settings, or an unfinished one and not
        `resume`.
    """
    try:
        previous = workdir_lib.read_json(path)
    except FileNotFoundError:
        return []
    if previous["settings"] != settings:
        diffs = "\n  ".join(workdir_lib.diff_dicts(previous["settings"], settings))
        raise errors.UserError(
            f"{path} holds a sweep with other settings; not overwriting it.\n"
            f"  {diffs}\nUse another --workdir."
        )
    if not previous.get("complete") and not resume:
        raise errors.UserError(
            f"{path} holds an unfinished sweep ({len(previous['rows'])} of "
            f"{len(settings['weights'])} soups): pass --resume to continue it."
        )
    return list(previous["rows"])


def to_csv(rows: list[dict[str, Any]], labels: list[str], names: list[str]) -> str:
    """grid.csv: one column per ingredient weight (`w_<label>`), then the metrics."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"w_{label}" for label in labels] + names)
    for row in rows:
        writer.writerow([f"{w:.4f}" for w in row["weights"]] + [f"{row[n]:.4f}" for n in names])
    return out.getvalue()


def make_plots(
    result: dict, labels: list[str], names: list[str], front: list[str], workdir: str
) -> list[str]:
    """The figures of module doc; returns their paths."""
    weights = np.array([r["weights"] for r in result["rows"]])
    values = {n: np.array([r[n] for r in result["rows"]]) for n in names}
    paths = []
    if weights.shape[1] == 2:
        paths.append(plots.line(weights[:, 1], values, labels, os.path.join(workdir, "line.png")))
    if weights.shape[1] == 3 and len(weights) >= 3:
        for n in names:
            file = f"simplex_{n.replace(':', '_')}.png"
            paths.append(plots.simplex(weights, values[n], labels, n, os.path.join(workdir, file)))
    x_name, y_name = front or (names[1:3] if len(names) >= 3 else names[:2])
    corners = {
        labels[i]: int(np.flatnonzero(np.isclose(weights[:, i], 1.0))[0])
        for i in range(weights.shape[1])
        if np.isclose(weights[:, i], 1.0).any()
    }
    paths.append(
        plots.front(
            values[x_name],
            values[y_name],
            corners,
            x_name,
            y_name,
            os.path.join(workdir, "front.png"),
        )
    )
    return paths


def summary(result: dict, labels: list[str], names: list[str]) -> str:
    """The best soup per metric, one line each."""
    lines = []
    for n in names:
        best = max(result["rows"], key=lambda r: r[n])
        mix = " + ".join(
            f"{w:.2f} {label}" for w, label in zip(best["weights"], labels, strict=True)
        )
        lines.append(f"best {n:<12} {100 * best[n]:6.2f}%  at  {mix}")
    return "\n".join(lines)


def main(argv, config: ml_collections.ConfigDict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cli.WORKDIR.value:
        raise app.UsageError("--workdir is required.")

    def run():
        cli.start(config.eval.batch_size)
        result = run_sweep(config, cli.WORKDIR.value, resume=_RESUME.value)
        settings = result["settings"]
        print(summary(result, settings["labels"], settings["metrics"]))
        print(f"Wrote {cli.WORKDIR.value}/{{{GRID_FILE},{CSV_FILE}}} and plots.")

    cli.exit_on_user_error(run)


if __name__ == "__main__":
    config_lib.main_with_config(main)
