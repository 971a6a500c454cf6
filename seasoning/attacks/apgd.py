"""APGD (Croce & Hein, ICML 2020) and L1-APGD (Croce & Hein, ICML 2021) in functional JAX.

Semantics follow the reference implementation (fra31/auto-attack, `autopgd_base.py`):

- linf / l2: initial step size 2 eps, momentum alpha = 0.75 (1.0 on the first step), checkpoints
  after w_1 = max(int(0.22 N), 1) iterations and then windows shrinking by max(int(0.03 N), 1)
  down to max(int(0.06 N), 1) (for N = 100: after iterations 22, 41, 57, 70, 80, 87, 93, 99,
  i.e. p = 0, 0.22, 0.41, ...). At a checkpoint the step size is halved and the iterate restarts
  from the best point if (a) the loss increased in at most rho = 0.75 of the window's steps, or
  (b) the step size was not reduced at the previous checkpoint and the best loss did not improve
  since then.
- l1 (L1-APGD): no momentum; the step moves the top-k coordinates of |gradient| by
  step * sign(g) / k and projects exactly onto the l1 ball ∩ box; initial step size eps, initial
  sparsity k = 20% of the coordinates (`init_topk`); every max(int(0.04 N), 1) iterations the
  sparsity is set to ||x_best - x||_0 / 1.5 and, if that fell by more than 5%, the step size is
  reset to eps and the iterate restarts from the best point, else the step size is divided by 1.5
  (kept in [eps / 10, eps]). `large_reps=True` is AutoAttack's L1 schedule: 30% / 30% / 40% of
  the iterations at 3 eps, 2 eps and eps, each stage starting from the previous stage's best
  point projected onto the smaller ball, with the sparsity initialised from that point.
- random start: linf x + eps * t / max|t|, t ~ U(-1, 1); l2 x + eps * t / ||t||, t ~ N(0, I)
  (both clipped to the box); l1 the projection of x + t, t ~ N(0, I), onto the l1 ball ∩ box.

Per example the result is the last misclassified iterate of a run (the first run that
misclassifies, over restarts/targets), else the highest-loss point over all runs; points the
model already misclassifies are returned unchanged. `best_loss=True` returns the highest-loss
point instead (the training attack of fra31/robust-finetuning).

Deviations from the reference, each deliberate:
- projections are exact (the reference's l2 step is "project on the ball, then clip");
- the oscillation count of the first window compares the first step with the starting point
  (the reference compares it with an unset entry that holds 0);
- L1 sparse steps skip coordinates that sit on a face of the box with the gradient pointing out
  of it (they cannot move; "Mind the box"), so the k coordinates all move;
- every run covers the whole batch (JAX has static shapes) and results are merged by mask.

Loops: see `seasoning.attacks._common` (`unroll`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import deprecation, errors, threat
from seasoning.attacks import losses
from seasoning.attacks._common import (
    LogitsFn,
    Unroll,
    bcast,
    l0,
    l1_sparse_direction,
    loss_and_grad,
    random_start,
    resolve_unroll,
    run_loop,
    steepest_direction,
    top_other_classes,
    where,
    wrong,
)

MOMENTUM = 0.75
# The initial step size in units of eps: 2 eps for linf / l2, eps for L1-APGD.
DENSE_ALPHA, L1_ALPHA = 2.0, 1.0


# --------------------------------------------------------------------------------------------
# The schedule: one row per model evaluation


def step_size_checkpoints(n_iter: int, norm: str) -> list[tuple[int, int]]:
    """(iteration index, window length) of each APGD checkpoint for a run of `n_iter` steps."""
    if norm == "l1":
        k = max(int(0.04 * n_iter), 1)
        return [(j, k) for j in range(k - 1, n_iter, k)]
    k = max(int(0.22 * n_iter), 1)
    k_min = max(int(0.06 * n_iter), 1)
    decr = max(int(0.03 * n_iter), 1)
    out, j = [], k - 1
    while j < n_iter:
        out.append((j, k))
        k = max(k - decr, k_min)
        j += k
    return out


def large_reps_stages(n_iter: int) -> tuple[tuple[float, int], ...]:
    """AutoAttack's L1 schedule: (eps multiplier, iterations) = 3x, 2x, 1x over 30/30/40%."""
    a = math.ceil(0.3 * n_iter)
    return ((3.0, a), (2.0, a), (1.0, n_iter - 2 * a))


