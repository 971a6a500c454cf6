"""A shift run: `run_shift(config, workdir)` is what `python -m seasoning.shift` runs.

For the ingredients (runs of `seasoning.train`, the paper's four: Linf, Linf->L2, Linf->L1,
Linf->nominal) and each shifted dataset of the config (a column), in stages:

1. splits: each shift split into adaptation and unseen images (`shift.splits`);
2. grid: the clean predictions of every soup of the simplex grid on the adaptation images,
   all soups of a batch in one compiled program (`shift.predict`);
3. selection (`shift.select`): per method (grid, learned, greedy) a soup per shift and a single
   soup for all of them, using the adaptation images only;
4. unseen: the predictions of every table row on the unseen images: each ingredient, the
   logit ensembles, and each method's single and dataset-specific soups;
5. robust: AutoAttack of each ingredient and each selected soup on the ingredients' test set.

It writes `shift.json` (settings, splits, the grid's accuracies, chosen weights, every row's
accuracy and its 95% interval, times), `predictions.npz` (the per-point predictions, labels
and members every accuracy is computed from), `report.md` (the paper-shaped table) and
`weights.png`. Both files
are saved after every stage (and every shift of a stage), so `--resume` continues where an
interrupted run stopped. Only process 0 writes; every process computes the same.
"""

from __future__ import annotations

import dataclasses
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
from seasoning.data.source import ConcatSource
from seasoning.shift import config as shift_config
from seasoning.shift import predict, report, select, splits
from seasoning.shift.rows import ensembles_of, row_label, table_rows, upgrade_rows
from seasoning.soup import grid as soup_grid

SHIFT_FILE, ARRAYS_FILE, REPORT_FILE, WEIGHTS_PLOT = (
    "shift.json",
    "predictions.npz",
    "report.md",
    "weights.png",
)


@dataclasses.dataclass
class Column:
    """One shifted dataset of the table, read as one source over its members.

    Attributes:
      name: the column's name.
      spec: the registry name and split it was read from.
      head: how logits score its labels (`DatasetEntry.head`).
      source: its members read as one (`ConcatSource`).
      members: each member's split (member-local indices).
      adaptation, unseen: the split's indices in `source`.
    """

    name: str
    spec: str
    head: Any
    source: ConcatSource
    members: list[splits.MemberSplit]
    adaptation: np.ndarray
    unseen: np.ndarray

    def member(self, indices: np.ndarray) -> np.ndarray:
        return self.source.member_of(indices)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "spec": self.spec,
            "members": [m.to_json() for m in self.members],
        }


def load_columns(config: ml_collections.ConfigDict, first: runs.Run) -> list[Column]:
    """The config's shifts, loaded, checked against the model and split.

    Raises:
      UserError: a dataset the model cannot score (class count, image shape), a group whose
        members differ in head, or a member too small for its split.
      MissingInputError: a dataset that is not prepared (with the command that prepares it).
    """
    names = list(config.columns) or list(config.shifts)
    columns = []
    for spec, name in zip(config.shifts, names, strict=True):
        dataset, split = data.parse_dataset(spec)
        member_names = data.members(dataset)
        heads = {data.DATASETS[m].head for m in member_names}
        if len(heads) != 1:
            raise errors.UserError(f"The members of {dataset!r} score their labels differently.")
        sources, sized = [], []
        for m in member_names:
            section, member_split = data.eval_dataset(
                first.config.dataset, f"{m}:{split}" if split else m, allow_heads=True
            )
            # Decoded once for the run: every soup of the grid reads the same points.
            source = evaluation.decoded_once(
                data.get_source(section, member_split, seed=config.seed)
            )
            first.check_source(source, f"{m}/{member_split}", data.DATASETS[m].model_classes)
            sources.append(source)
            sized.append((f"{m}:{member_split}", len(source)))
        member_splits = splits.split_shift(
            sized, config.n_adaptation, config.n_unseen, config.split_seed
        )
        concat = ConcatSource(sources)
        starts = concat.offsets[:-1]
        adaptation = np.concatenate(
            [o + m.adaptation for o, m in zip(starts, member_splits, strict=True)]
        )
        unseen = np.concatenate([o + m.unseen for o, m in zip(starts, member_splits, strict=True)])
        columns.append(Column(name, spec, heads.pop(), concat, member_splits, adaptation, unseen))
    return columns


