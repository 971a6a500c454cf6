"""Train (or fine-tune) one model: `python -m seasoning.train --config=... --workdir=...`.

`train_and_evaluate(config, workdir)` is the whole run; `main` only parses flags. A run
killed at any point and started again with the same command resumes from its last
checkpoint and ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, logging

from seasoning import (
    adversarial,
    checkpoints,
    cli,
    config_lib,
    data,
    errors,
    evaluation,
    models,
    optim,
    parallel,
    runs,
    training,
    trees,
)
from seasoning import metrics as metrics_lib
from seasoning import workdir as workdir_lib


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """num_epochs passes over the training set, capped by max_steps when it is set."""
    steps = config.num_epochs * steps_per_epoch if config.num_epochs else config.max_steps
    return min(steps, config.max_steps) if config.max_steps else steps


def config_as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as it reads back from config.json (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) training in `workdir`; returns the final evaluation metrics.

    Everything that can be checked (config, data, model) is checked before anything is written.
    """
    config_lib.validate_train_config(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    train_source = data.get_source(config.dataset, config.dataset.train_split, seed=config.seed)
    eval_source = data.get_source(config.dataset, config.dataset.eval_split, seed=config.seed)
    model = models.from_config(config, train_source.num_classes)
    attack = adversarial.make_training_attack(config.threat, config.attack)
    logging.info("%s", adversarial.describe(config.threat, config.attack))
    per_epoch = data.steps_per_epoch(train_source, config.batch_size)
    num_steps = total_steps(config, per_epoch)
    schedule = optim.make_schedule(config.schedule, config.optimizer.lr, num_steps)
    tx = optim.make_optimizer(config.optimizer, schedule)

    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    make_state = functools.partial(
        training.create_train_state, model, tx, image_shape=train_source.image_shape,
        attack=attack,
    )  # fmt: skip
    abstract_state = jax.eval_shape(make_state, init_key)  # checks the model, allocates nothing
    logging.info(
        "model %s: %s parameters",
        config.model.name,
        f"{models.param_count(abstract_state.params):,}",
    )
    parent = load_parent(config.init_from, abstract_state, config) if config.init_from else None
    meta = {"model": config_as_json(config)["model"], "image_shape": list(train_source.image_shape),
            "num_classes": train_source.num_classes}  # fmt: skip

    is_writer = jax.process_index() == 0
    if is_writer:
        workdir_lib.claim(
            workdir, config_as_json(config), config_as_json(config_lib.base_train_config())
        )
    ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
    writer = metrics_lib.MetricWriter(workdir, enabled=is_writer)
    replicated = parallel.replicated(mesh)
    if ckpt.latest_step() is not None:
        items, start_step = ckpt.restore(
            checkpoints.abstract_with_sharding(abstract_state.checkpoint_items(), replicated), meta
        )
        state = abstract_state.replace_items(items)
        logging.info("Resumed from the checkpoint at step %d.", start_step)
        writer.write_event(start_step, event="resumed")
    else:
        state = jax.jit(make_state, out_shardings=replicated)(init_key)
        start_step = 0
        writer.write_event(0, event="start", num_steps=num_steps, steps_per_epoch=per_epoch)
        if parent is not None:
            state = start_from_parent(state, parent, replicated)
            writer.write_event(0, event="init_from", parent=config.init_from,
                               parent_step=parent["step"])  # fmt: skip
            logging.info("Fine-tuning from %s (step %d).", config.init_from, parent["step"])

    train_step = training.make_train_step(
        mesh, model=model, attack=attack, label_smoothing=config.label_smoothing
    )
    evaluate = functools.partial(
        evaluate_accuracy,
        evaluation.Evaluator(
            runs.eval_apply_fn(model), evaluation.AttackSettings(),
            batch_size=config.eval_batch_size, mesh=mesh,
        ),
        eval_source,
        evaluation.check_points(None, eval_source, config.dataset.num_eval_examples),
    )  # fmt: skip
    batches = data.prefetch(
        data.train_batches(
            train_source,
            config.batch_size,
            seed=config.seed,
            start_step=start_step,
            crop_padding=config.dataset.crop_padding,
            flip=config.dataset.flip,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    eval_every = config.eval_every_steps or per_epoch
    checkpoint_every = config.checkpoint_every_steps or per_epoch
    progress = metrics_lib.Progress(num_steps, start_step=start_step, batch_size=config.batch_size)
    pending: list[dict[str, jax.Array]] = []
    window_start = time.monotonic()
    final: dict[str, float] = {}
    for step in range(start_step, num_steps):
        batch = parallel.host_to_global(next(batches), mesh)
        state, step_metrics = train_step(state, batch, jax.random.fold_in(train_key, step))
        pending.append(step_metrics)
        done = step + 1
        if done % config.log_every_steps == 0 or done == num_steps:
            summary = {k: float(np.mean(v)) for k, v in jax.device_get(_stack(pending)).items()}
            elapsed = time.monotonic() - window_start
            summary["lr"] = float(schedule(step))
            summary["steps_per_s"] = len(pending) / elapsed
            summary["images_per_s"] = len(pending) * config.batch_size / elapsed
            writer.write(done, summary, prefix="train/")
            pending, window_start = [], time.monotonic()
        if done % checkpoint_every == 0 or done == num_steps:
            ckpt.save(done, state.checkpoint_items(), meta)
        if done % eval_every == 0 or done == num_steps:
            final = evaluate(state.variables())
            writer.write(done, final, prefix="eval/")
            logging.info("step %d: eval %s", done, _fmt(final))
        progress.update(done, force=done == num_steps)
    if start_step >= num_steps:
        final = evaluate(state.variables())
        logging.info("Already trained for %d steps; eval %s", num_steps, _fmt(final))
    ckpt.close()
    writer.close()
    return final


def load_parent(
    init_from: str, abstract_state: training.TrainState, config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """The weights (params, BatchNorm statistics) of the run in `init_from`, checked to fit.

    Returns:
      {"params", "batch_stats", "step"}: numpy trees and the parent's checkpoint step.

    Raises:
      MissingInputError: `init_from` is not a run or holds no checkpoint.
      UserError: the parent's weights differ in structure, shape or dtype from this model;
        names the first differing path.
    """
    parent = runs.load(init_from)
    found = {"params": parent.variables["params"],
             "batch_stats": parent.variables.get("batch_stats") or {}}  # fmt: skip
    expected = {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats or {}}
    difference = trees.first_difference(found, expected)
    if difference:
        raise errors.UserError(
            f"init_from={init_from!r}: its weights do not fit model {config.model.name!r} of "
            f"this config; first difference (parent vs this model): {difference}"
        )
    return {**found, "step": parent.step}


def start_from_parent(state: training.TrainState, parent: dict[str, Any], sharding) -> Any:
    """`state` with the parent's weights and a fresh optimiser state for them."""
    params = jax.device_put(parent["params"], sharding)
    batch_stats = jax.device_put(parent["batch_stats"], sharding)
    opt_state = jax.jit(state.tx.init, out_shardings=sharding)(params)
    return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)


def evaluate_accuracy(
    evaluator: evaluation.Evaluator, source: data.Source, indices: np.ndarray, variables: Any
) -> dict[str, float]:
    """Clean accuracy and mean loss of `variables` on the points `indices` of `source`."""
    result = evaluator.run(variables, source, indices, key=jax.random.key(0))
    return {"accuracy": result.accuracies()["clean"], "loss": result.mean_loss()}


def _stack(items: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    return {k: jnp.stack([m[k] for m in items]) for k in items[0]}


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in values.items())


def main(argv, config: ml_collections.ConfigDict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cli.WORKDIR.value:
        raise app.UsageError("--workdir is required.")
    cli.start(config.batch_size)
    cli.exit_on_user_error(lambda: train_and_evaluate(config, cli.WORKDIR.value))


if __name__ == "__main__":
    config_lib.main_with_config(main)
