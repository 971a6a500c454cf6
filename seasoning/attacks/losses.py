"""Per-example attack losses on logits [B, K]: cross-entropy, DLR and targeted DLR.

Attacks maximise these. DLR (Croce & Hein 2020) is the margin scaled by the spread of the top
logits, which makes it invariant to shifting and scaling the logits:

  dlr(z, y)         = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)
  dlr_targeted(z,y,t) = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)

where z_pi1 >= z_pi2 >= ... are the sorted logits. The targeted cross-entropy is -CE(z, t).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from seasoning import errors

LOSSES = ("ce", "dlr")

# loss(logits [B, K], y [B], target [B] or None) -> [B]
LossFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def _take(logits: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, idx[:, None].astype(jnp.int32), axis=1)[:, 0]


def _check_classes(logits: jax.Array, needed: int, what: str) -> None:
    k = logits.shape[-1]
    if k < needed:
        raise errors.UserError(f"{what} needs at least {needed} classes, but the logits have {k}")


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example cross-entropy -log softmax(z)_y, [B]."""
    return -_take(jax.nn.log_softmax(logits, axis=-1), y)


def ce_targeted(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Per-example targeted cross-entropy to maximise: -CE(z, target), [B] (y is unused)."""
    del y
    return -cross_entropy(logits, target)


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """z_y - max_{j != y} z_j, [B]: positive iff the example is classified as y."""
    z_y = _take(logits, y)
    other = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return z_y - jnp.max(other, axis=-1)


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Untargeted DLR loss, [B]; needs K >= 3 classes (ValueError otherwise)."""
    _check_classes(logits, 3, "the DLR loss")
    top = jax.lax.top_k(logits, 3)[0]
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted DLR loss (to maximise), [B]; needs K >= 4 classes (ValueError otherwise)."""
    _check_classes(logits, 4, "the targeted DLR loss")
    top = jax.lax.top_k(logits, 4)[0]
    num = _take(logits, y) - _take(logits, target)
    return -num / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def get_loss(name: str, targeted: bool = False) -> LossFn:
    """The per-example loss `fn(logits, y, target) -> [B]` called `name` ("ce" or "dlr").

    Raises:
      ValueError: for an unknown name.
    """
    if name not in LOSSES:
        raise errors.UserError(f"unknown attack loss {name!r}; allowed: {LOSSES}")
    if name == "ce":
        if targeted:
            return lambda z, y, t: ce_targeted(z, y, t)
        return lambda z, y, t: cross_entropy(z, y)
    if targeted:
        return lambda z, y, t: dlr_targeted(z, y, t)
    return lambda z, y, t: dlr(z, y)


def check_loss(name: str, num_classes: int, targeted: bool = False) -> None:
    """Raises ValueError if loss `name` is unknown or needs more than `num_classes` classes."""
    if name not in LOSSES:
        raise errors.UserError(f"unknown attack loss {name!r}; allowed: {LOSSES}")
    if name == "dlr":
        needed, what = (4, "the targeted DLR loss") if targeted else (3, "the DLR loss")
        if num_classes < needed:
            raise errors.UserError(
                f"{what} needs at least {needed} classes, but the logits have {num_classes}"
            )
    if targeted and num_classes < 2:
        raise errors.UserError(f"a targeted attack needs at least 2 classes, got {num_classes}")