class _Files:
    """shift.json and predictions.npz of a run, saved together (process 0 only); after a save
    of an unfinished run, SIGTERM stops it (every process saves at the same points)."""

    def __init__(
        self,
        workdir: str,
        result: dict,
        arrays: dict[str, np.ndarray],
        watcher: preemption.Watcher,
    ):
        self.json_path = workdir_lib.path(workdir, SHIFT_FILE)
        self.arrays_path = workdir_lib.path(workdir, ARRAYS_FILE)
        self.result, self.arrays = result, arrays
        self.is_writer = jax.process_index() == 0
        self._watcher, self._saves = watcher, 0

    def save(self) -> None:
        if self.is_writer:  # arrays first: shift.json says which stages are done
            workdir_lib.write_arrays(self.arrays_path, self.arrays)
            workdir_lib.write_json(self.json_path, self.result)
        self._saves += 1
        self._watcher.stop_if_reached(
            self._saves,
            finished=bool(self.result.get("complete")),
            progress="the stages done so far",
            saved_in=self.json_path,
        )


@dataclasses.dataclass
class _Run:
    """What every stage reads: the loaded inputs and the result being filled."""

    config: ml_collections.ConfigDict
    ingredients: list[runs.Run]
    labels: list[str]
    columns: list[Column]
    grid: np.ndarray
    stacked: Any  # the stacked ingredients, replicated on the mesh
    mesh: Mesh
    prepare: predict.Prepare
    files: _Files

    @property
    def result(self) -> dict:
        return self.files.result

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return self.files.arrays

    @property
    def seconds(self) -> dict:
        return self.result["stage_seconds"]

    @property
    def apply_fn(self):
        return self.ingredients[0].apply_fn

    def predict_rows(self, column: Column, weights: np.ndarray, indices: np.ndarray, **kw):
        return predict.predict_rows(
            self.apply_fn,
            column.head,
            self.stacked,
            np.asarray(weights),
            column.source,
            indices,
            mesh=self.mesh,
            batch_size=self.config.batch_size,
            prepare=self.prepare,
            **kw,
        )

    def keep_points(self, prefix: str, column: Column, indices: np.ndarray, labels) -> None:
        """Saves the points' indices, members and labels under `prefix`."""
        self.arrays[prefix + "indices"] = indices
        self.arrays[prefix + "member"] = column.member(indices)
        self.arrays[prefix + "labels"] = labels


def _settings(config, ingredients, labels, ensembles, robust_dataset, robust_split, attack):
    """Everything that determines the result (the one result-file guard compares it)."""
    return {
        "ingredients": list(config.ingredients),
        "labels": labels,
        "checkpoint_steps": [r.step for r in ingredients],
        "shifts": list(config.shifts),
        "columns": list(config.columns) or list(config.shifts),
        "n_adaptation": config.n_adaptation,
        "n_unseen": config.n_unseen,
        "split_seed": config.split_seed,
        "grid_step": config.grid_step,
        "methods": list(config.methods),
        "learned": config.learned.to_dict(),
        "ensembles": ensembles,
        "bn_policy": config.bn_policy,
        "calibration_examples": config.calibration_examples,
        "compute_dtype": config.compute_dtype,
        "seed": config.seed,
        "clean_evaluation": "predicted labels, no attack",
        "robust": {
            "enabled": config.robust.enabled,
            "dataset": robust_dataset.name,
            "split": robust_split,
            "n_examples": config.robust.n_examples,
            **attack.to_json(),
        },
    }


