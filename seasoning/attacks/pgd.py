"""PGD (Madry et al. 2018): random start, fixed step size, steepest-ascent steps, exact projection.

Steps per norm: linf moves by step * sign(g); l2 by step * g / ||g||; l1 by L1-APGD's sparse
direction (sign(g) on the top `l1_topk` fraction of |g|, divided by its l1 norm, skipping
coordinates stuck on a face of the box), so each step moves l1 mass `step`. Every step is
followed by the exact projection onto ball ∩ box. The default step size is 2.5 eps / n_iter
(Madry et al.'s rule: the steps could cross the ball 1.25 times).

The random start is APGD's (`_common.random_start`). As for APGD, each example returns the
last misclassified iterate if there is one (x itself if x is misclassified), else the
highest-loss iterate; `best_loss=True` returns the highest-loss iterate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import errors, threat
from seasoning.attacks import _common, losses
from seasoning.attacks._common import (
    LogitsFn,
    Unroll,
    l1_sparse_direction,
    loss_and_grad,
    resolve_unroll,
    run_loop,
    steepest_direction,
    where,
    wrong,
)


def default_step_size(eps: float, n_iter: int) -> float:
    """Madry et al.'s step size: 2.5 eps / n_iter."""
    return 2.5 * eps / max(int(n_iter), 1)


def pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    n_iter: int = 10,
    step_size: float | None = None,
    loss: str = "ce",
    target: jax.Array | None = None,
    random_start: bool = True,
    l1_topk: float = 0.05,
    best_loss: bool = False,
    unroll: Unroll = None,
) -> jax.Array:
    """PGD with a fixed step size; pure and jit/vmap-able (settings static).

    Args:
      logits_fn: x [B, ...] -> logits [B, K].
      x: [B, ...] float32 clean inputs in [0, 1].
      y: int [B] labels.
      tm: the threat model (static); "none" or eps == 0 returns x.
      key: `jax.random` key for the random start.
      n_iter: gradient steps.
      step_size: the step length in the threat norm; None: 2.5 eps / n_iter.
      loss: "ce" or "dlr"; with `target`, the targeted version (see `losses.get_loss`).
      target: optional int [B] target classes.
      random_start: start from a random point of the ball instead of x.
      l1_topk: l1 only: the fraction of coordinates each step moves.
      best_loss: return the highest-loss iterate for every example.
      unroll: loop mode, as for `apgd.apgd`.

    Returns:
      x_adv [B, ...] inside `tm` around x.
    """
    if not isinstance(tm, threat.ThreatModel):
        raise errors.UserError(f"expected a threat.ThreatModel, got {tm!r}")
    errors.check_count("n_iter", n_iter, 0)
    if step_size is not None and not step_size >= 0:
        raise errors.UserError(f"step_size must be >= 0 or None, got {step_size!r}")
    y = y.astype(jnp.int32)
    logits_clean = logits_fn(x)
    losses.check_loss(loss, logits_clean.shape[-1], targeted=target is not None)
    clean_wrong = wrong(logits_clean, y)
    if tm.trivial:
        return x
    norm, eps = tm.norm, tm.eps
    step = default_step_size(eps, n_iter) if step_size is None else float(step_size)
    loss_fn = losses.get_loss(loss, targeted=target is not None)
    mode = resolve_unroll(unroll, n_iter + 1)
    topk = jnp.full(x.shape[:1], l1_topk, jnp.float32)
    start = _common.random_start(key, x, norm, eps) if random_start else x

    def body(c: dict[str, Any], row: dict[str, Any], with_grad: bool = True) -> dict[str, Any]:
        x_adv = c["x_adv"]
        if norm == "l1":
            d = l1_sparse_direction(c["grad"], x_adv, topk)
        else:
            d = steepest_direction(c["grad"], norm)
        moved = tm.project(x_adv + step * d, x)
        x_new = where(row["init"], x_adv, moved)
        per, logits, g = loss_and_grad(logits_fn, loss_fn, x_new, y, target, with_grad)
        wrong_now = wrong(logits, y)
        better = per > c["loss_best"]
        return dict(
            x_adv=x_new,
            grad=c["grad"] if g is None else g,
            x_best=where(better, x_new, c["x_best"]),
            loss_best=jnp.where(better, per, c["loss_best"]),
            x_best_adv=where(wrong_now, x_new, c["x_best_adv"]),
            fooled=c["fooled"] | wrong_now,
        )

    carry = dict(
        x_adv=start,
        grad=jnp.zeros_like(x),
        x_best=start,
        loss_best=jnp.full(x.shape[:1], -jnp.inf, jnp.float32),
        x_best_adv=x,
        fooled=clean_wrong,
    )
    init = np.zeros(n_iter + 1, np.bool_)
    init[0] = True
    if mode is True:  # skip the last backward pass (see apgd._single_run)
        carry = run_loop(body, carry, {"init": init[:-1]}, mode)
        carry = body(carry, {"init": init[-1]}, with_grad=False)
    else:
        carry = run_loop(body, carry, {"init": init}, mode)
    if best_loss:
        return tm.clamp(carry["x_best"], x)
    out = where(carry["fooled"], carry["x_best_adv"], carry["x_best"])
    return tm.clamp(where(clean_wrong, x, out), x)
