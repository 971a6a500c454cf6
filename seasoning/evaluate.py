"""Robust accuracy of a trained run, AutoAttack-style: `python -m seasoning.evaluate`.

    python -m seasoning.evaluate --workdir=runs/fmnist_linf \
        [--threat=linf:0.1 --threat=l2:0.8 --threat=l1:10] [--version=standard|fast] \
        [--n_examples=1000] [--dataset=NAME[:split]] [--schedule=still_robust|all_points]

Reads the run (`runs.load`: config.json and its latest checkpoint), evaluates the first
`n_examples` points of a split with the one evaluator (`seasoning.evaluation`) under each threat
model (default: the evaluated dataset's usual radii), and writes `eval.json` into the workdir:
clean accuracy, robust accuracy per threat model and after each attack, the union (a point
counts only if it survives every threat model), the dataset, the settings and the time taken.
Prints a table. The dataset defaults to the run's own; `--dataset` evaluates on another one of
the registry with the same class count. An `eval.json` with the same checkpoint and settings is
reused; one with other settings is never replaced without `--overwrite`. SIGTERM stops it after
the threat model it is in, which eval.json keeps (`complete: false`); `--resume` goes on.

Runs unchanged as N processes (`jax.distributed` from the environment): each process feeds its
rows of every batch, the counts are global, and only process 0 writes.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh

from seasoning import (
    cli,
    data,
    errors,
    evaluation,
    models,
    parallel,
    preemption,
    runs,
    stats,
    threat,
)
from seasoning import lease as lease_lib
from seasoning import workdir as workdir_lib
from seasoning.attacks import autoattack

_THREATS = flags.DEFINE_multi_string(
    "threat", [], "norm:eps, repeatable (e.g. linf:8/255). Default: the dataset's usual radii."
)
_VERSION = flags.DEFINE_enum(
    "version", "standard", list(autoattack.VERSIONS), "AutoAttack version."
)
_SCHEDULE = flags.DEFINE_enum(
    "schedule",
    "still_robust",
    list(evaluation.SCHEDULES),
    "still_robust: each later attack only on the points still robust (the reference's); "
    "all_points: every attack on every point, one compiled program per batch.",
)
_DTYPE = flags.DEFINE_enum(
    "compute_dtype",
    "float32",
    list(models.COMPUTE_DTYPES),
    "The evaluated model's compute dtype (float32 whatever the run trained in): it judges "
    "every point, and the attacks search in it unless --search_dtype says otherwise.",
)
_SEARCH_DTYPE = flags.DEFINE_enum(
    "search_dtype",
    "same",
    list(evaluation.SEARCH_DTYPES),
    "The dtype the attacks search in (losses, gradients, steps); the --compute_dtype model "
    "judges every point at full float32 precision. same: the compute dtype. bfloat16 is faster "
    "on GPUs and TPUs and slightly weaker (docs/evaluation.md).",
)
_N_EXAMPLES = flags.DEFINE_integer("n_examples", 1000, "First N points of the split (0: all).")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Global points per compiled attack call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the attacks' randomness.")
_N_ITER = flags.DEFINE_integer("n_iter", 0, "APGD iterations (0: the version's).")
_N_TARGETS = flags.DEFINE_integer(
    "n_target_classes", 0, "APGD-T target classes (0: the version's)."
)
_SPLIT = flags.DEFINE_string("split", "", "Split to evaluate (default: the config's eval_split).")
_OUTPUT = flags.DEFINE_string(
    "output", "eval.json", "Result file: a name inside the workdir, or a path."
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an output file that holds an evaluation with other settings."
)

EVAL_FILE = "eval.json"


def evaluate_run(
    workdir: str,
    threats: list[threat.ThreatModel] | None = None,
    *,
    version: str = "standard",
    n_examples: int = 1000,
    batch_size: int = 500,
    seed: int = 0,
    dataset: str = "",
    split: str = "",
    schedule: str = "still_robust",
    output: str = EVAL_FILE,
    overwrite: bool = False,
    compute_dtype: str = "float32",
    search_dtype: str = "same",
    mesh: Mesh | None = None,
    force_lease: bool = False,
    resume: bool = False,
    **attack_overrides: Any,
) -> dict[str, Any]:
    """Attacks a run's latest checkpoint and writes `output` (eval.json) into its workdir.

    Args:
      workdir: a run of `seasoning.train`.
      threats: threat models (default: `data.default_threats` of the evaluated dataset).
      version: AutoAttack version, "standard" or "fast".
      n_examples: the first N points of the split (0: all of it).
      batch_size: global points per compiled attack call.
      seed: the attacks' seed.
      dataset: "NAME[:split]" of another dataset of the registry (default: the run's).
      split: the split (default: the run's `dataset.eval_split`, or `dataset`'s).
      schedule: the evaluator's schedule (`evaluation.SCHEDULES`).
      output: the result file's name inside the workdir, or an absolute path.
      overwrite: replace an output file that holds an evaluation with other settings.
      compute_dtype: the compute dtype of the model evaluated (the one that decides which
        points are classified correctly), recorded in the result.
      search_dtype: the dtype of the model the attacks search with (`evaluation.SEARCH_DTYPES`;
        "same": `compute_dtype`), recorded in the result when it is not `compute_dtype`.
      mesh: the devices to use (default: every device of every process).
      force_lease: take the output's lease (`<output>.lease`, held while it runs) even from
        a job that looks alive.
      resume: continue an evaluation stopped by SIGTERM: `output` keeps each threat model as
        it finishes (`complete: false`), and those are not attacked again.
      **attack_overrides: `auto_attack` settings (n_iter, n_restarts, n_target_classes,
        n_queries) replacing the version's, recorded in the result.

    Returns:
      The result written to `output` (on every process; only process 0 writes).

    Raises:
      UserError: a bad n_examples, batch_size, dataset or setting, a dataset whose class count
        or image shape is not the model's, or an `output` holding another evaluation.
      MissingInputError: the run or its data is missing.
      BusyError: another live job is writing `output`.
      PreemptedError: SIGTERM, after saving the threat models finished (`resume=True` goes
        on).
    """
    errors.check_count("n_examples", n_examples, 0)
    errors.check_count("batch_size", batch_size, 1)
    search_dtype = evaluation.search_dtype_for(search_dtype, compute_dtype)
    unknown = sorted(set(attack_overrides) - set(autoattack.SETTINGS))
    if unknown:
        raise errors.UserError(
            f"Unknown attack setting(s) {unknown}; expected some of {autoattack.SETTINGS}."
        )
    run = runs.load(workdir, compute_dtype=compute_dtype)
    planned = evaluation.target(
        run.config.dataset,
        dataset,
        split,
        threats=threats or (),
        version=version,
        overrides=attack_overrides,
    )
    dataset_cfg, split, attack_settings = planned.dataset, planned.split, planned.settings
    threats = list(planned.threats)
    if not threats:
        raise errors.UserError("No threat model to evaluate.")
    settings = {
        "checkpoint_step": run.step,
        "dataset": dataset_cfg.name,
        "split": split,
        "n_examples": int(n_examples),
        "version": version,
        "schedule": schedule,
        "compute_dtype": compute_dtype,
        "seed": int(seed),
        "threats": [str(tm) for tm in threats],
        "overrides": dict(attack_settings.overrides),
    }
    if search_dtype != compute_dtype:  # (results of earlier versions searched in compute_dtype)
        settings["search_dtype"] = search_dtype
    out_path = workdir_lib.path(workdir, output)  # an absolute output or a URI stays as given
    with (
        lease_lib.hold(lease_lib.of_file(out_path, force=force_lease)),
        preemption.Watcher() as watcher,
    ):
        existing = workdir_lib.check_result_file(
            out_path, settings, overwrite=overwrite, resume=resume
        )
        if existing is not None and existing.get("complete", True):
            logging.info(
                "%s is up to date (same checkpoint and settings); --overwrite recomputes.", out_path
            )
            return existing
        saved = dict(existing["finished"]) if existing else {}

        source = data.get_source(dataset_cfg, split, seed=run.config.seed)
        run.check_source(source, f"{dataset_cfg.name}/{split}")
        indices = evaluation.check_points(None, source, n_examples)
        evaluator = evaluation.Evaluator(
            run.apply_fn,
            attack_settings,
            schedule=schedule,
            batch_size=batch_size,
            mesh=mesh,
            search_apply_fn=run.apply_fn_in(search_dtype),
        )
        logging.info(
            "Evaluating %s (step %d) on %d points of %s/%s, %d process(es)",
            workdir,
            run.step,
            len(indices),
            dataset_cfg.name,
            split,
            jax.process_count(),
        )
        finished = {}
        for name, entry in saved.items():
            flags = np.zeros(len(indices), bool)
            flags[entry["robust"]] = True
            finished[name] = (flags, entry["details"])
        if finished:
            logging.info("Resuming: %s already evaluated.", ", ".join(finished))

        def save_threat(name: str, flags: np.ndarray, detail: dict[str, Any]) -> None:
            """Keeps a finished threat model in `output` (complete: false); stops on SIGTERM."""
            saved[name] = {"robust": np.flatnonzero(flags).tolist(), "details": detail}
            if jax.process_index() == 0:
                workdir_lib.write_json(
                    out_path, {"settings": settings, "complete": False, "finished": saved}
                )
            watcher.stop_if_reached(
                len(saved),
                finished=len(saved) == len(threats),
                saved_in=out_path,
                progress=f"{len(saved)} of {len(threats)} threat models ({', '.join(saved)})",
            )

        start = time.monotonic()
        result = evaluator.run(
            run.variables,
            source,
            indices,
            key=jax.random.key(seed),
            finished=finished,
            on_threat=save_threat,
        )
        accuracy = result.accuracies()
        per_threat = {}
        for tm in threats:
            name = str(tm)
            detail = result.details.get(name, {})
            per_threat[name] = {
                "norm": tm.norm,
                "eps": tm.eps,
                "robust_accuracy": accuracy[name],
                "robust_interval": stats.accuracy_interval(accuracy[name], len(indices)),
                "robust_count": result.counts()[name],
                "after": detail.get("after", {}),
                "seconds": round(detail.get("wall_seconds", 0.0), 2),
                "attack_seconds": detail.get("seconds", {}),
                "settings": attack_settings.resolved_json(tm),
            }
            logging.info("%s: robust accuracy %.2f%%", name, 100 * accuracy[name])
        union = accuracy.get("union", accuracy[str(threats[0])])
        out = {
            "settings": settings,
            "workdir": workdir,
            "dataset": dataset_cfg.name,
            "model": run.config.model.name,
            "n_examples": len(indices),
            "clean_accuracy": accuracy["clean"],
            "clean_interval": stats.accuracy_interval(accuracy["clean"], len(indices)),
            "clean_count": result.counts()["clean"],
            "threat_models": per_threat,
            "union": {
                "threats": [str(tm) for tm in threats],
                "robust_accuracy": union,
                "robust_interval": stats.accuracy_interval(union, len(indices)),
            },
            "intervals": stats.INTERVALS,
            "seconds": round(time.monotonic() - start, 2),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "processes": jax.process_count(),
            "jax": parallel.runtime_info(evaluator.mesh),
        }
        if jax.process_index() == 0:
            workdir_lib.write_json(out_path, out)
        return out


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table: accuracy (%) and its 95% interval per threat model, after
    each attack, time."""
    settings = result["settings"]
    num_points = result["n_examples"]
    names: list[str] = []
    for entry in result["threat_models"].values():
        names += [n for n in entry["after"] if n not in names]

    def ci(accuracy: float) -> str:  # computed here too: files of earlier versions had none
        low, high = stats.accuracy_interval(accuracy, num_points)
        return f"{100 * low:>7.1f}-{100 * high:<5.1f}"

    header = (
        f"{'threat':<16}{'robust %':>10}{'95% CI':^14}"
        + "".join(f"{n:>10}" for n in names)
        + f"{'s':>8}"
    )
    lines = [
        f"{result['model']} on {result['dataset']}/{settings['split']}, {result['n_examples']} "
        f"points, AutoAttack {settings['version']} ({settings.get('schedule', 'still_robust')}), "
        f"checkpoint step {settings['checkpoint_step']}, "
        f"{settings.get('compute_dtype', 'float32')}"
        + (f", search in {settings['search_dtype']}" if "search_dtype" in settings else ""),
        header,
        f"{'clean':<16}{100 * result['clean_accuracy']:>10.2f}{ci(result['clean_accuracy'])}",
    ]
    for label in settings["threats"]:  # in the order asked for (the JSON file sorts its keys)
        entry = result["threat_models"][label]
        after = "".join(
            f"{100 * entry['after'][n]:>10.2f}" if n in entry["after"] else f"{'':>10}"
            for n in names
        )
        robust = entry["robust_accuracy"]
        lines.append(f"{label:<16}{100 * robust:>10.2f}{ci(robust)}{after}{entry['seconds']:>8.0f}")
    if len(result["threat_models"]) > 1:
        union = result["union"]["robust_accuracy"]
        lines.append(f"{'union':<16}{100 * union:>10.2f}{ci(union)}")
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cli.WORKDIR.value:
        raise app.UsageError("--workdir is required.")

    def run():
        threats = [threat.parse(spec) for spec in _THREATS.value]
        cli.start(max(_BATCH.value, 1))
        result = evaluate_run(
            cli.WORKDIR.value,
            threats,
            version=_VERSION.value,
            n_examples=_N_EXAMPLES.value,
            batch_size=_BATCH.value,
            seed=_SEED.value,
            dataset=cli.DATASET.value,
            split=_SPLIT.value,
            schedule=_SCHEDULE.value,
            output=_OUTPUT.value,
            overwrite=_OVERWRITE.value,
            compute_dtype=_DTYPE.value,
            search_dtype=_SEARCH_DTYPE.value,
            force_lease=cli.FORCE_LEASE.value,
            resume=cli.RESUME.value,
            n_iter=_N_ITER.value,
            n_target_classes=_N_TARGETS.value,
        )
        if jax.process_index() == 0:
            print(format_table(result))
            print(f"Wrote {workdir_lib.path(cli.WORKDIR.value, _OUTPUT.value)}")

    cli.exit_on_user_error(run)


if __name__ == "__main__":
    app.run(main)