def run_shift(
    config: ml_collections.ConfigDict,
    workdir: str,
    resume: bool = False,
    mesh: Mesh | None = None,
    overwrite: bool = False,
    *,
    force_lease: bool = False,
) -> dict:
    """The whole run (see module doc) on `mesh` (default: every device of every process);
    returns the content of shift.json. `resume` continues an unfinished run of the same
    settings, `overwrite` replaces a run of other settings (`workdir.check_result_file`).

    The workdir's lease is held while it runs (`force_lease`: taken even from a job that
    looks alive); SIGTERM stops it after the next save.

    Raises:
      BusyError: another live job holds the workdir.
      PreemptedError: stopped by SIGTERM (`resume=True` goes on).
    """
    shift_config.validate_shift_config(config)
    run_dirs = list(config.ingredients)
    labels = runs.ingredient_labels(run_dirs, config.labels)
    ingredients = runs.load_ingredients(run_dirs, config.compute_dtype)
    first = ingredients[0]
    ensembles = ensembles_of(config, labels)
    planned = evaluation.target(
        first.config.dataset,
        config.robust.dataset,
        config.robust.split,
        threats=list(config.robust.threats),
        default_threats=config.robust.enabled,
        version=config.robust.version,
        overrides=config.robust,
    )
    robust_dataset, robust_split, attack = planned.dataset, planned.split, planned.settings
    record = _settings(config, ingredients, labels, ensembles, robust_dataset, robust_split, attack)
    json_path = workdir_lib.path(workdir, SHIFT_FILE)
    with (
        lease_lib.hold(lease_lib.of_workdir(workdir, force=force_lease)),
        preemption.Watcher() as watcher,
    ):
        previous = workdir_lib.check_result_file(
            json_path, record, resume=resume, overwrite=overwrite
        )
        if previous and previous.get("complete"):
            logging.info("%s is complete with these settings; nothing to do.", json_path)
            return previous
        arrays_path = workdir_lib.path(workdir, ARRAYS_FILE)
        resumed = previous and arrays_path.exists()
        arrays = workdir_lib.read_arrays(arrays_path) if resumed else {}
        if previous:
            upgrade_rows(previous, arrays)
        mesh = parallel.make_mesh() if mesh is None else mesh
        columns = load_columns(config, first)
        grid = soup.simplex_grid(len(ingredients), config.grid_step)
        result = previous or {
            "settings": record,
            "columns": [c.to_json() for c in columns],
            "grid": {"weights": grid.tolist(), "adaptation": {}},
            "selection": {},
            "rows": table_rows(labels, ensembles, list(config.methods)),
            "unseen_done": [],
            "stage_seconds": {"grid": {}, "select": {}, "unseen": {}},
            "complete": False,
        }
        stacked_host = soup.stack([r.variables for r in ingredients])
        prepare = runs.soup_prepare(first, config.bn_policy, config.calibration_examples)
        run = _Run(
            config,
            ingredients,
            labels,
            columns,
            grid,
            jax.device_put(stacked_host, parallel.replicated(mesh)),
            mesh,
            prepare,
            _Files(workdir, result, arrays, watcher),
        )
        if "grid" in config.methods:
            _grid_stage(run)
        for method in config.methods:
            if method not in result["selection"]:
                _select_stage(run, method)
        _unseen_stage(run)
        if config.robust.enabled:
            _robust_stage(run, robust_dataset, robust_split, attack)
        result.update(complete=True, processes=jax.process_count(), jax=parallel.runtime_info(mesh))
        run.files.save()
        if run.files.is_writer:
            workdir_lib.write_atomic(
                workdir_lib.path(workdir, REPORT_FILE), report.markdown(result, arrays)
            )
            chosen = {
                m: {
                    "single": result["selection"][m]["single"],
                    **{f"for {c}": w for c, w in result["selection"][m]["specific"].items()},
                }
                for m in config.methods
            }
            plots.weight_bars(chosen, labels, str(workdir_lib.path(workdir, WEIGHTS_PLOT)))
        return result


def _grid_stage(run: _Run) -> None:
    """Stage 2: every soup of the grid on each shift's adaptation images."""
    done = run.result["grid"]["adaptation"]
    for column in run.columns:
        if column.name in done:
            continue
        t0 = time.monotonic()
        predicted, labels = run.predict_rows(column, run.grid, column.adaptation)
        prefix = f"adaptation/{column.name}/"
        run.keep_points(prefix, column, column.adaptation, labels)
        run.arrays[prefix + "grid"] = predicted
        accuracy = report.shift_accuracy(predicted, labels, run.arrays[prefix + "member"])
        done[column.name] = accuracy.tolist()
        run.seconds["grid"][column.name] = round(time.monotonic() - t0, 2)
        logging.info(
            "grid of %d soups on %s (%d adaptation images): best %.2f%%, %.1f s",
            len(run.grid),
            column.name,
            len(column.adaptation),
            100 * accuracy.max(),
            run.seconds["grid"][column.name],
        )
        run.files.save()


