"""Robust accuracy of a trained run, AutoAttack-style: `python -m seasoning.evaluate`.

    python -m seasoning.evaluate --workdir=runs/fmnist_linf \
        [--threat=linf:0.1 --threat=l2:0.8 --threat=l1:10] [--version=standard|fast] \
        [--n_examples=1000]

Reads the run's config.json and its latest checkpoint, attacks the first `n_examples` points
of the evaluation split under each threat model (default: the dataset's usual radii,
`threat.DEFAULT_THREATS`), and writes `eval.json` into the workdir: clean accuracy, robust
accuracy per threat model and after each attack, the union (a point counts only if it survives
every threat model), the attack settings and the time taken. Prints a table. An `eval.json`
with the same checkpoint and settings is reused; one with other settings is never replaced
without `--overwrite`.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from seasoning import attacks, checkpoints, cli, data, errors, models, parallel, threat
from seasoning import workdir as workdir_lib

_THREATS = flags.DEFINE_multi_string(
    "threat", [], "norm:eps, repeatable (e.g. linf:8/255). Default: the dataset's usual radii."
)
_VERSION = flags.DEFINE_enum("version", "standard", ["standard", "fast"], "AutoAttack version.")
_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", list(models.COMPUTE_DTYPES),
    "The model's compute dtype during the attacks (float32 whatever the run trained in).",
)  # fmt: skip
_N_EXAMPLES = flags.DEFINE_integer("n_examples", 1000, "First N points of the split (0: all).")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Points per compiled attack call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the attacks' randomness.")
_SPLIT = flags.DEFINE_string("split", "", "Split to evaluate (default: the config's eval_split).")
_OUTPUT = flags.DEFINE_string(
    "output", "eval.json", "Result file: a name inside the workdir, or a path."
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace an output file that holds an evaluation with other settings."
)

EVAL_FILE = "eval.json"


def load_run(workdir: str, step: int | None = None, compute_dtype: str = "float32"):
    """A finished (or running) run: (config, model, variables, checkpoint step).

    The model computes in `compute_dtype` (float32 by default, whatever the run trained in:
    attacks in bfloat16 round away steps smaller than its ~3 significant digits).

    Raises:
      FileNotFoundError: no config.json or no checkpoint in `workdir`.
    """
    path = f"{workdir}/{workdir_lib.CONFIG_FILE}"
    try:
        config = ml_collections.ConfigDict(workdir_lib.read_json(path))
    except FileNotFoundError:
        raise errors.MissingInputError(
            f"{path} not found: --workdir must be a run of `python -m seasoning.train`."
        ) from None
    tree, meta, step = checkpoints.read_numpy(workdir, step)
    model = models.from_config(config, meta["num_classes"], compute_dtype)
    variables = {"params": tree["params"]}
    if tree.get("batch_stats"):
        variables["batch_stats"] = tree["batch_stats"]
    return config, model, variables, step


def evaluate_run(
    workdir: str,
    threats: list[threat.ThreatModel] | None = None,
    *,
    version: str = "standard",
    n_examples: int = 1000,
    batch_size: int = 500,
    seed: int = 0,
    split: str = "",
    output: str = EVAL_FILE,
    overwrite: bool = False,
    compute_dtype: str = "float32",
    **attack_overrides: Any,
) -> dict[str, Any]:
    """Attacks a run's latest checkpoint and writes `output` (eval.json) into its workdir.

    Args:
      workdir: a run of `seasoning.train`.
      threats: threat models (default: `threat.default_threats` of the run's dataset).
      version: AutoAttack version, "standard" or "fast".
      n_examples: the first N points of the split (0: all of it).
      batch_size: points per compiled attack call.
      seed: the attacks' seed.
      split: the split (default: the run's `dataset.eval_split`).
      output: the result file's name inside the workdir, or an absolute path.
      overwrite: replace an output file that holds an evaluation with other settings.
      compute_dtype: the model's compute dtype during the attacks, recorded in the result.
      **attack_overrides: `auto_attack` settings (n_iter, n_restarts, n_target_classes,
        n_queries) replacing the version's, recorded in the result.

    Returns:
      The result written to `output`.

    Raises:
      ValueError: on a multi-process job, a bad n_examples or batch_size, or when `output`
        holds another evaluation.
      FileNotFoundError: the run or its data is missing.
    """
    if jax.process_count() > 1:
        raise errors.UserError(
            "seasoning.evaluate runs on one host; start it without jax.distributed."
        )
    for name, value, low in (("n_examples", n_examples, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise errors.UserError(f"{name}={value!r}: expected an integer >= {low}.")
    config, model, variables, step = load_run(workdir, compute_dtype=compute_dtype)
    threats = list(threats or threat.default_threats(config.dataset.name))
    if not threats:
        raise errors.UserError("No threat model to evaluate.")
    split = split or config.dataset.eval_split
    settings = {
        "checkpoint_step": int(step),
        "split": split,
        "n_examples": int(n_examples),
        "version": version,
        "compute_dtype": compute_dtype,
        "seed": int(seed),
        "threats": [str(tm) for tm in threats],
        "overrides": {k: v for k, v in attack_overrides.items() if v is not None},
    }
    out_path = os.path.join(workdir, output)  # an absolute output stays as given
    existing = _check_output(out_path, settings, overwrite)
    if existing is not None:
        logging.info("%s is up to date (same checkpoint and settings); --overwrite recomputes.",
                     out_path)  # fmt: skip
        return existing

    source = data.get_source(config.dataset, split, seed=config.seed)
    count = min(n_examples or len(source), len(source))
    images, labels = source.get(np.arange(count))
    x, y = data.to_float(images), np.asarray(labels, np.int32)
    mesh = parallel.make_mesh()
    logging.info("Evaluating %s (step %d) on %d points of %s/%s", workdir, step, count,
                 config.dataset.name, split)  # fmt: skip

    def apply_fn(v, xb):
        return model.apply(v, xb, train=False)

    start = time.monotonic()
    reports = attacks.run_threat_models(
        apply_fn, variables, x, y, threats, key=jax.random.key(seed), version=version,
        batch_size=batch_size, mesh=mesh, **attack_overrides,
    )  # fmt: skip
    per_threat, robust_flags = {}, {}
    for name, report in reports.items():
        clean = report.clean
        robust_flags[name] = report.robust
        per_threat[name] = {
            "norm": report.threat.norm,
            "eps": report.threat.eps,
            "robust_accuracy": report.robust_accuracy,
            "after": report.after,
            "seconds": round(report.wall_seconds, 2),
            "attack_seconds": {k: round(v, 2) for k, v in report.seconds.items()},
            "settings": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in report.settings.items()},
        }  # fmt: skip
        logging.info("%s: robust accuracy %.2f%%", name, 100 * report.robust_accuracy)
    union = np.logical_and.reduce(list(robust_flags.values()))
    result = {
        "settings": settings,
        "workdir": workdir,
        "dataset": config.dataset.name,
        "model": config.model.name,
        "n_examples": count,
        "clean_accuracy": float(clean.mean()),
        "threat_models": per_threat,
        "union": {"threats": list(robust_flags), "robust_accuracy": float(union.mean())},
        "seconds": round(time.monotonic() - start, 2),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": parallel.runtime_info(),
    }  # fmt: skip
    workdir_lib.write_json(out_path, result)
    return result


def _check_output(path: str, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The result at `path` when it has these very settings (and not `overwrite`), else None.

    Raises:
      ValueError: `path` holds a result computed with other settings and not `overwrite`.
    """
    try:
        existing = workdir_lib.read_json(path)
    except FileNotFoundError:
        return None
    if overwrite:
        return None
    old = existing.get("settings", {})
    if old == settings:
        return existing
    diffs = "\n  ".join(workdir_lib.diff_dicts(old, settings))
    raise errors.UserError(
        f"{path} holds an evaluation with other settings; not overwriting it.\n  {diffs}\n"
        "Pass --output=another.json, or --overwrite to replace it."
    )


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table: accuracy (%) per threat model, after each attack, time."""
    settings = result["settings"]
    names: list[str] = []
    for entry in result["threat_models"].values():
        names += [n for n in entry["after"] if n not in names]
    header = f"{'threat':<16}{'robust %':>10}" + "".join(f"{n:>10}" for n in names) + f"{'s':>8}"
    lines = [
        f"{result['model']} on {result['dataset']}/{settings['split']}, {result['n_examples']} "
        f"points, AutoAttack {settings['version']}, checkpoint step {settings['checkpoint_step']}, "
        f"{settings.get('compute_dtype', 'float32')}",
        header,
        f"{'clean':<16}{100 * result['clean_accuracy']:>10.2f}",
    ]
    for label in settings["threats"]:  # in the order asked for (the JSON file sorts its keys)
        entry = result["threat_models"][label]
        after = "".join(
            f"{100 * entry['after'][n]:>10.2f}" if n in entry["after"] else f"{'':>10}"
            for n in names
        )
        lines.append(
            f"{label:<16}{100 * entry['robust_accuracy']:>10.2f}{after}{entry['seconds']:>8.0f}"
        )
    if len(result["threat_models"]) > 1:
        lines.append(f"{'union':<16}{100 * result['union']['robust_accuracy']:>10.2f}")
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cli.WORKDIR.value:
        raise app.UsageError("--workdir is required.")

    def run():
        threats = [threat.parse(spec) for spec in _THREATS.value]
        cli.start(_BATCH.value)
        result = evaluate_run(
            cli.WORKDIR.value, threats, version=_VERSION.value, n_examples=_N_EXAMPLES.value,
            batch_size=_BATCH.value, seed=_SEED.value, split=_SPLIT.value,
            output=_OUTPUT.value, overwrite=_OVERWRITE.value, compute_dtype=_DTYPE.value,
        )  # fmt: skip
        print(format_table(result))
        print(f"Wrote {os.path.join(cli.WORKDIR.value, _OUTPUT.value)}")

    cli.exit_on_user_error(run)


if __name__ == "__main__":
    app.run(main)
