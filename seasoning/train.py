"""Train (or fine-tune) one model: `python -m seasoning.train --config=... --workdir=...`.

`train_and_evaluate(config, workdir)` is the whole run; `main` only parses flags. A run
killed at any point and started again with the same command resumes from its last
checkpoint and ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, logging
from jax.sharding import Mesh

from seasoning import (
    adversarial,
    checkpoints,
    cli,
    config_lib,
    data,
    divergence,
    errors,
    evaluation,
    models,
    optim,
    parallel,
    preemption,
    runs,
    train_config,
    training,
    trees,
)
from seasoning import lease as lease_lib
from seasoning import metrics as metrics_lib
from seasoning import workdir as workdir_lib


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """num_epochs passes over the training set, capped by max_steps when it is set."""
    steps = config.num_epochs * steps_per_epoch if config.num_epochs else config.max_steps
    return min(steps, config.max_steps) if config.max_steps else steps


@dataclasses.dataclass(frozen=True)
class Setup:
    """A run's pieces, built from its config before anything is written (see `build`).

    The driver runs them; tests replay single steps of a finished run with them (a step of a
    2-process run from its checkpoint, on one process).

    Attributes:
      config: the validated training config.
      mesh: the data mesh the step and the evaluation run on.
      eval_source: the evaluation split after its ops (`data.get_source`), decoded once.
      make_batch: step -> this process's rows of the global batch (`data.StepBatch`; its
        `source` holds the training split's records).
      input_workers: the input pipeline's worker processes.
      model: the Flax module.
      attack: the training attack (None for nominal training).
      schedule: the learning rate as a function of the step.
      num_steps, steps_per_epoch: the run's length.
      init_key, train_key: the initialisation key and the key every step's key folds from.
      make_state: init key -> a fresh TrainState.
      abstract_state: its shapes and dtypes (nothing allocated).
      train_step: the jitted step, (state, global batch, key) -> (state, metrics).
      evaluate: variables -> {"accuracy", "loss"}, clean, on the eval split's first
        `dataset.num_eval_examples` points (the one evaluator, `seasoning.evaluation`).
      meta: what checkpoints record about the model (a resume into another model is refused).
    """

    config: ml_collections.ConfigDict
    mesh: Mesh
    eval_source: data.Source
    make_batch: data.StepBatch
    input_workers: int
    model: Any
    attack: Any
    schedule: Callable[[int], Any]
    num_steps: int
    steps_per_epoch: int
    init_key: jax.Array
    train_key: jax.Array
    make_state: Callable[[jax.Array], training.TrainState]
    abstract_state: training.TrainState
    train_step: Callable[..., tuple[training.TrainState, dict[str, jax.Array]]]
    evaluate: Callable[[Any], dict[str, float]]
    meta: dict[str, Any]

    def initial_state(self) -> training.TrainState:
        """The fresh state, replicated over the mesh."""
        return jax.jit(self.make_state, out_shardings=parallel.replicated(self.mesh))(self.init_key)

    def restore(
        self, ckpt: checkpoints.Checkpointer, step: int | None = None
    ) -> tuple[training.TrainState, int]:
        """The state saved at `step` (default: the latest checkpoint), replicated over the mesh."""
        abstract = checkpoints.abstract_with_sharding(
            self.abstract_state.checkpoint_items(), parallel.replicated(self.mesh)
        )
        items, step = ckpt.restore(abstract, self.meta, step=step)
        return self.abstract_state.replace_items(items), step

    def step_key(self, step: int) -> jax.Array:
        """The key of global step `step` (the same on every process and device layout)."""
        return jax.random.fold_in(self.train_key, step)

    def batches(self, start_step: int) -> data.Batches:
        """Global batches from global step `start_step` on, on the devices a few steps ahead;
        this process reads only its rows, in `input_workers` processes."""
        iterator = data.step_batches(self.make_batch, start_step, self.input_workers)

        def place(batch):
            # Copies out of the workers' shared memory (which JAX on a CPU might alias).
            batch = {"image": data.to_float(batch["image"]), "label": np.array(batch["label"])}
            return parallel.host_to_global(batch, self.mesh)

        return data.Batches(iterator, place)


def build(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Setup:
    """Checks `config` and builds the run's pieces; reads data, writes nothing.

    Args:
      config: a training config (see `train_config.base_train_config`).
      mesh: the data mesh (default: every device of every process).

    Raises:
      UserError: a bad config value, a batch that does not split over the devices, missing
        data; each names the value and what was expected.
    """
    train_config.validate_train_config(config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_size(config.batch_size, mesh)
    training.check_batch_split(
        config.batch_size, mesh.size, config.accumulate_steps, config.attack.chunks
    )
    train_source = data.get_records(config.dataset, config.dataset.train_split, seed=config.seed)
    # Decoded once for the whole run: every periodic evaluation reads the same points.
    eval_source = evaluation.decoded_once(
        data.get_source(config.dataset, config.dataset.eval_split, seed=config.seed)
    )
    spec, train_ops = data.train_ops(config.dataset)
    make_batch = data.StepBatch(
        train_source,
        train_ops,
        spec,
        global_batch_size=config.batch_size,
        seed=config.seed,
        rows=data.pipeline.host_slice(config.batch_size, jax.process_index(), jax.process_count()),
    )
    image_shape, decodes = _train_image_shape(make_batch, eval_source)
    model = models.from_config(config, train_source.num_classes)
    attack = adversarial.make_training_attack(config.threat, config.attack)
    per_epoch = make_batch.per_epoch
    num_steps = total_steps(config, per_epoch)
    schedule = optim.make_schedule(config.schedule, config.optimizer.lr, num_steps)
    tx = optim.make_optimizer(config.optimizer, schedule)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    make_state = functools.partial(
        training.create_train_state,
        model,
        tx,
        image_shape=image_shape,
        attack=attack,
    )
    train_step = training.make_train_step(
        mesh,
        model=model,
        attack=attack,
        label_smoothing=config.label_smoothing,
        accumulate_steps=config.accumulate_steps,
        attack_chunks=config.attack.chunks,
        skip_nonfinite=config.nonfinite == "skip",
    )
    evaluate = functools.partial(
        evaluate_accuracy,
        evaluation.Evaluator(
            runs.eval_apply_fn(model),
            evaluation.AttackSettings(),
            batch_size=config.eval_batch_size,
            mesh=mesh,
        ),
        eval_source,
        evaluation.check_points(None, eval_source, config.dataset.num_eval_examples),
    )
    meta = {
        "model": config_lib.as_json(config)["model"],
        "image_shape": list(image_shape),
        "num_classes": train_source.num_classes,
    }
    return Setup(
        config=config,
        mesh=mesh,
        eval_source=eval_source,
        make_batch=make_batch,
        input_workers=data.default_workers(config.dataset.num_workers, decodes),
        model=model,
        attack=attack,
        schedule=schedule,
        num_steps=num_steps,
        steps_per_epoch=per_epoch,
        init_key=init_key,
        train_key=train_key,
        make_state=make_state,
        abstract_state=jax.eval_shape(make_state, init_key),  # checks the model, allocates nothing
        train_step=train_step,
        evaluate=evaluate,
        meta=meta,
    )


def _train_image_shape(
    make_batch: data.StepBatch, eval_source: data.Source
) -> tuple[tuple[int, ...], bool]:
    """(shape of a training image after the training ops, checked against evaluation's;
    whether the records are encoded images, which workers would decode).

    Raises:
      UserError: the two preprocessings give images of different shapes.
    """
    images, _ = data.source.read_records(make_batch.source, np.zeros(1, np.int64), labels=False)
    draws = data.ops.draw(make_batch.ops, np.random.default_rng(0), 1)
    shape = tuple(data.ops.apply(make_batch.ops, images, draws, spec=make_batch.spec).shape[1:])
    if shape != tuple(eval_source.image_shape):
        raise errors.UserError(
            f"Training preprocessing {make_batch.spec!r} makes images of shape {shape}, "
            f"evaluation's makes {tuple(eval_source.image_shape)}: make them agree "
            "(dataset.pp_train / dataset.pp_eval)."
        )
    return shape, data.ops.encoded(images)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    mesh: Mesh | None = None,
    *,
    force_lease: bool = False,
) -> dict[str, float]:
    """Runs (or resumes) training in `workdir`; returns the final evaluation metrics.

    Everything that can be checked (config, data, model) is checked before anything is written.
    On several processes every process runs this with the same arguments: each reads only its
    rows of every batch, checkpoints are written collectively, and only process 0 writes
    config.json and metrics.

    Args:
      config: a training config.
      workdir: the run's directory; a run there is resumed from its last checkpoint.
      mesh: the data mesh (default: every device of every process).
      force_lease: take the workdir's lease even from a job that looks alive
        (`seasoning.lease`).

    Raises:
      BusyError: another live job holds the workdir (nothing written).
      DivergedError, PreemptedError, WriteError: the run stopped (see `errors`).
    """
    setup = build(config, mesh)
    logging.info("%s", adversarial.describe(config.threat, config.attack))
    logging.info(
        "model %s: %s parameters",
        config.model.name,
        f"{models.param_count(setup.abstract_state.params):,}",
    )
    parent = (
        load_parent(config.init_from, setup.abstract_state, config) if config.init_from else None
    )
    with lease_lib.hold(lease_lib.of_workdir(workdir, force=force_lease)) as lease:
        return _train(setup, parent, workdir, lease)


def _train(
    setup: Setup, parent: dict[str, Any] | None, workdir: str, lease: lease_lib.Lease
) -> dict[str, float]:
    """The run in `workdir`, whose lease this job holds (see `train_and_evaluate`)."""
    config, mesh = setup.config, setup.mesh
    num_steps, per_epoch = setup.num_steps, setup.steps_per_epoch
    is_writer = jax.process_index() == 0
    if is_writer:
        workdir_lib.claim(
            workdir,
            config_lib.as_json(config),
            config_lib.as_json(train_config.base_train_config()),
            free=train_config.EXECUTION_KEYS,
        )
    ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
    writer = metrics_lib.MetricWriter(workdir, enabled=is_writer)
    if ckpt.latest_step() is not None:
        state, start_step = setup.restore(ckpt)
        logging.info("Resumed from the checkpoint at step %d.", start_step)
        writer.write_event(start_step, event="resumed")
    else:
        state = setup.initial_state()
        start_step = 0
        writer.write_event(0, event="start", num_steps=num_steps, steps_per_epoch=per_epoch)
        if parent is not None:
            state = start_from_parent(state, parent, parallel.replicated(mesh))
            writer.write_event(
                0, event="init_from", parent=config.init_from, parent_step=parent["step"]
            )
            logging.info("Fine-tuning from %s (step %d).", config.init_from, parent["step"])

    batches = setup.batches(start_step)
    workers = setup.input_workers
    logging.info(
        "input: %s; %d worker process%s",
        setup.make_batch.spec,
        workers,
        "" if workers == 1 else "es",
    )
    eval_every = config.eval_every_steps or per_epoch
    checkpoint_every = config.checkpoint_every_steps or per_epoch
    progress = metrics_lib.Progress(num_steps, start_step=start_step, batch_size=config.batch_size)
    guard = divergence.Guard(
        config.nonfinite,
        config.max_nonfinite_in_row,
        workdir,
        config.optimizer.lr,
        last_saved=ckpt.latest_step(),
    )
    pending: list[dict[str, jax.Array]] = []
    checked = 0  # how many of `pending` the guard has seen
    window_start = time.monotonic()
    final: dict[str, float] = {}
    watcher = preemption.Watcher()
    watcher.start()
    try:
        for step in range(start_step, num_steps):
            state, step_metrics = setup.train_step(state, next(batches), setup.step_key(step))
            pending.append(step_metrics)
            done = step + 1
            log = done % config.log_every_steps == 0 or done == num_steps
            save = done % checkpoint_every == 0 or done == num_steps
            run_eval = done % eval_every == 0 or done == num_steps
            if log or ((save or run_eval) and checked < len(pending)):
                # One fetch of the values not seen yet: the log window's, or (before a save or
                # an evaluation) the steps' since the last check.
                fetched = jax.device_get(_stack(pending if log else pending[checked:]))
                unseen = {k: v[checked:] for k, v in fetched.items()} if log else fetched
                skipped = guard.check(done - len(pending) + checked + 1, unseen)
                if skipped:
                    logging.warning("Skipped %d non-finite step(s) (nonfinite=skip).", skipped)
                checked = len(pending)
            if log:
                summary = {k: float(np.mean(v)) for k, v in fetched.items()}
                elapsed = time.monotonic() - window_start
                summary["lr"] = float(setup.schedule(step))
                summary["steps_per_s"] = len(pending) / elapsed
                summary["images_per_s"] = len(pending) * config.batch_size / elapsed
                # The fraction of the window's wall time the loop waited for input.
                summary["input_wait"] = min(1.0, batches.take_wait() / elapsed)
                progress.input_wait = summary["input_wait"]
                writer.write(done, summary, prefix="train/")
                pending, checked, window_start = [], 0, time.monotonic()
            lease.check()  # another job took the workdir over: no checkpoint from this one
            if save:
                ckpt.save(done, state.checkpoint_items(), setup.meta)
                guard.last_saved = done
            if run_eval:
                eval_start = time.monotonic()
                final = setup.evaluate(state.variables())
                window_start += time.monotonic() - eval_start  # not training time
                writer.write(done, final, prefix="eval/")
                logging.info("step %d: eval %s", done, _fmt(final))
            progress.update(done, force=done == num_steps)
            if watcher.reached(done) and done < num_steps:
                if not save:  # the step reached, checked for finiteness first
                    if checked < len(pending):
                        fetched = jax.device_get(_stack(pending[checked:]))
                        guard.check(done - len(pending) + checked + 1, fetched)
                        checked = len(pending)
                    ckpt.save(done, state.checkpoint_items(), setup.meta)
                raise errors.PreemptedError(
                    f"Stopped by SIGTERM at step {done} of {num_steps}, after saving its "
                    f"checkpoint in {workdir}"
                    + (" (every process)" if jax.process_count() > 1 else "")
                    + ": run the same command to resume from it."
                )
    except (errors.DivergedError, errors.PreemptedError) as e:
        ckpt.close()  # the checkpoints already started are finished (all finite)
        event = "diverged" if isinstance(e, errors.DivergedError) else "preempted"
        writer.write_event(done, event=event, message=str(e))
        writer.close()
        raise
    finally:
        watcher.stop()
        batches.close()
    if start_step >= num_steps:
        final = setup.evaluate(state.variables())
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
    found = {
        "params": parent.variables["params"],
        "batch_stats": parent.variables.get("batch_stats") or {},
    }
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
    cli.exit_on_user_error(
        lambda: train_and_evaluate(config, cli.WORKDIR.value, force_lease=cli.FORCE_LEASE.value)
    )


if __name__ == "__main__":
    config_lib.main_with_config(main)
