"""The pure core of training: TrainState and train_step. No I/O.

Steps are pure functions of pytrees. Drivers bind the static parts (model, attack, loss
settings) with `functools.partial` and `jax.jit` them with the state donated and the batch
sharded over the data mesh (`make_train_step`). Evaluation, periodic or final, is
`seasoning.evaluation`'s.

Two switches bound memory for big batches on few devices, both inside the one jitted step:

- `accumulate_steps=k` (gradient accumulation): the global batch is split into k micro-batches
  (`split_batch`), run one after another in a `lax.scan`; each is attacked and differentiated,
  the gradients are averaged and the optimiser updates once. Without BatchNorm this is the
  plain step up to float rounding. With BatchNorm each micro-batch is normalised by its own
  statistics in train mode ("ghost batches"), and the running statistics take one update per
  step: the mean over micro-batches of the update each micro-batch alone would make, i.e.
  momentum times the old value plus (1 - momentum) times the mean of the micro-batch means
  (which is the global batch's mean) and of the micro-batch variances.
- `attack_chunks=c`: the attack runs on c parts of each (micro-)batch one after another
  (`lax.map`). Attacks are per example, so x_adv is the same as in one piece, bit for bit in
  the tests (XLA:CPU may compile a reduction over a part of one row a device differently, a
  float-rounding difference), except for random starts: each part draws its own.

Micro-batch i's attack key is `fold_in(key, i)` and chunk j's `fold_in(that key, j)`; E-AT
(`AttackWithStats`) draws its threat model once per step, from the step's key.

A micro-batch or chunk takes the same share of every device's rows (`split_batch`), so the
split moves no data between devices and every part keeps all devices busy.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seasoning import errors, parallel

# attack(logits_fn, x, y, key) -> x_adv; the threat model and settings are bound already.
Attack = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class AttackWithStats:
    """A training attack that keeps statistics from step to step (`TrainState.attack_stats`).

    E-AT draws each batch's threat model from the running robust accuracy under each one.
    The attack is two pure, jit-able parts, so that a step that splits its batch (micro-batches,
    attack chunks) still makes the batch's decisions once and counts every example once:

    Attributes:
      plan: (key, stats) -> plan, the decisions made once per optimiser step from the
        statistics (E-AT: the index of the threat model), a pytree of arrays.
      perturb: (logits_fn, x, y, key, plan) -> (x_adv, increment): the attack of some
        examples under `plan`, and their contribution to the statistics, a pytree like them
        that adds up over parts of the batch (the new statistics are stats + the increments).
      initial_stats: the statistics of a fresh run (a pytree of arrays).
    """

    plan: Callable[[jax.Array, Any], Any]
    perturb: Callable[..., tuple[jax.Array, Any]]
    initial_stats: Any

    def run(
        self,
        logits_fn: Callable[[jax.Array], jax.Array],
        x: jax.Array,
        y: jax.Array,
        key: jax.Array,
        stats: Any,
    ) -> tuple[jax.Array, Any]:
        """The attack of a whole batch in one piece: (x_adv, new statistics)."""
        plan_key, attack_key = jax.random.split(key)
        x_adv, increment = self.perturb(logits_fn, x, y, attack_key, self.plan(plan_key, stats))
        return x_adv, jax.tree.map(jnp.add, stats, increment)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; `tx` is static (not a pytree leaf)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    attack_stats: Any = flax.struct.field(default_factory=dict)  # see AttackWithStats

    def variables(self) -> dict[str, Any]:
        """The model variables: {'params'} plus {'batch_stats'} for BatchNorm models."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    def apply_gradients(
        self, grads: Any, batch_stats: Any, attack_stats: Any | None = None
    ) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
            attack_stats=self.attack_stats if attack_stats is None else attack_stats,
        )

    def checkpoint_items(self) -> dict[str, Any]:
        """The pytree that checkpoints save and restore (everything but `tx`).

        `attack_stats` only when the attack keeps any, so that other runs' checkpoints keep
        their layout.
        """
        items = {
            "step": self.step,
            "params": self.params,
            "batch_stats": self.batch_stats,
            "opt_state": self.opt_state,
        }
        if jax.tree.leaves(self.attack_stats):
            items["attack_stats"] = self.attack_stats
        return items

    def replace_items(self, items: dict[str, Any]) -> TrainState:
        """The inverse of `checkpoint_items`."""
        return self.replace(**items)