def _schedule(
    norm: str, stages: tuple[tuple[float, int], ...], l0_init_first: bool
) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {k: [] for k in ("eps", "init", "first", "check", "win", "l0init")}

    def add(eps, init, first, check, win, l0init):
        for k, v in zip(rows, (eps, init, first, check, win, l0init), strict=True):
            rows[k].append(v)

    for s, (mult, n_s) in enumerate(stages):
        add(mult, True, False, False, 0.0, l0_init_first if s == 0 else True)
        checks = dict(step_size_checkpoints(n_s, norm))
        for j in range(n_s):
            add(mult, False, j == 0, j in checks, float(checks.get(j, 0)), False)
    dtypes = dict(eps=np.float32, win=np.float32)
    return {k: np.asarray(v, dtype=dtypes.get(k, np.bool_)) for k, v in rows.items()}


# --------------------------------------------------------------------------------------------
# One run


class _State(NamedTuple):
    x_adv: jax.Array
    x_old: jax.Array
    grad: jax.Array
    x_best: jax.Array
    grad_best: jax.Array
    loss_best: jax.Array
    x_best_adv: jax.Array
    fooled: jax.Array
    step: jax.Array
    n_incr: jax.Array
    prev_loss: jax.Array
    loss_best_last: jax.Array
    reduced_last: jax.Array
    topk: jax.Array
    sp_old: jax.Array


class _Config(NamedTuple):
    norm: str
    eps: float
    loss: str
    targeted: bool
    rho: float
    init_topk: float
    box_aware: bool


def _proposal(c: _State, row: dict[str, Any], x: jax.Array, cfg: _Config, eps_i, proj):
    """The step from the current iterate: L1-APGD's sparse step, else the projected steepest
    step with momentum (1.0 on a stage's first step). Ignored on init rows."""
    step_b = bcast(c.step, x)
    if cfg.norm == "l1":
        return c.x_adv + step_b * l1_sparse_direction(c.grad, c.x_adv, c.topk, cfg.box_aware)
    a = where(row["first"], 1.0, MOMENTUM)
    z = proj(c.x_adv + step_b * steepest_direction(c.grad, cfg.norm), eps_i)
    return c.x_adv + a * (z - c.x_adv) + (1.0 - a) * (c.x_adv - c.x_old)


def _after_step(c: _State, x_new, loss, g, wrong_now) -> _State:
    """The bookkeeping of a regular step: the new iterate, the best (highest-loss) point and
    its gradient, the last misclassified point, and the count of loss increases."""
    improved = loss > c.loss_best
    return _State(
        x_adv=x_new,
        x_old=c.x_adv,
        grad=g,
        x_best=where(improved, x_new, c.x_best),
        grad_best=where(improved, g, c.grad_best),
        loss_best=jnp.where(improved, loss, c.loss_best),
        x_best_adv=where(wrong_now, x_new, c.x_best_adv),
        fooled=c.fooled | wrong_now,
        step=c.step,
        n_incr=c.n_incr + (loss > c.prev_loss).astype(jnp.float32),
        prev_loss=loss,
        loss_best_last=c.loss_best_last,
        reduced_last=c.reduced_last,
        topk=c.topk,
        sp_old=c.sp_old,
    )


def _checkpoint_dense(s: _State, row: dict[str, Any], cfg: _Config) -> _State:
    """linf / l2 at a checkpoint: halve the step and restart from the best point when the loss
    rose in at most rho of the window's steps, or the step was not halved last time and the
    best loss did not improve since."""
    check = row["check"]
    osc = s.n_incr <= row["win"] * cfg.rho
    no_impr = (~s.reduced_last) & (s.loss_best_last >= s.loss_best)
    red = check & (osc | no_impr)
    return s._replace(
        step=jnp.where(red, s.step / 2.0, s.step),
        x_adv=where(red, s.x_best, s.x_adv),
        grad=where(red, s.grad_best, s.grad),
        reduced_last=jnp.where(check, red, s.reduced_last),
        loss_best_last=jnp.where(check, s.loss_best, s.loss_best_last),
        n_incr=jnp.where(check, 0.0, s.n_incr),
    )


def _checkpoint_l1(s: _State, row: dict[str, Any], x: jax.Array, eps_i, n_fts: float) -> _State:
    """L1-APGD at a checkpoint: the sparsity follows the best point's; if that fell by more than
    5% the step resets to eps and the run restarts from the best point, else the step shrinks
    by 1.5 (kept in [eps / 10, eps])."""
    check = row["check"]
    sp = l0(s.x_best - x)
    red = check & (sp < 0.95 * s.sp_old)
    new_step = jnp.where(red, L1_ALPHA * eps_i, s.step / 1.5)
    new_step = jnp.clip(new_step, L1_ALPHA * eps_i / 10.0, L1_ALPHA * eps_i)
    return s._replace(
        step=jnp.where(check, new_step, s.step),
        topk=jnp.where(check, sp / n_fts / 1.5, s.topk),
        sp_old=jnp.where(check, sp, s.sp_old),
        x_adv=where(red, s.x_best, s.x_adv),
        grad=where(red, s.grad_best, s.grad),
    )


