"""What every attack is built from: loops, starts, steps, the loss and its gradient.

APGD (`apgd`), PGD (`pgd`), FAB-T (`fab`), Square (`square`) and AutoAttack (`autoattack`)
share these pieces: the loop over a schedule of iterations (`run_loop`, its mode from
`resolve_unroll`), the random start in a threat model's ball (`random_start`), the step
directions (`steepest_direction` for linf / l2, `l1_sparse_direction` for L1-APGD), the
per-example loss, logits and input gradient (`loss_and_grad`), and the bookkeeping over a batch
(`bcast`, `where`, `wrong`, `top_other_classes`).

Loops: `unroll=k` runs the iterations in a `lax.scan` with k iterations per loop body;
`unroll=True` traces a Python loop (no XLA while loop). On CPU, XLA runs the input-gradient
convolutions of a model several times slower inside a while loop than outside one, unless the
model's convolutions come from `seasoning.models.conv` (every model of `seasoning.models` does):
then a rolled loop runs about as fast as a full unroll, which compiles in time proportional to
the iterations. `unroll=None` (default) unrolls fully on CPU when the whole attack is at most
`AUTO_UNROLL_MAX_STEPS` model evaluations (the 10-step training attack, still a little faster
unrolled), else uses a rolled loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import bisection, errors, threat
from seasoning.attacks import losses

LogitsFn = Callable[[jax.Array], jax.Array]
Unroll = int | bool | None

AUTO_UNROLL_MAX_STEPS = 16


def bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes a [B] array to broadcast against `like` ([B, ...])."""
    return jnp.reshape(v, jnp.shape(v) + (1,) * (jnp.ndim(like) - jnp.ndim(v)))


def where(cond: Any, a: Any, b: Any) -> Any:
    """`jnp.where` over matching pytrees; a static Python/NumPy bool picks a branch at trace time.

    `cond` is a scalar or a [B] array (broadcast against each leaf's leading axis).
    """
    if isinstance(cond, bool | np.bool_):
        return a if cond else b

    def pick(u, v):
        return jnp.where(bcast(cond, u), u, v)

    return jax.tree.map(pick, a, b)


def resolve_unroll(unroll: Unroll, n_steps: int) -> int | bool:
    """The loop mode for `n_steps` model evaluations (see the module doc for `None`)."""
    if unroll is None:
        small = n_steps <= AUTO_UNROLL_MAX_STEPS
        return True if (small and jax.default_backend() == "cpu") else 1
    if unroll is True or unroll is False:
        return True if unroll else 1
    if int(unroll) < 1:
        raise errors.UserError(f"unroll must be True, None or an int >= 1, got {unroll!r}")
    return int(unroll)


def run_loop(body: Callable, carry: Any, tables: dict[str, Any], unroll: int | bool) -> Any:
    """Runs `carry = body(carry, row)` over the rows of `tables` (arrays of equal length).

    With `unroll=True` the loop is unrolled in Python and a row holds `table[i]` (static
    NumPy scalars for NumPy tables: the body may branch on them); otherwise the loop is a
    `lax.scan` with `unroll` rows per loop body and rows are traced. Every attack's loops run
    here (APGD's and PGD's iterations, FAB's iterations and its targets x restarts); Square's
    is a `lax.while_loop`, as it stops once every point is broken.
    """
    n = len(next(iter(tables.values())))
    if n == 0:
        return carry
    if unroll is True:
        for i in range(n):
            carry = body(carry, {k: v[i] for k, v in tables.items()})
        return carry
    xs = {k: jnp.asarray(v) for k, v in tables.items()}
    carry, _ = jax.lax.scan(lambda c, r: (body(c, r), None), carry, xs, unroll=unroll)
    return carry