def init_variables(model: nn.Module, key: jax.Array, image_shape: tuple[int, ...]) -> Any:
    """Model variables for inputs of shape [1, *image_shape]."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, ...],
    attack: Attack | AttackWithStats | None = None,
) -> TrainState:
    """A fresh TrainState (jit it with `out_shardings` to place it; `jax.eval_shape` it to plan).

    With an `AttackWithStats`, the state starts with its `initial_stats`.
    """
    variables = init_variables(model, key, image_shape)
    params = variables["params"]
    stats = attack.initial_stats if isinstance(attack, AttackWithStats) else {}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        tx=tx,
        attack_stats=jax.tree.map(jnp.asarray, stats),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def split_batch(tree: Any, parts: int, mesh: Mesh | None = None) -> Any:
    """Leaves [B, ...] -> [parts, B / parts, ...]: slices of the batch, each over all devices.

    With the batch sharded `P('data')` over D devices, device d holds the m = B / D rows
    d*m, ..., d*m + m - 1. Part i takes the i-th run of m / parts of them from every device:
    global rows d*m + i*m/parts + j for d < D, j < m/parts. So splitting is a reshape of each
    device's own rows (no data moves), and each part is again sharded `P('data')`. The
    composition is fixed by the device count: the same batch on another mesh splits into other
    parts. `merge_batch` puts the rows back.

    Args:
      tree: arrays with the global batch on their leading axis.
      parts: how many parts; must divide the rows per device.
      mesh: the data mesh (None: one device, parts of consecutive rows).
    """
    shards = 1 if mesh is None else mesh.shape[parallel.DATA_AXIS]

    def split(x):
        rest = x.shape[1:]
        y = x.reshape(shards, parts, x.shape[0] // (shards * parts), *rest).swapaxes(0, 1)
        return _constrain(y.reshape(parts, x.shape[0] // parts, *rest), mesh, parts_axis=True)

    return jax.tree.map(split, tree)


def merge_batch(tree: Any, mesh: Mesh | None = None) -> Any:
    """The inverse of `split_batch`: leaves [parts, B / parts, ...] -> [B, ...] in batch order."""
    shards = 1 if mesh is None else mesh.shape[parallel.DATA_AXIS]

    def merge(x):
        parts, rows, rest = x.shape[0], x.shape[1], x.shape[2:]
        y = x.reshape(parts, shards, rows // shards, *rest).swapaxes(0, 1)
        return _constrain(y.reshape(parts * rows, *rest), mesh, parts_axis=False)

    return jax.tree.map(merge, tree)


def _constrain(x: jax.Array, mesh: Mesh | None, parts_axis: bool) -> jax.Array:
    if mesh is None:
        return x
    spec = (
        PartitionSpec(None, parallel.DATA_AXIS) if parts_axis else PartitionSpec(parallel.DATA_AXIS)
    )
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def check_batch_split(
    batch_size: int, devices: int, accumulate_steps: int = 1, attack_chunks: int = 1
) -> None:
    """Raises UserError unless the batch splits into micro-batches and chunks on every device.

    Args:
      batch_size: the global batch.
      devices: the devices the batch is sharded over (the data mesh's size).
      accumulate_steps: micro-batches per step; every device must hold a whole number of
        rows of each.
      attack_chunks: parts of each micro-batch attacked one after another; they must split
        each device's rows of a micro-batch evenly.
    """
    accumulate_steps = errors.check_count("accumulate_steps", accumulate_steps, 1)
    attack_chunks = errors.check_count("attack.chunks", attack_chunks, 1)
    if batch_size % (accumulate_steps * devices):
        raise errors.UserError(
            f"batch_size={batch_size} is not divisible by accumulate_steps={accumulate_steps} "
            f"times the {devices} devices (= {accumulate_steps * devices}): each device takes "
            "an equal share of every micro-batch. Use a batch_size that is a multiple of "
            f"{accumulate_steps * devices}, or another accumulate_steps."
        )
    rows = batch_size // (accumulate_steps * devices)
    if rows % attack_chunks:
        raise errors.UserError(
            f"attack.chunks={attack_chunks} does not divide the {rows} rows each device attacks "
            f"at once (batch_size={batch_size} / (accumulate_steps={accumulate_steps} * "
            f"{devices} devices)); use a divisor of {rows}."
        )


def perturb_batch(
    attack: Attack | AttackWithStats,
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    plan: Any = None,
    *,
    chunks: int = 1,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, Any]:
    """The training attack of a batch, in `chunks` parts one after another (`lax.map`).

    Args:
      attack: an `Attack`, or an `AttackWithStats` (then `plan` is its plan for this step).
      logits_fn: the model in eval mode.
      x, y: the batch, sharded over `mesh`.
      key: the attack's key; with chunks > 1 part i uses `fold_in(key, i)`.
      plan: `attack.plan(...)`'s result for an `AttackWithStats`.
      chunks: parts of the batch attacked one after another (`split_batch`); x_adv is the
        same as in one piece for attacks without a random start (see the module doc).
      mesh: the data mesh `x` is sharded over.

    Returns:
      (x_adv, the statistics' increment summed over the parts; None for an `Attack`).
    """

    def one(x, y, key):
        if isinstance(attack, AttackWithStats):
            return attack.perturb(logits_fn, x, y, key, plan)
        return attack(logits_fn, x, y, key), None

    if chunks == 1:
        return one(x, y, key)
    xs, ys = split_batch((x, y), chunks, mesh)
    x_adv, increments = jax.lax.map(
        lambda a: one(a[0], a[1], jax.random.fold_in(key, a[2])), (xs, ys, jnp.arange(chunks))
    )
    return merge_batch(x_adv, mesh), jax.tree.map(lambda v: v.sum(0), increments)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    model: nn.Module,
    attack: Attack | AttackWithStats | None = None,
    label_smoothing: float = 0.0,
    accumulate_steps: int = 1,
    attack_chunks: int = 1,
    skip_nonfinite: bool = False,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a batch, adversarial when `attack` is given.

    The attack runs the model in eval mode (BatchNorm running statistics); the update runs it
    in train mode on the attacked images.

    Args:
      state: the state before the step.
      batch: {"image" [B, H, W, C] in [0, 1], "label" [B]}, sharded over `mesh`.
      key: this step's key (the attack's randomness).
      model: the Flax module.
      attack: the training attack, or None for nominal training.
      label_smoothing: of the training loss's targets.
      accumulate_steps: micro-batches the batch is split into (`split_batch`), each attacked
        and differentiated in turn; their gradients are averaged into one update (see the
        module doc for BatchNorm). Micro-batch i's attack key is `fold_in(key, i)` when > 1.
      attack_chunks: parts of each micro-batch attacked one after another (`perturb_batch`).
      skip_nonfinite: return `state` unchanged (the update skipped) when the step is
        non-finite (see Returns); else the update is applied whatever its values.
      mesh: the data mesh the batch is sharded over (None: one device).

    Returns:
      The new state and metrics over the global batch: loss (without label smoothing),
      accuracy, grad_norm, param_norm (of the updated parameters) and nonfinite (1.0 when the
      loss, the gradient's norm or the norm of the updated parameters or BatchNorm statistics
      is NaN or infinite, else 0.0); the learning rate is left to the driver (the schedule is
      a function of the step).

    Raises:
      UserError (when traced): a batch that does not split into `accumulate_steps`
        micro-batches and `attack_chunks` chunks on every device.
    """
    images, labels = batch["image"], batch["label"]
    shards = 1 if mesh is None else mesh.shape[parallel.DATA_AXIS]
    check_batch_split(images.shape[0], shards, accumulate_steps, attack_chunks)
    variables = jax.lax.stop_gradient(state.variables())
    logits_fn = lambda x: model.apply(variables, x, train=False)  # noqa: E731
    plan = None
    if isinstance(attack, AttackWithStats):
        plan_key, key = jax.random.split(key)
        plan = attack.plan(plan_key, state.attack_stats)

    def loss_fn(params, images, labels):
        variables = {**state.variables(), "params": params}
        if state.batch_stats:
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        else:
            logits, updates = model.apply(variables, images, train=True), {}
        loss = cross_entropy(logits, labels, label_smoothing).mean()
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    def micro_step(images, labels, key):
        """(grads, logits, updated batch_stats, attack-statistics increment) of some rows."""
        increment = None
        if attack is not None:
            images, increment = perturb_batch(
                attack, logits_fn, images, labels, key, plan, chunks=attack_chunks, mesh=mesh
            )
            images = jax.lax.stop_gradient(images)
        grads, (logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params, images, labels)
        return grads, logits, batch_stats, increment

    if accumulate_steps == 1:
        grads, logits, batch_stats, increment = micro_step(images, labels, key)
    else:
        zeros = functools.partial(jax.tree.map, jnp.zeros_like)
        with_stats = isinstance(attack, AttackWithStats)
        totals = (
            zeros(state.params),
            zeros(state.batch_stats),
            zeros(state.attack_stats) if with_stats else None,
        )
        grads, logits, batch_stats, increment = _accumulate(
            micro_step, totals, images, labels, key, accumulate_steps, mesh
        )
    attack_stats = state.attack_stats
    if increment is not None:
        attack_stats = jax.tree.map(jnp.add, attack_stats, increment)
    new_state = state.apply_gradients(grads, batch_stats, attack_stats)
    # The loss without label smoothing, comparable across configs.
    metrics = {
        "loss": cross_entropy(logits, labels).mean(),
        "accuracy": (logits.argmax(-1) == labels).mean(),
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(new_state.params),
    }
    # BatchNorm's statistics are checked too (not logged): the checkpoint holds them.
    checked = [metrics[k] for k in ("loss", "grad_norm", "param_norm")]
    finite = jnp.isfinite(jnp.stack([*checked, optax.global_norm(new_state.batch_stats)])).all()
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    if skip_nonfinite:
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return new_state, metrics


def _accumulate(micro_step: Callable, totals, images, labels, key, k: int, mesh: Mesh | None):
    """`micro_step` over the k micro-batches in a `lax.scan` from `totals` (zeros like its
    gradients, BatchNorm statistics and attack-statistics increment): the mean gradients, the
    logits in batch order, the mean updated BatchNorm statistics and the summed increments."""
    parts = split_batch((images, labels), k, mesh)

    def body(totals, xs):
        x, y, i = xs
        grads, logits, batch_stats, increment = micro_step(x, y, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, totals, (grads, batch_stats, increment)), logits

    (grads, batch_stats, increment), logits = jax.lax.scan(body, totals, (*parts, jnp.arange(k)))
    mean = lambda tree: jax.tree.map(lambda v: v / k, tree)  # noqa: E731
    return mean(grads), merge_batch(logits, mesh), mean(batch_stats), increment


def make_train_step(mesh: Mesh, **statics: Any) -> Callable:
    """`train_step` with `statics` bound, jitted: state replicated and donated, batch sharded.

    The batch's split into micro-batches and attack chunks (`accumulate_steps`,
    `attack_chunks`) follows `mesh`'s devices.
    """
    replicated = parallel.replicated(mesh)
    return jax.jit(
        functools.partial(train_step, mesh=mesh, **statics),
        in_shardings=(replicated, parallel.data_sharding(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