def _adaptation_accuracy(run: _Run, tree: Any, column: Column) -> float:
    predicted, labels = predict.predict_model(
        run.apply_fn,
        column.head,
        tree,
        column.source,
        column.adaptation,
        mesh=run.mesh,
        batch_size=run.config.batch_size,
        prepare=run.prepare,
    )
    return float(report.shift_accuracy(predicted, labels, column.member(column.adaptation)))


def _choose(run: _Run, method: str) -> dict:
    """{"single": weights, "specific": {column: weights}} of one selection method."""
    columns = run.columns
    if method == "grid":
        accuracy = np.array([run.result["grid"]["adaptation"][c.name] for c in columns])
        best, single = select.grid_choice(accuracy)
        specific = {c.name: run.grid[b].tolist() for c, b in zip(columns, best, strict=True)}
        return {"single": run.grid[single].tolist(), "specific": specific}
    if method == "learned":
        sets = [(c.source, c.adaptation) for c in columns]
        options = dict(mesh=run.mesh, prepare=run.prepare, **run.config.learned.to_dict())
        specific, final_loss = {}, {}
        for i, column in enumerate(columns):
            out = select.learn(
                run.apply_fn,
                [column.head],
                run.stacked,
                [sets[i]],
                seed=(run.config.seed, i),
                **options,
            )
            specific[column.name] = out.weights.tolist()
            final_loss[column.name] = float(out.losses[-1])
        out = select.learn(
            run.apply_fn,
            [c.head for c in columns],
            run.stacked,
            sets,
            seed=(run.config.seed, len(columns)),
            **options,
        )
        final_loss["single"] = float(out.losses[-1])
        return {"single": out.weights.tolist(), "specific": specific, "final_loss": final_loss}
    if method != "greedy":
        raise ValueError(f"Unknown selection method {method!r}; expected one of {select.METHODS}.")
    trees = [r.variables for r in run.ingredients]
    specific = {
        c.name: select.greedy_weights(
            trees, lambda tree, c=c: _adaptation_accuracy(run, tree, c)
        ).tolist()
        for c in columns
    }
    single = select.greedy_weights(
        trees, lambda tree: float(np.mean([_adaptation_accuracy(run, tree, c) for c in columns]))
    )
    return {"single": single.tolist(), "specific": specific}


def _select_stage(run: _Run, method: str) -> None:
    """Stage 3 for one method; the chosen soups' adaptation predictions are kept (the
    report's adaptation accuracies come from them)."""
    t0 = time.monotonic()
    chosen = _choose(run, method)
    chosen["specific_adaptation"], singles = {}, []
    for column in run.columns:
        weights = [chosen["single"], chosen["specific"][column.name]]
        predicted, labels = run.predict_rows(column, weights, column.adaptation)
        prefix = f"adaptation/{column.name}/"
        run.keep_points(prefix, column, column.adaptation, labels)
        run.arrays[f"{prefix}chosen/{method}"] = predicted
        accuracy = report.shift_accuracy(predicted, labels, run.arrays[prefix + "member"])
        singles.append(float(accuracy[0]))
        chosen["specific_adaptation"][column.name] = float(accuracy[1])
    chosen["single_adaptation"] = float(np.mean(singles))
    run.seconds["select"][method] = round(time.monotonic() - t0, 2)
    run.result["selection"][method] = chosen
    logging.info(
        "%s selection: single soup %s (%.1f s)",
        method,
        np.round(chosen["single"], 3).tolist(),
        run.seconds["select"][method],
    )
    run.files.save()