def random_start(key: jax.Array, x: jax.Array, norm: str, eps: float) -> jax.Array:
    """A random point of the eps-ball ∩ box around x, as the reference APGD starts."""
    if norm == "linf":
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
        t = t / (bcast(threat.lp_norm(t, "linf"), t) + 1e-12)
        return jnp.clip(x + eps * t, 0.0, 1.0)
    if norm == "l2":
        t = jax.random.normal(key, x.shape, x.dtype)
        t = t / (bcast(threat.lp_norm(t, "l2"), t) + 1e-12)
        return jnp.clip(x + eps * t, 0.0, 1.0)
    if norm == "l1":
        return threat.project_l1(x + jax.random.normal(key, x.shape, x.dtype), x, eps)
    return x


def l1_sparse_direction(
    grad: jax.Array, x_adv: jax.Array, topk: jax.Array, box_aware: bool = True
) -> jax.Array:
    """L1-APGD's step direction: sign(g) on the top `topk` fraction of |g|, divided by its l1 norm.

    Args:
      grad: [B, ...] gradient.
      x_adv: [B, ...] current point (for `box_aware`).
      topk: [B] fraction of coordinates to move (the threshold is the value of sorted |g| at
        index floor((1 - topk) n), so ties at the threshold all move).
      box_aware: skip coordinates on a box face whose gradient points out of the box.
    """
    g = grad
    if box_aware:
        stuck = ((x_adv <= 0.0) & (g < 0)) | ((x_adv >= 1.0) & (g > 0))
        g = jnp.where(stuck, 0.0, g)
    flat = jnp.abs(g.reshape(g.shape[0], -1))
    n = flat.shape[1]
    idx = jnp.clip(jnp.floor((1.0 - topk) * n), 0, n - 1).astype(jnp.int32)
    # The threshold is the (n - idx)-th largest |g|: the largest value that at least n - idx
    # entries reach (found by bisection over values; a sort of each row is slow on XLA:CPU).
    count = (n - idx).astype(jnp.float32)
    thr, _ = bisection.flip_point(
        lambda t: jnp.sum(flat >= t[:, None], axis=1, dtype=jnp.float32) < count, idx.shape
    )
    s = jnp.sign(g) * (jnp.abs(g) >= bcast(thr, g))
    return s / bcast(threat.lp_norm(s, "l1") + 1e-10, s)


def steepest_direction(grad: jax.Array, norm: str) -> jax.Array:
    """The unit steepest-ascent direction for linf (sign) and l2 (g / ||g||)."""
    if norm == "linf":
        return jnp.sign(grad)
    if norm == "l2":
        return grad / bcast(threat.lp_norm(grad, "l2") + 1e-12, grad)
    raise errors.UserError(
        f"no dense steepest direction for norm {norm!r}; allowed: ('linf', 'l2')"
    )


def loss_and_grad(
    logits_fn: LogitsFn,
    loss_fn: losses.LossFn,
    x: jax.Array,
    y: jax.Array,
    target: jax.Array | None,
    with_grad: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Per-example loss [B], logits [B, K] and (optionally) the input gradient at `x`."""

    def f(z):
        logits = logits_fn(z).astype(jnp.float32)
        per = loss_fn(logits, y, target)
        return jnp.sum(per), (per, logits)

    if with_grad:
        (_, (per, logits)), g = jax.value_and_grad(f, has_aux=True)(x)
        return per, logits, g
    _, (per, logits) = f(x)
    return per, logits, None


def wrong(logits: jax.Array, y: jax.Array) -> jax.Array:
    """bool [B]: the prediction differs from y."""
    return jnp.argmax(logits, axis=-1) != y


def l0(delta: jax.Array) -> jax.Array:
    """Per-example number of non-zero coordinates, as float32 [B]."""
    return jnp.sum(delta.reshape(delta.shape[0], -1) != 0, axis=1).astype(jnp.float32)


def top_other_classes(logits: jax.Array, y: jax.Array, n: int) -> jax.Array:
    """The n highest-scoring classes other than y, int [n, B] (best first)."""
    masked = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jax.lax.top_k(masked, n)[1].T.astype(jnp.int32)
