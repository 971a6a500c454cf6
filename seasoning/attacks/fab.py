"""FAB (Croce & Hein, ICML 2020), the fast adaptive boundary attack, for linf, l2 and l1.

FAB is a minimum-norm attack: it looks for the adversarial point closest to x. Each iteration
linearises the decision boundary between the label y and a target class t at the current
iterate x_k, f(z) ~ f(x_k) + <grad f(x_k), z - x_k> with f = z_t - z_y, and steps towards the
hyperplane f = 0 from two places at once (semantics of fra31/auto-attack's `fab_base.py`):

- d_k: the minimal-norm step from x_k onto the hyperplane within the [0, 1] box, and
  d_0: the same from the clean point x;
- alpha = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max), and
  x_{k+1} = clip((1 - alpha) (x_k + eta d_k) + alpha (x + eta d_0), 0, 1)  (eta: overshoot);
- if x_{k+1} is misclassified it is recorded when closer to x than the best so far, and the
  iterate moves back towards x: x_{k+1} = x + beta (x_{k+1} - x).

The step onto the hyperplane is the exact solution of min ||d||_p s.t. <w, t + d> = b,
0 <= t + d <= 1 (`project_to_hyperplane`): along each coordinate the step moves against the sign
of w, by m_i(lam) = min(lam g_i, room_i) with room_i the distance to the box face in that
direction, and lam the smallest value at which the step reaches the plane. linf: g_i = 1 (a
common step, capped by the box); l2: g_i = |w_i| (the KKT form of the box-constrained
least-norm problem); l1 (a fractional knapsack): whole coordinates in order of decreasing |w_i|,
found as the weight at which the coordinates above it stop sufficing. The decrease of <w, d> is
monotone in lam (and in that weight), so a bisection over float32 values (`bisection`) finds
either exactly, to one ulp; when even the box corner does not reach the plane, the step goes to
that corner (as the reference does).

FAB-T (the targeted version in AutoAttack's standard set) runs one attack per target class:
the `n_target_classes` highest clean logits other than y, each without random start (restart
r > 0 starts at a random point of radius eps / 2, as the reference does). Its gradient is that
of one scalar per example, z_t - z_y: one backward pass per iteration (plus the forward pass
that tests the new iterate), never the per-class Jacobian the untargeted version needs.

Per example the result is the closest misclassified point over all targets and restarts; a
point counts as broken under a threat model when that distance is at most eps. Deviations from
the reference: every target runs on the whole batch (static shapes) and the runs are merged by
distance; the hyperplane projections solve the same problems by bisection over values instead of
the reference's sort (a sort of each row is slow on XLA:CPU).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import bisection, errors, threat
from seasoning.attacks._common import (
    LogitsFn,
    Unroll,
    bcast,
    resolve_unroll,
    run_loop,
    top_other_classes,
    where,
    wrong,
)

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9
NORMS = ("linf", "l2", "l1")


# --------------------------------------------------------------------------------------------
# The minimal-norm step onto a hyperplane within the box


def _knapsack_share(weights: jax.Array, room: jax.Array, need: jax.Array) -> jax.Array:
    """l1: the fraction of each coordinate's room to use, [B, n].

    Minimises sum_i m_i subject to sum_i weights_i m_i = need, 0 <= m_i <= room_i: whole
    coordinates in order of decreasing weight, those of the last weight needed in part (in
    proportion to their room). Where even every coordinate falls short, all are used.
    """
    gain = weights * room

    def gain_above(theta):
        return jnp.sum(jnp.where(weights > theta[:, None], gain, 0.0), axis=1)

    _, pivot = bisection.flip_point(lambda t: gain_above(t) < need, need.shape)
    full = weights > pivot[:, None]
    tie = weights == pivot[:, None]
    rest = need - gain_above(pivot)
    tie_gain = jnp.sum(jnp.where(tie, gain, 0.0), axis=1)
    frac = jnp.clip(rest / jnp.maximum(tie_gain, 1e-30), 0.0, 1.0)
    share = jnp.where(full, 1.0, jnp.where(tie, frac[:, None], 0.0))
    feasible = jnp.sum(gain, axis=1) >= need
    return jnp.where(feasible[:, None], share, 1.0)


def project_to_hyperplane(t: jax.Array, w: jax.Array, c: jax.Array, norm: str) -> jax.Array:
    """The minimal-norm step d with <w, d> = -c and t + d in [0, 1], per row.

    That is the step from t onto the hyperplane {z : <w, z> = b} for c = <w, t> - b (passed
    as c, since computing it from b loses precision when <w, t> is large).

    Args:
      t: [B, n] points in the box.
      w: [B, n] hyperplane normals.
      c: [B] the hyperplane's residual at t.
      norm: "linf", "l2" or "l1": the norm of d to minimise.

    Returns:
      d [B, n]. Where the box cannot reach the hyperplane, the step to the box corner that
      gets closest to it. Coordinates with w_i == 0 never move.
    """
    flip = jnp.where(c >= 0, 1.0, -1.0)
    w, need = w * flip[:, None], c * flip  # now <w, d> must fall by need >= 0
    weights = jnp.abs(w)
    room = jnp.where(w > 0, t, 1.0 - t)  # how far each coordinate can move against sign(w)
    room = jnp.where(w != 0, room, 0.0)
    if norm == "l1":
        move = room * _knapsack_share(weights, room, need)
    else:
        rate = jnp.where(weights > 0, 1.0, 0.0) if norm == "linf" else weights

        def fall(lam):  # how much <w, d> falls for the step of parameter lam
            return jnp.sum(weights * jnp.minimum(lam[:, None] * rate, room), axis=1)

        _, lam = bisection.flip_point(lambda v: fall(v) >= need, need.shape)
        feasible = jnp.sum(weights * room, axis=1) >= need
        move = jnp.where(feasible[:, None], jnp.minimum(lam[:, None] * rate, room), room)
    return -jnp.sign(w) * move


# --------------------------------------------------------------------------------------------
# FAB-T


class FabResult(NamedTuple):
    """The closest adversarial points FAB found."""

    x_adv: jax.Array  # [B, ...] the closest misclassified point found (x where none, or x wrong)
    distance: jax.Array  # [B] its norm-distance to x: 0 if x is misclassified, inf if none found


def _random_start(key: jax.Array, x: jax.Array, norm: str, radius: float) -> jax.Array:
    """The reference's FAB restart point: x + radius * t / ||t||, clipped to the box."""
    if norm == "linf":
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    else:
        t = jax.random.normal(key, x.shape, x.dtype)
    t = t / (bcast(threat.lp_norm(t, norm), t) + 1e-12)
    return jnp.clip(x + radius * t, 0.0, 1.0)