def _unseen_stage(run: _Run) -> None:
    """Stage 4: every table row on each shift's unseen images, then the rows' accuracies."""
    rows, result = run.result["rows"], run.result
    ensembles = [r["members"] for r in rows if r["kind"] == "ensemble"]
    for column in run.columns:
        if column.name in result["unseen_done"]:
            continue
        t0 = time.monotonic()
        soups = [r for r in rows if r["kind"] != "ensemble"]
        weights = [_row_weights(run, r, column.name) for r in soups]
        ids = [r["id"] for r in soups] + [r["id"] for r in rows if r["kind"] == "ensemble"]
        predicted, labels = run.predict_rows(
            column, np.array(weights), column.unseen, ensembles=ensembles
        )
        prefix = f"unseen/{column.name}/"
        run.keep_points(prefix, column, column.unseen, labels)
        for row_key, row in zip(ids, predicted, strict=True):
            run.arrays[f"{prefix}row/{row_key}"] = row
        run.seconds["unseen"][column.name] = round(time.monotonic() - t0, 2)
        result["unseen_done"].append(column.name)
        logging.info(
            "%s: %d rows on %d unseen images, %.1f s",
            column.name,
            len(ids),
            len(column.unseen),
            run.seconds["unseen"][column.name],
        )
        run.files.save()
    names = [c.name for c in run.columns]
    for row in rows:
        row["unseen"] = {c: report.unseen_accuracy(run.arrays, c, row["id"]) for c in names}
        row["mean"] = float(np.mean(list(row["unseen"].values())))
        row["unseen_interval"] = {
            c: report.unseen_interval(run.arrays, [c], row["id"]) for c in names
        }
        row["mean_interval"] = report.unseen_interval(run.arrays, names, row["id"])
        if row["kind"] == "single":
            row["weights"] = result["selection"][row["method"]]["single"]
        elif row["kind"] == "specific":
            row["weights"] = result["selection"][row["method"]]["specific"]


def _row_weights(run: _Run, row: dict, column: str) -> list[float]:
    """The soup weights of a non-ensemble table row on `column`."""
    if row["kind"] == "ingredient":
        return np.eye(len(run.ingredients))[row["ingredient"]].tolist()
    chosen = run.result["selection"][row["method"]]
    return chosen["single"] if row["kind"] == "single" else chosen["specific"][column]


def _robust_stage(run: _Run, dataset_cfg, split: str, attack) -> None:
    """Stage 5: one still_robust evaluation per distinct soup (ingredients, selected soups)."""
    config, first = run.config, run.ingredients[0]
    robust = run.result.setdefault(
        "robust",
        {
            "dataset": dataset_cfg.name,
            "split": split,
            "n_examples": config.robust.n_examples,
            "version": attack.version,
            "metrics": evaluation.metric_names(attack.threats),
            "rows": [],
        },
    )
    k = len(run.labels)
    candidates = [(lab, np.eye(k)[i].tolist()) for i, lab in enumerate(run.labels)]
    for method in config.methods:
        chosen = run.result["selection"][method]
        candidates.append((row_label("single", method), chosen["single"]))
        candidates += [
            (row_label("specific", method, c.name), chosen["specific"][c.name]) for c in run.columns
        ]
    distinct: dict[tuple, dict] = {}
    for name, weights in candidates:
        new = {"names": [], "weights": [float(w) for w in weights]}
        entry = distinct.setdefault(tuple(np.round(weights, 6)), new)
        entry["names"].append(name)
    source = data.get_source(dataset_cfg, split, seed=first.config.seed)
    first.check_source(source, f"{dataset_cfg.name}/{split}")
    indices = evaluation.check_points(None, source, config.robust.n_examples)
    evaluator = evaluation.Evaluator(
        first.apply_fn,
        attack,
        schedule="still_robust",
        batch_size=config.robust.batch_size,
        mesh=run.mesh,
    )
    mix = soup_grid.compiled_mix(run.prepare, run.mesh)
    t0 = time.monotonic()
    rows = list(distinct.values())
    for i in range(len(robust["rows"]), len(rows)):
        variables = mix(run.stacked, np.asarray(rows[i]["weights"], np.float32))
        outcome = evaluator.run(
            variables,
            source,
            indices,
            key=jax.random.key(config.seed),
            label=f"soup {i + 1}/{len(rows)}",
        )
        run.arrays[f"robust/{i}"] = outcome.flags
        accuracies = outcome.accuracies()
        intervals = {m: stats.accuracy_interval(a, len(indices)) for m, a in accuracies.items()}
        robust["rows"].append(
            {
                **rows[i],
                "accuracy": accuracies,
                "intervals": intervals,
                "seconds": round(outcome.seconds, 2),
            }
        )
        logging.info(
            "robust %d/%d (%s): %s",
            i + 1,
            len(rows),
            "; ".join(rows[i]["names"]),
            {n: round(100 * a, 2) for n, a in outcome.accuracies().items()},
        )
        run.files.save()
    run.seconds["robust"] = round(run.seconds.get("robust", 0.0) + time.monotonic() - t0, 2)
