"""The pure core of training: TrainState and train_step. No I/O.

Steps are pure functions of pytrees. Drivers bind the static parts (model, attack, loss
settings) with `functools.partial` and `jax.jit` them with the state donated and the batch
sharded over the data mesh (`make_train_step`). Evaluation, periodic or final, is
`seasoning.evaluation`'s.
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
from jax.sharding import Mesh

from seasoning import parallel

# attack(logits_fn, x, y, key) -> x_adv; the threat model and settings are bound already.
Attack = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class AttackWithStats:
    """A training attack that keeps statistics from step to step (`TrainState.attack_stats`).

    E-AT draws each batch's threat model from the running robust accuracy under each one.

    Attributes:
      run: (logits_fn, x, y, key, stats) -> (x_adv, new stats); pure and jit-able.
      initial_stats: the statistics of a fresh run (a pytree of arrays).
    """

    run: Callable[..., tuple[jax.Array, Any]]
    initial_stats: Any


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


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    model: nn.Module,
    attack: Attack | AttackWithStats | None = None,
    label_smoothing: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a batch, adversarial when `attack` is given.

    The attack runs the model in eval mode (BatchNorm running statistics); the update runs it
    in train mode on the attacked images.

    Returns:
      The new state and metrics (means over the global batch): loss, accuracy, learning rate
      is left to the driver (the schedule is a function of the step).
    """
    images, labels = batch["image"], batch["label"]
    attack_stats = state.attack_stats
    if attack is not None:
        variables = jax.lax.stop_gradient(state.variables())
        logits_fn = lambda x: model.apply(variables, x, train=False)  # noqa: E731
        if isinstance(attack, AttackWithStats):
            images, attack_stats = attack.run(logits_fn, images, labels, key, attack_stats)
        else:
            images = attack(logits_fn, images, labels, key)
        images = jax.lax.stop_gradient(images)

    def loss_fn(params):
        variables = {**state.variables(), "params": params}
        if state.batch_stats:
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        else:
            logits, updates = model.apply(variables, images, train=True), {}
        loss = cross_entropy(logits, labels, label_smoothing).mean()
        return loss, (logits, updates.get("batch_stats", state.batch_stats))

    grads, (logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    # The loss without label smoothing, comparable across configs.
    metrics = {
        "loss": cross_entropy(logits, labels).mean(),
        "accuracy": (logits.argmax(-1) == labels).mean(),
        "grad_norm": optax.global_norm(grads),
    }
    return state.apply_gradients(grads, batch_stats, attack_stats), metrics


def make_train_step(mesh: Mesh, **statics: Any) -> Callable:
    """`train_step` with `statics` bound, jitted: state replicated and donated, batch sharded."""
    replicated = parallel.replicated(mesh)
    return jax.jit(
        functools.partial(train_step, **statics),
        in_shardings=(replicated, parallel.data_sharding(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