def _targeted_run(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    target: jax.Array,
    start: jax.Array,
    norm: str,
    n_iter: int,
    alpha_max: float,
    eta: float,
    beta: float,
    unroll: int | bool,
) -> tuple[jax.Array, jax.Array]:
    """One FAB-T run from `start`: (closest misclassified point, its distance or inf)."""
    shape, batch = x.shape, x.shape[0]
    x0 = x.reshape(batch, -1)
    rows = jnp.arange(batch)

    def boundary(z):
        logits = logits_fn(z.reshape(shape)).astype(jnp.float32)
        diff = logits[rows, target] - logits[rows, y]
        return jnp.sum(diff), diff

    def body(c: dict[str, jax.Array], _: Any) -> dict[str, jax.Array]:
        x1 = c["x1"]
        g, df = jax.grad(boundary, has_aux=True)(x1)
        # The hyperplane df + <g, z - x1> = 0: its residual is df at x1, df + <g, x0 - x1> at x0.
        d1 = project_to_hyperplane(x1, g, df, norm)
        d0 = project_to_hyperplane(x0, g, df + jnp.sum(g * (x0 - x1), axis=1), norm)
        a1 = jnp.maximum(threat.lp_norm(d1, norm), 1e-8)
        a0 = jnp.maximum(threat.lp_norm(d0, norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a0), 0.0, alpha_max)[:, None]
        x_new = jnp.clip((1.0 - alpha) * (x1 + eta * d1) + alpha * (x0 + eta * d0), 0.0, 1.0)
        adv = wrong(logits_fn(x_new.reshape(shape)), y)
        dist = threat.lp_norm(x_new - x0, norm)
        closer = adv & (dist < c["dist"])
        return dict(
            x1=where(adv, x0 + beta * (x_new - x0), x_new),
            best=where(closer, x_new, c["best"]),
            dist=jnp.where(closer, dist, c["dist"]),
        )

    carry = dict(
        x1=start.reshape(batch, -1), best=x0, dist=jnp.full((batch,), jnp.inf, jnp.float32)
    )
    carry = run_loop(body, carry, {"i": np.arange(n_iter)}, unroll)
    return carry["best"].reshape(shape), carry["dist"]


