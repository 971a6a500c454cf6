"""A soup sweep: ingredients, a grid of weights, every soup evaluated, rows, CSV and plots.

`run_sweep(config, workdir)` is what `python -m seasoning.soup` runs. It loads the ingredients
(run dirs of `seasoning.train`, read with `runs.load` and checked to share one model and
dataset), builds the grid of soup weights, evaluates every soup's clean and robust accuracy
(`soup.grid`, in mode `batched` or `one_by_one`) on the evaluation dataset (the ingredients' own, or
config `eval.dataset`), and writes into the workdir:

- `grid.json`: settings (ingredients and their checkpoint steps, weights, dataset, threat
  models, attack settings, seed, evaluation mode) and one row per soup with every metric, its
  95% interval and the per-point flags (`soup_row`; `stats`);
  written after every chunk of soups (every soup in one_by_one mode), so `--resume` continues an
  interrupted sweep where it stopped;
- `grid.csv`: the same rows as a table;
- plots: each metric against w (two ingredients), a simplex heat map per metric (three), and
  the trade-off front between two metrics (`config.front`) with the ingredients marked.

Only process 0 writes; every process computes the same rows.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from seasoning import (
    data,
    errors,
    evaluation,
    parallel,
    plots,
    preemption,
    runs,
    soup,
    stats,
)
from seasoning import lease as lease_lib
from seasoning import workdir as workdir_lib
from seasoning.soup import config as soup_config
from seasoning.soup import grid as grid_lib

GRID_FILE, CSV_FILE = "grid.json", "grid.csv"


def weight_grid(grid_cfg: ml_collections.ConfigDict, k: int) -> np.ndarray:
    """[G, K] soup weights from config section `grid`."""
    if grid_cfg.kind == "line":
        return soup.line_grid(grid_cfg.step, low=grid_cfg.low, high=grid_cfg.high)
    if grid_cfg.kind == "list":
        return soup.check_weights(np.array(grid_cfg.weights, np.float64).reshape(-1, k), k)
    return soup.simplex_grid(k, grid_cfg.step)


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str,
    resume: bool = False,
    mesh: Mesh | None = None,
    *,
    force_lease: bool = False,
) -> dict:
    """The whole sweep (see module doc) on `mesh` (default: every device of every process);
    returns the content of grid.json.

    The workdir's lease is held while it runs (`force_lease`: taken even from a job that
    looks alive); SIGTERM stops it after the soups finished and saved.

    Raises:
      BusyError: another live job holds the workdir.
      PreemptedError: stopped by SIGTERM (`resume=True` goes on).
    """
    soup_config.validate_soup_config(config)
    run_dirs = list(config.ingredients)
    labels = runs.ingredient_labels(run_dirs, config.labels)
    ingredients = runs.load_ingredients(run_dirs, config.eval.compute_dtype)
    first = ingredients[0]
    stacked = soup.stack([r.variables for r in ingredients])  # names the first differing path
    weights = weight_grid(config.grid, len(run_dirs))
    planned = evaluation.target(
        first.config.dataset,
        config.eval.dataset,
        config.eval.split,
        threats=list(config.eval.threats),
        version=config.eval.version,
        overrides=config.eval,
    )
    dataset_cfg, split, settings = planned.dataset, planned.split, planned.settings
    threats = list(planned.threats)
    names = evaluation.metric_names(threats)
    unknown = [n for n in config.front if n not in names]
    if unknown:
        raise errors.UserError(f"Config front names {unknown}, not metrics of this sweep: {names}.")
    mode = grid_lib.resolve_mode(config.evaluation)
    record = {
        "evaluation": mode,
        "ingredients": run_dirs,
        "labels": labels,
        "checkpoint_steps": [r.step for r in ingredients],
        "weights": weights.tolist(),
        "metrics": names,
        "version": config.eval.version,
        "compute_dtype": config.eval.compute_dtype,
        "overrides": dict(settings.overrides),
        "dataset": dataset_cfg.name,
        "split": split,
        "n_examples": config.eval.n_examples,
        "bn_policy": config.bn_policy,
        "calibration_examples": config.calibration_examples,
        "seed": config.seed,
    }
    out_path = workdir_lib.path(workdir, GRID_FILE)
    with (
        lease_lib.hold(lease_lib.of_workdir(workdir, force=force_lease)),
        preemption.Watcher() as watcher,
    ):
        previous = workdir_lib.check_result_file(
            out_path, record, resume=resume, upgrade=grid_lib.upgrade_settings
        )
        rows = list(previous["rows"]) if previous else []
        is_writer = jax.process_index() == 0

        mesh = parallel.make_mesh() if mesh is None else mesh
        source = data.get_source(dataset_cfg, split, seed=first.config.seed)
        first.check_source(source, f"{dataset_cfg.name}/{split}")
        indices = evaluation.check_points(None, source, config.eval.n_examples)
        prepare = runs.soup_prepare(first, config.bn_policy, config.calibration_examples)
        start = time.monotonic()

        def save(first_row: int, flags: np.ndarray) -> None:
            for i, soup_flags in enumerate(flags):
                rows.append(soup_row(weights[first_row + i], names, soup_flags))
            if is_writer:
                workdir_lib.write_json(
                    out_path,
                    {
                        "settings": record,
                        "n_points": len(indices),
                        "rows": rows,
                        "complete": len(rows) == len(weights),
                    },
                )
            watcher.stop_if_reached(
                len(rows),
                finished=len(rows) == len(weights),
                progress=f"{len(rows)} of {len(weights)} soups",
                saved_in=out_path,
            )

        if len(rows) < len(weights):
            logging.info(
                "Evaluating %d soups of %d ingredients (%d done) on %d points: %s",
                len(weights),
                len(run_dirs),
                len(rows),
                len(indices),
                ", ".join(names),
            )
            common = dict(
                settings=settings,
                key=jax.random.key(config.seed),
                mesh=mesh,
                batch_size=config.eval.batch_size,
                prepare=prepare,
                on_chunk=save,
                start_row=len(rows),
            )
            stacked = grid_lib.stacked_on_mesh(stacked, mesh)
            if mode == "batched":
                grid_lib.evaluate_batched(
                    first.apply_fn,
                    stacked,
                    weights,
                    source,
                    indices,
                    chunk=config.chunk,
                    vectorize=config.vectorize,
                    **common,
                )
            else:
                grid_lib.evaluate_one_by_one(
                    first.apply_fn, stacked, weights, source, indices, **common
                )
        result = {
            "settings": record,
            "n_points": len(indices),
            "rows": [with_intervals(row, names, len(indices)) for row in rows],
            "intervals": stats.INTERVALS,
            "complete": True,
            "seconds": round(time.monotonic() - start, 2),
            "processes": jax.process_count(),
            "jax": parallel.runtime_info(mesh),
        }
        if is_writer:
            workdir_lib.write_json(out_path, result)
            workdir_lib.write_atomic(
                workdir_lib.path(workdir, CSV_FILE), to_csv(result["rows"], labels, names)
            )
            make_plots(result, labels, names, list(config.front), workdir)
        return result


def soup_row(weights: np.ndarray, names: list[str], flags: np.ndarray) -> dict[str, Any]:
    """A row of grid.json: the soup's weights, each metric's accuracy (checked) and interval,
    and its per-point flags (`stats.pack_flags`, for paired comparisons of rows).

    Args:
      weights: [K] the soup's weights.
      names: the metrics (`evaluation.metric_names`).
      flags: bool [M, N] per metric, the points that count.
    """
    accuracies = evaluation.flag_accuracies(flags)
    row = {"weights": np.asarray(weights).tolist()}
    row.update({n: float(a) for n, a in zip(names, accuracies, strict=True)})
    row = with_intervals(row, names, flags.shape[-1])
    row["flags"] = {n: stats.pack_flags(f) for n, f in zip(names, flags, strict=True)}
    return row


def with_intervals(row: dict[str, Any], names: list[str], num_points: int) -> dict[str, Any]:
    """`row` with `intervals` (metric -> its 95% interval) when it has none (rows saved by
    earlier versions)."""
    if "intervals" in row:
        return row
    return {**row, "intervals": {n: stats.accuracy_interval(row[n], num_points) for n in names}}


def to_csv(rows: list[dict[str, Any]], labels: list[str], names: list[str]) -> str:
    """grid.csv: one column per ingredient weight (`w_<label>`), then the metrics, each with
    its 95% interval (`<metric>_low`, `<metric>_high`)."""
    out = io.StringIO()
    writer = csv.writer(out)
    bounds = [f"{n}_{end}" for n in names for end in ("low", "high")]
    writer.writerow([f"w_{label}" for label in labels] + names + bounds)
    for row in rows:
        writer.writerow(
            [f"{w:.4f}" for w in row["weights"]]
            + [f"{row[n]:.4f}" for n in names]
            + [f"{v:.4f}" for n in names for v in row["intervals"][n]]
        )
    return out.getvalue()


def make_plots(
    result: dict, labels: list[str], names: list[str], front: list[str], workdir: str
) -> list[str]:
    """The figures of module doc; returns their paths."""
    weights = np.array([r["weights"] for r in result["rows"]])
    values = {n: np.array([r[n] for r in result["rows"]]) for n in names}
    out = lambda file: str(workdir_lib.path(workdir, file))
    paths = []
    if weights.shape[1] == 2:
        paths.append(plots.line(weights[:, 1], values, labels, out("line.png")))
    if weights.shape[1] == 3 and len(weights) >= 3:
        for n in names:
            file = f"simplex_{n.replace(':', '_')}.png"
            paths.append(plots.simplex(weights, values[n], labels, n, out(file)))
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
            out("front.png"),
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