def _fresh(
    x_new, loss, g, wrong_now, row: dict[str, Any], x: jax.Array, cfg: _Config, eps_i, n_fts: float
) -> _State:
    """The state of a run (or stage) that starts at x_new (an init row)."""
    alpha = L1_ALPHA if cfg.norm == "l1" else DENSE_ALPHA
    sp0 = l0(x_new - x)
    ones = jnp.ones_like(loss)
    return _State(
        x_adv=x_new,
        x_old=x_new,
        grad=g,
        x_best=x_new,
        grad_best=g,
        loss_best=loss,
        x_best_adv=x_new,
        fooled=wrong_now,
        step=alpha * eps_i * ones,
        n_incr=0.0 * ones,
        prev_loss=loss,
        loss_best_last=loss,
        reduced_last=ones > 0,
        topk=where(row["l0init"], sp0 / n_fts / 1.5, cfg.init_topk * ones),
        sp_old=where(row["l0init"], sp0, n_fts * ones),
    )


def _single_run(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    target: jax.Array | None,
    key: jax.Array,
    cfg: _Config,
    stages: tuple[tuple[float, int], ...],
    random_init: bool,
    unroll: int | bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One APGD run (all stages): (x_best, loss_best, x_best_adv, fooled)."""
    norm, eps = cfg.norm, cfg.eps
    loss_fn = losses.get_loss(cfg.loss, cfg.targeted)
    n_fts = float(np.prod(x.shape[1:]))
    # The first stage's sparsity: 20% (`init_topk`) from a random start, as the reference's
    # attack_single_run; from the start's own sparsity only in AutoAttack's l1 schedule, which
    # starts from a given point (the reference's decr_eps_pgd passes it as x_init).
    tables = _schedule(norm, stages, l0_init_first=random_init and len(stages) > 1)
    proj = lambda v, e: threat.project(v, x, norm, e)  # noqa: E731

    def body(c: _State, row: dict[str, Any], with_grad: bool = True) -> _State:
        """One model evaluation: a step (or, on an init row, the projected best point), its
        bookkeeping, the checkpoint rules; an init row starts afresh at the new point."""
        eps_i = eps * row["eps"]
        init = row["init"]
        x_new = proj(where(init, c.x_best, _proposal(c, row, x, cfg, eps_i, proj)), eps_i)
        loss, logits, g = loss_and_grad(logits_fn, loss_fn, x_new, y, target, with_grad)
        if g is None:
            g = c.grad
        wrong_now = wrong(logits, y)
        s = _after_step(c, x_new, loss, g, wrong_now)
        check = row["check"]
        if not (isinstance(check, bool | np.bool_) and not check):
            if norm == "l1":
                s = _checkpoint_l1(s, row, x, eps_i, n_fts)
            else:
                s = _checkpoint_dense(s, row, cfg)
        fresh = _fresh(x_new, loss, g, wrong_now, row, x, cfg, eps_i, n_fts)
        return where(init, fresh, s)

    if random_init:
        start = random_start(key, x, norm, eps * stages[0][0])
    else:
        start = x
    zb = jnp.zeros(x.shape[:1], jnp.float32)
    carry = _State(
        x_adv=start,
        x_old=start,
        grad=jnp.zeros_like(x),
        x_best=start,
        grad_best=jnp.zeros_like(x),
        loss_best=zb,
        x_best_adv=start,
        fooled=zb > 0,
        step=zb,
        n_incr=zb,
        prev_loss=zb,
        loss_best_last=zb,
        reduced_last=zb > 0,
        topk=zb,
        sp_old=zb,
    )
    if unroll is True:
        # The last row needs only the loss: skip its backward pass (when rolled, a separate
        # forward-only copy of the body would cost more compile time than it saves).
        head = {k: v[:-1] for k, v in tables.items()}
        carry = run_loop(body, carry, head, unroll)
        carry = body(carry, {k: v[-1] for k, v in tables.items()}, with_grad=False)
    else:
        carry = run_loop(body, carry, tables, unroll)
    return carry.x_best, carry.loss_best, carry.x_best_adv, carry.fooled


# --------------------------------------------------------------------------------------------
# Several runs (restarts, target classes), merged per example


class RunResult(NamedTuple):
    """The merged result of several APGD runs."""

    x_adv: jax.Array  # [B, ...] misclassified point if found, else the highest-loss point
    fooled: jax.Array  # bool [B]: a misclassified point was found (or x is misclassified)
    loss: jax.Array  # [B] the best loss over runs
    x_best_loss: jax.Array  # [B, ...] the highest-loss point over runs


def _validate(tm: threat.ThreatModel, n_iter: int, n_runs: int, rho: float, init_topk: float):
    if not isinstance(tm, threat.ThreatModel):
        raise errors.UserError(f"expected a threat.ThreatModel, got {tm!r}")
    errors.check_count("n_iter", n_iter, 0)
    errors.check_count("the number of restarts/targets", n_runs, 1)
    if not 0.0 <= rho <= 1.0:
        raise errors.UserError(f"rho must be in [0, 1], got {rho!r}")
    if not 0.0 <= init_topk <= 1.0:
        raise errors.UserError(f"init_topk must be in [0, 1], got {init_topk!r}")


def apgd_runs(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    targets: jax.Array | None,
    n_runs: int,
    loss: str = "ce",
    n_iter: int = 100,
    rho: float = 0.75,
    random_start: bool = True,
    large_reps: bool = False,
    init_topk: float = 0.2,
    box_aware: bool = True,
    unroll: Unroll = None,
    logits_clean: jax.Array | None = None,
) -> RunResult:
    """`n_runs` APGD runs merged per example (the engine behind `apgd` and `apgd_targeted`).

    Args:
      targets: None (untargeted) or int [n_runs, B], the target class of each run.
      logits_clean: logits_fn(x) if already computed.
      Other arguments: as `apgd`.
    """
    _validate(tm, n_iter, n_runs, rho, init_topk)
    y = y.astype(jnp.int32)
    if logits_clean is None:
        logits_clean = logits_fn(x)
    losses.check_loss(loss, logits_clean.shape[-1], targeted=targets is not None)
    clean_wrong = wrong(logits_clean, y)
    if tm.trivial:
        return RunResult(x, clean_wrong, jnp.full(x.shape[:1], -jnp.inf, jnp.float32), x)
    if tm.norm == "l1" and large_reps:
        stages = large_reps_stages(n_iter)
    else:
        stages = ((1.0, n_iter),)
    cfg = _Config(tm.norm, tm.eps, loss, targets is not None, rho, init_topk, box_aware)
    mode = resolve_unroll(unroll, n_runs * (n_iter + len(stages)))
    keys = jax.random.split(key, n_runs)
    tgt = jnp.broadcast_to(y, (n_runs,) + y.shape) if targets is None else targets
    tgt = tgt.astype(jnp.int32)

    def step(a: RunResult, r: tuple[jax.Array, jax.Array]) -> RunResult:
        k, t = r
        x_best, loss_best, x_best_adv, fooled = _single_run(
            logits_fn, x, y, None if targets is None else t, k, cfg, stages, random_start, mode
        )
        better = loss_best > a.loss
        return RunResult(
            x_adv=where(fooled & ~a.fooled, x_best_adv, a.x_adv),  # the first run that fools
            fooled=a.fooled | fooled,
            loss=jnp.maximum(a.loss, loss_best),
            x_best_loss=where(better, x_best, a.x_best_loss),
        )

    a = RunResult(x, clean_wrong, jnp.full(x.shape[:1], -jnp.inf, jnp.float32), x)
    if n_runs == 1 or mode is True:
        for i in range(n_runs):
            a = step(a, (keys[i], tgt[i]))
    else:
        a, _ = jax.lax.scan(lambda c, r: (step(c, r), None), a, (keys, tgt))
    # Robust points (never misclassified) get the highest-loss point over all runs.
    return a._replace(x_adv=where(a.fooled, a.x_adv, a.x_best_loss))


# --------------------------------------------------------------------------------------------
# Public attacks


def apgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    loss: str = "ce",
    n_iter: int = 100,
    n_restarts: int = 1,
    target: jax.Array | None = None,
    rho: float = 0.75,
    random_start: bool = True,
    large_reps: bool = False,
    init_topk: float = 0.2,
    best_loss: bool = False,
    box_aware: bool = True,
    unroll: Unroll = None,
) -> jax.Array:
    """APGD (L1-APGD for l1) on the whole batch; pure and jit/vmap-able (settings static).

    Args:
      logits_fn: x [B, ...] -> logits [B, K], a pure JAX function.
      x: [B, ...] float32 clean inputs in [0, 1].
      y: int [B] labels.
      tm: the threat model (static). "none" or eps == 0 returns x.
      key: a `jax.random` key (random starts).
      loss: "ce" or "dlr" (DLR needs K >= 3 classes, targeted DLR K >= 4).
      n_iter: iterations (gradient steps) per run.
      n_restarts: independent runs; later runs only matter for points not yet misclassified.
      target: int [B] target classes: then the loss is targeted ("dlr": targeted DLR as in
        APGD-T, "ce": -CE to the target); success is still "not classified as y".
      rho: the oscillation threshold of the step-size rule.
      random_start: start from a random point of the ball (False: from x, as for training).
      large_reps: l1 only: AutoAttack's 3 eps / 2 eps / eps schedule (see module doc).
      init_topk: l1 only: the initial fraction of coordinates moved per step (0.2 for
        evaluation, 0.05 in fra31/robust-finetuning's training attack).
      best_loss: return the highest-loss point for every example instead of the worst case.
      box_aware: l1 only: skip coordinates stuck on a face of the box in the sparse step.
      unroll: loop mode (see module doc): None (auto), True (Python loop) or k >= 1 (scan).

    Returns:
      x_adv [B, ...] inside `tm` around x: per example a misclassified point if one was found
      (x itself if x is misclassified), else the highest-loss point over all runs.
    """
    res = apgd_runs(
        logits_fn,
        x,
        y,
        tm,
        key=key,
        targets=None if target is None else jnp.broadcast_to(target, (n_restarts,) + y.shape),
        n_runs=n_restarts,
        loss=loss,
        n_iter=n_iter,
        rho=rho,
        random_start=random_start,
        large_reps=large_reps,
        init_topk=init_topk,
        box_aware=box_aware,
        unroll=unroll,
    )
    out = res.x_best_loss if best_loss else res.x_adv
    return tm.clamp(out, x)


def apgd_targeted_runs(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    n_target_classes: int = 9,
    n_restarts: int = 1,
    loss: str = "dlr",
    target_ranks: jax.Array | None = None,
    logits_clean: jax.Array | None = None,
    **kwargs: Any,
) -> RunResult:
    """APGD-T: one targeted run per target among the top `n_target_classes` non-label classes.

    The targets are the classes with the highest clean logits other than y (min(K - 1,
    n_target_classes) of them), as the reference's APGD-T picks them. `target_ranks` (int [R],
    may be traced) runs only the targets of those ranks (0: the highest non-label logit).
    Other keyword arguments are those of `apgd_runs`.
    """
    if logits_clean is None:
        logits_clean = logits_fn(x)
    num_classes = logits_clean.shape[-1]
    losses.check_loss(loss, num_classes, targeted=True)
    n_t = min(int(n_target_classes), num_classes - 1)
    if n_t < 1:
        raise errors.UserError(f"n_target_classes must be >= 1, got {n_target_classes!r}")
    targets = top_other_classes(logits_clean, y.astype(jnp.int32), n_t)  # [n_t, B]
    if target_ranks is not None:
        targets = targets[jnp.asarray(target_ranks, jnp.int32)]
    targets = jnp.repeat(targets, n_restarts, axis=0)  # each target, then its restarts
    return apgd_runs(
        logits_fn,
        x,
        y,
        tm,
        key=key,
        targets=targets,
        n_runs=targets.shape[0],
        loss=loss,
        logits_clean=logits_clean,
        **kwargs,
    )


def apgd_targeted(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    n_target_classes: int = 9,
    n_iter: int = 100,
    n_restarts: int = 1,
    loss: str = "dlr",
    large_reps: bool = False,
    unroll: Unroll = None,
    **kwargs: Any,
) -> jax.Array:
    """APGD-T (targeted DLR over the top non-label classes); returns x_adv inside `tm`.

    Args:
      n_target_classes: targets per example (min(K - 1, n) are used; 9 in AutoAttack, 5 for l1).
      loss: "dlr" (targeted DLR, needs K >= 4) or "ce" (targeted cross-entropy).
      Other arguments: as `apgd`.
    """
    res = apgd_targeted_runs(
        logits_fn,
        x,
        y,
        tm,
        key=key,
        n_target_classes=n_target_classes,
        n_restarts=n_restarts,
        loss=loss,
        n_iter=n_iter,
        large_reps=large_reps,
        unroll=unroll,
        **kwargs,
    )
    return tm.clamp(res.x_adv, x)


# Old names, removed in the next release (CHANGELOG.md).
evaluate = deprecation.renamed(loss_and_grad, "seasoning.attacks.apgd.evaluate")
checkpoints = deprecation.renamed(step_size_checkpoints, "seasoning.attacks.apgd.checkpoints")