def fab_targeted_runs(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    norm: str,
    *,
    key: jax.Array,
    eps: float = 0.0,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    n_iter: int = 100,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
    target_ranks: jax.Array | None = None,
    unroll: Unroll = None,
    logits_clean: jax.Array | None = None,
) -> FabResult:
    """FAB-T's runs (targets x restarts) merged per example: the closest adversarial point.

    Args:
      logits_fn, x, y: as `fab`.
      norm: "linf", "l2" or "l1".
      key: `jax.random` key (restarts after the first).
      eps: the radius of the restarts' random starts (eps / 2); unused with 1 restart.
      n_target_classes, n_restarts, n_iter, alpha_max, eta, beta, unroll: as `fab`.
      target_ranks: optional int [R]: run only the targets of these ranks (0: the highest
        non-label logit), e.g. one rank per call to attack target by target; may be traced.
      logits_clean: logits_fn(x) if already computed.

    Returns:
      A `FabResult`.
    """
    _validate(norm, n_target_classes, n_restarts, n_iter, alpha_max, eta, beta)
    y = y.astype(jnp.int32)
    if logits_clean is None:
        logits_clean = logits_fn(x)
    num_classes = logits_clean.shape[-1]
    if num_classes < 2:
        raise errors.UserError(f"FAB-T needs at least 2 classes, the logits have {num_classes}")
    clean_wrong = wrong(logits_clean, y)
    n_t = min(int(n_target_classes), num_classes - 1)
    targets = top_other_classes(logits_clean, y, n_t)  # [n_t, B]
    if target_ranks is not None:
        targets = targets[jnp.asarray(target_ranks, jnp.int32)]
    n_runs = targets.shape[0] * int(n_restarts)
    mode = resolve_unroll(unroll, n_runs * n_iter)
    targets = jnp.repeat(targets, n_restarts, axis=0)
    restart = jnp.tile(jnp.arange(n_restarts), n_runs // n_restarts)
    keys = jax.random.split(key, n_runs)

    def one(acc: FabResult, run: dict[str, jax.Array]) -> FabResult:
        start = where(run["restart"] > 0, _random_start(run["key"], x, norm, 0.5 * eps), x)
        best, dist = _targeted_run(
            logits_fn, x, y, run["target"], start, norm, n_iter, alpha_max, eta, beta, mode
        )
        closer = dist < acc.distance
        return FabResult(where(closer, best, acc.x_adv), jnp.where(closer, dist, acc.distance))

    acc = FabResult(x, jnp.where(clean_wrong, 0.0, jnp.inf).astype(jnp.float32))
    runs = {"target": targets, "restart": restart, "key": keys}
    return run_loop(one, acc, runs, True if mode is True else 1)


def _validate(norm, n_target_classes, n_restarts, n_iter, alpha_max, eta, beta) -> None:
    if norm not in NORMS:
        raise errors.UserError(f"FAB supports norms {NORMS}, got {norm!r}")
    errors.check_count("n_target_classes", n_target_classes, 1)
    errors.check_count("n_restarts", n_restarts, 1)
    errors.check_count("n_iter", n_iter, 0)
    if not 0.0 <= alpha_max <= 1.0:
        raise errors.UserError(f"alpha_max must be in [0, 1], got {alpha_max!r}")
    if not eta >= 1.0:
        raise errors.UserError(f"eta (overshoot) must be >= 1, got {eta!r}")
    if not 0.0 < beta <= 1.0:
        raise errors.UserError(f"beta (backward step) must be in (0, 1], got {beta!r}")


def fab(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    n_iter: int = 100,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
    unroll: Unroll = None,
) -> jax.Array:
    """FAB-T under a threat model; pure and jit/vmap-able (settings static).

    Args:
      logits_fn: x [B, ...] -> logits [B, K], a pure JAX function.
      x: [B, ...] float32 clean inputs in [0, 1].
      y: int [B] labels.
      tm: the threat model (static): linf, l2 or l1; "none" or eps == 0 returns x.
      key: `jax.random` key (random starts of restarts after the first).
      n_target_classes: targets per example, the highest non-label clean logits (min(K - 1,
        n) of them; 9 in AutoAttack).
      n_restarts: runs per target; the first starts at x, later ones at random points.
      n_iter: iterations per run.
      alpha_max, eta, beta: the step's bias towards x, its overshoot, and the backward step
        after a success (the reference's 0.1, 1.05, 0.9).
      unroll: loop mode, as for `apgd`.

    Returns:
      x_adv [B, ...] inside `tm`: the closest misclassified point found when it lies within eps
      (x itself if x is misclassified), else x.
    """
    if not isinstance(tm, threat.ThreatModel):
        raise errors.UserError(f"expected a threat.ThreatModel, got {tm!r}")
    if tm.trivial:
        return x
    res = fab_targeted_runs(
        logits_fn,
        x,
        y,
        tm.norm,
        key=key,
        eps=tm.eps,
        n_target_classes=n_target_classes,
        n_restarts=n_restarts,
        n_iter=n_iter,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        unroll=unroll,
    )
    return tm.clamp(where(res.distance <= tm.eps, res.x_adv, x), x)
