"""AutoAttack-style robust evaluation: attacks in sequence, worst case per point, union of norms.

Versions (each later attack only changes points that every earlier attack left robust):

- "standard" (fra31/auto-attack's standard version): APGD-CE, APGD-T, FAB-T, Square.
  linf / l2: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR, 100 iterations, the 9
  highest non-label classes as targets, 1 restart each); l1: APGD-CE (100 iterations, 5
  restarts) and APGD-T (100 iterations, 5 targets), both with L1-APGD's 3 eps / 2 eps / eps
  schedule (`large_reps`). Every norm: FAB-T (100 iterations, 9 targets, no random start) and
  Square (5000 queries, p_init 0.8, no schedule rescaling).
- "fast": APGD-CE (25 iterations, 1 restart) then APGD-T (25 iterations, 3 targets); l1 also
  uses `large_reps`. No FAB-T, no Square.

Targets are min(K - 1, n) classes when the model has fewer classes. APGD-T needs K >= 4 (the
targeted DLR loss); with fewer classes it is replaced by untargeted APGD-DLR (K == 3) or
skipped (K == 2). FAB-T breaks a point when the closest misclassified point it finds lies
within eps.

An attack is made of units: APGD-CE's restarts, APGD-T's and FAB-T's target classes (by rank
of the clean logits), Square's one run. `auto_attack` runs every unit on every point in one
program; `attack_unit` runs one unit, so that a host-driven evaluation can run each unit on the
points all earlier units left robust, as the reference does (`seasoning.evaluation`).

Every returned x_adv is projected onto the threat set and then checked with `tm.contains`; with
`check=True` a failed check raises at run time (through `jax.debug.callback`), and
`return_info=True` returns the per-example flags as well. A point counts as robust only if every
attack failed on it: a later attack never restores a point an earlier one broke.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import errors, threat
from seasoning.attacks._common import LogitsFn, Unroll, where
from seasoning.attacks.apgd import apgd_runs, apgd_targeted_runs
from seasoning.attacks.fab import fab_targeted_runs
from seasoning.attacks.square import square_run

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
VERSIONS = ("standard", "fast")
# The settings a caller may override (`auto_attack`'s keyword arguments of the same names).
SETTINGS = (
    "attacks",
    "n_iter",
    "n_restarts",
    "n_target_classes",
    "fab_n_iter",
    "fab_n_target_classes",
    "n_queries",
)
# The settings that are budgets (integers; 0 or None: the version's), as config sections and
# flags name them.
BUDGETS = tuple(name for name in SETTINGS if name != "attacks")


def version_settings(version: str, norm: str) -> dict[str, Any]:
    """The attacks and budgets of an AutoAttack version for a norm (see module doc).

    Keys: attacks; n_iter, n_restarts, n_target_classes (APGD-CE/DLR and APGD-T); fab_n_iter,
    fab_n_target_classes (FAB-T); n_queries (Square); large_reps (l1 APGD's eps schedule).
    """
    l1 = norm == "l1"
    if version == "standard":
        return dict(
            attacks=("apgd-ce", "apgd-t", "fab-t", "square"),
            n_iter=100,
            n_restarts=5 if l1 else 1,
            n_target_classes=5 if l1 else 9,
            fab_n_iter=100,
            fab_n_target_classes=9,
            n_queries=5000,
            large_reps=l1,
        )
    if version == "fast":
        return dict(
            attacks=("apgd-ce", "apgd-t"),
            n_iter=25,
            n_restarts=1,
            n_target_classes=3,
            fab_n_iter=25,
            fab_n_target_classes=3,
            n_queries=1000,
            large_reps=l1,
        )
    raise errors.UserError(f"unknown AutoAttack version {version!r}; allowed: {VERSIONS}")


def resolve_settings(version: str, norm: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The version's settings with `overrides` (None values ignored) applied and checked.

    Raises:
      ValueError: an unknown version, setting or attack name, or a bad budget.
    """
    cfg = version_settings(version, norm)
    for name, value in overrides.items():
        if name not in SETTINGS:
            raise errors.UserError(f"unknown AutoAttack setting {name!r}; allowed: {SETTINGS}")
        if value is None:
            continue
        if name == "attacks":
            cfg[name] = tuple(value)
            continue
        low = 0 if name in ("n_iter", "fab_n_iter", "n_queries") else 1
        if isinstance(value, bool):
            raise errors.UserError(f"AutoAttack setting {name} must be an int, got {value!r}")
        errors.check_count(f"AutoAttack setting {name}", value, low)
        cfg[name] = int(value)
    for name in cfg["attacks"]:
        if name not in ATTACKS:
            raise errors.UserError(f"unknown attack {name!r}; allowed: {ATTACKS}")
    return cfg


def n_units(name: str, cfg: Mapping[str, Any], num_classes: int) -> int:
    """How many units (restarts or target classes) attack `name` runs with settings `cfg`."""
    if name in ("apgd-ce", "apgd-dlr"):
        return cfg["n_restarts"]
    if name == "apgd-t":
        return min(cfg["n_target_classes"], num_classes - 1)
    if name == "fab-t":
        return min(cfg["fab_n_target_classes"], num_classes - 1)
    return 1


def effective_name(name: str, num_classes: int) -> str | None:
    """The attack that runs for `name` on K classes: APGD-T needs K >= 4 (APGD-DLR for K == 3,
    nothing for K == 2)."""
    if name == "apgd-t" and num_classes < 4:
        return "apgd-dlr" if num_classes == 3 else None
    return name


def attack_unit(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    name: str,
    *,
    key: jax.Array,
    cfg: Mapping[str, Any],
    rank: jax.Array | None = None,
    logits_clean: jax.Array | None = None,
    active: jax.Array | None = None,
    unroll: Unroll = None,
) -> jax.Array:
    """One attack of AutoAttack (`rank=None`: all its units), x_adv inside `tm`.

    Args:
      name: an attack of `ATTACKS` (as `effective_name` maps it for the class count).
      cfg: the resolved settings (`resolve_settings`).
      rank: None, or an int scalar (may be traced): run one unit only: the target class of
        that rank (APGD-T, FAB-T) or a single restart (APGD-CE/DLR; the key makes it
        distinct). Square has one unit.
      active: Square only: bool [B], the points to attack (default: the correctly classified
        ones); its loop ends when all of them are broken.
      Other arguments: as `auto_attack`.

    Returns:
      x_adv: per example a misclassified point where the attack found one, else (APGD) the
      highest-loss point or (FAB-T, Square) a point of the attack's search.
    """
    if logits_clean is None:
        logits_clean = logits_fn(x)
    y = y.astype(jnp.int32)
    ranks = None if rank is None else jnp.reshape(jnp.asarray(rank, jnp.int32), (1,))
    common = dict(
        key=key,
        n_iter=cfg["n_iter"],
        large_reps=cfg["large_reps"],
        unroll=unroll,
        logits_clean=logits_clean,
    )
    if name in ("apgd-ce", "apgd-dlr"):
        res = apgd_runs(
            logits_fn,
            x,
            y,
            tm,
            targets=None,
            n_runs=cfg["n_restarts"] if rank is None else 1,
            loss="ce" if name == "apgd-ce" else "dlr",
            **common,
        )
        x_a = res.x_adv
    elif name == "apgd-t":
        res = apgd_targeted_runs(
            logits_fn,
            x,
            y,
            tm,
            n_target_classes=cfg["n_target_classes"],
            target_ranks=ranks,
            **common,
        )
        x_a = res.x_adv
    elif name == "fab-t":
        res = fab_targeted_runs(
            logits_fn,
            x,
            y,
            tm.norm,
            key=key,
            eps=tm.eps,
            n_target_classes=cfg["fab_n_target_classes"],
            n_iter=cfg["fab_n_iter"],
            target_ranks=ranks,
            unroll=unroll,
            logits_clean=logits_clean,
        )
        x_a = where(res.distance <= tm.eps, res.x_adv, x)
    elif name == "square":
        if active is None:
            active = jnp.argmax(logits_clean, axis=-1) == y
        x_a, _ = square_run(
            logits_fn,
            x,
            y,
            tm,
            key=key,
            n_queries=cfg["n_queries"],
            p_init=0.8,
            rescale_schedule=False,
            active=active,
        )
    else:
        raise errors.UserError(f"unknown attack {name!r}; allowed: {ATTACKS}")
    return tm.clamp(x_a, x)


class AutoAttackInfo(NamedTuple):
    """Per-example outcome of `auto_attack`."""

    robust: jax.Array  # bool [B]: classified correctly at x_adv (the robust accuracy's terms)
    clean: jax.Array  # bool [B]: classified correctly at x
    inside: jax.Array  # bool [B]: tm.contains(x_adv, x)
    after: dict[str, jax.Array]  # attack name -> bool [B], robust to it and all before it
    each: dict[str, jax.Array]  # attack name -> bool [B], robust to that attack alone
    # (Square attacks only the points correctly classified at x; so does every attack.)


def correct(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """bool [B]: logits_fn(x) predicts y."""
    return jnp.argmax(logits_fn(x), axis=-1) == y


def full_precision():
    """A context in which traced matmuls and convolutions run at full float32 precision.

    Every decision of an evaluation that makes a number (is this point classified correctly,
    clean or at its adversarial point) is traced in it: on GPUs float32 matmuls otherwise run
    in TF32 (about 3 significant digits) and TPUs in bfloat16 passes, which can flip the
    prediction of a point near the decision boundary. One forward pass per point per attack
    unit; it changes nothing on CPU (always full float32) nor for a bfloat16 model.
    """
    return jax.default_matmul_precision("highest")


def decided_correct(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """`correct` at full float32 precision (`full_precision`): an evaluation's decision."""
    with full_precision():
        return correct(logits_fn, x, y)


def robust_accuracy(logits_fn: LogitsFn, x_adv: jax.Array, y: jax.Array) -> jax.Array:
    """Accuracy on `x_adv` (the robust accuracy when x_adv comes from `auto_attack`)."""
    return jnp.mean(correct(logits_fn, x_adv, y).astype(jnp.float32))


def union_robust(per_threat_robust: Mapping[str, jax.Array]) -> jax.Array:
    """bool [B]: robust under every threat model (a point counts only if it survives all).

    Raises:
      ValueError: for an empty mapping.
    """
    if not per_threat_robust:
        raise errors.UserError("union_robust needs at least one threat model's robust flags")
    flags = [jnp.asarray(v, bool) for v in per_threat_robust.values()]
    out = flags[0]
    for f in flags[1:]:
        out = out & f
    return out


def _raise_if_outside(n_outside: np.ndarray) -> None:
    n = int(np.sum(n_outside))
    if n:
        raise RuntimeError(f"auto_attack produced {n} point(s) outside the threat model (a bug)")


def auto_attack(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    version: str = "standard",
    attacks: tuple[str, ...] | None = None,
    n_iter: int | None = None,
    n_restarts: int | None = None,
    n_target_classes: int | None = None,
    fab_n_iter: int | None = None,
    fab_n_target_classes: int | None = None,
    n_queries: int | None = None,
    unroll: Unroll = None,
    check: bool = True,
    return_info: bool = False,
    search_logits_fn: LogitsFn | None = None,
) -> jax.Array | tuple[jax.Array, AutoAttackInfo]:
    """AutoAttack: the worst case per example over a sequence of attacks.

    Pure and jit/vmap-able (all settings static). Accuracy on the returned points is the robust
    accuracy. Per example: x if x is misclassified; else the first attack's point that
    misclassifies it; else the first attack's highest-loss point. Every attack runs on every
    point (fixed shapes): one pure program, what code that must jit or vmap the whole
    evaluation needs (the compiled soup grid), and the slower choice to evaluate a model:
    `run_standard_evaluation` (arrays in and out) and `seasoning.evaluation` run each attack
    only on the points still robust.

    Args:
      logits_fn: x [B, ...] -> logits [B, K].
      x: [B, ...] float32 clean inputs in [0, 1] (NHWC images for Square).
      y: int [B] labels.
      tm: the threat model; "none" or eps == 0 returns x.
      key: `jax.random` key.
      version: "standard" or "fast" (see module doc).
      attacks, n_iter, n_restarts, n_target_classes, fab_n_iter, fab_n_target_classes,
        n_queries: override the version's settings (`attacks` from `ATTACKS`; n_iter,
        n_restarts and n_target_classes are APGD's, APGD-T runs 1 restart per target;
        fab_n_iter and fab_n_target_classes are FAB-T's; n_queries is Square's).
      unroll: the APGD and FAB loops' mode (see `apgd`).
      check: raise at run time if a returned point is outside the threat model.
      return_info: also return an `AutoAttackInfo`.
      search_logits_fn: the model the attacks search with (their losses, gradients and
        steps), e.g. `logits_fn`'s model computing in bfloat16; default `logits_fn`. Which
        points are correctly classified, clean and adversarial, is always decided by
        `logits_fn` at full float32 precision (`full_precision`).

    Returns:
      x_adv [B, ...], or (x_adv, info) with `return_info`.
    """
    cfg = resolve_settings(
        version,
        tm.norm,
        dict(
            attacks=attacks,
            n_iter=n_iter,
            n_restarts=n_restarts,
            n_target_classes=n_target_classes,
            fab_n_iter=fab_n_iter,
            fab_n_target_classes=fab_n_target_classes,
            n_queries=n_queries,
        ),
    )
    y = y.astype(jnp.int32)
    with full_precision():
        logits_clean = logits_fn(x)
    num_classes = logits_clean.shape[-1]
    clean = jnp.argmax(logits_clean, axis=-1) == y
    search_fn = logits_fn if search_logits_fn is None else search_logits_fn
    robust, x_out, after, each = clean, x, {}, {}
    if not tm.trivial:
        keys = jax.random.split(key, len(cfg["attacks"]))
        for name, k in zip(cfg["attacks"], keys, strict=True):
            name = effective_name(name, num_classes)
            if name is None:
                continue  # no targeted (or DLR) loss for 2 classes: APGD-CE covers it
            x_a = attack_unit(
                search_fn,
                x,
                y,
                tm,
                name,
                key=k,
                cfg=cfg,
                logits_clean=logits_clean,
                active=robust,
                unroll=unroll,
            )
            ok = decided_correct(logits_fn, x_a, y)
            # The first attack's point stands for every correctly classified example (for the
            # robust ones it is APGD-CE's highest-loss point); later attacks replace it only
            # where they misclassify a point that was still robust.
            x_out = where((robust & ~ok) | (clean & (not after)), x_a, x_out)
            robust = robust & ok
            after[name] = robust
            if name != "square":
                each[name] = clean & ok
    inside = tm.contains(x_out, x)
    if check:
        # A scalar (per vmapped soup) so that sharded batches need no gather for the callback.
        jax.debug.callback(_raise_if_outside, jnp.sum(~inside))
    if return_info:
        info = AutoAttackInfo(robust=robust, clean=clean, inside=inside, after=after, each=each)
        return x_out, info
    return x_out


def run_standard_evaluation(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    version: str = "standard",
    batch_size: int = 500,
    search_logits_fn: LogitsFn | None = None,
    **overrides: Any,
) -> np.ndarray:
    """AutoAttack as the reference's `run_standard_evaluation(x, y)`: arrays in, arrays out,
    each attack run only on the points every earlier attack left robust (the fast way; a
    point broken stays broken). The way to evaluate a model from arrays.

    The attacks run in `seasoning.evaluation.Evaluator`'s still_robust schedule, in batches of
    `batch_size` sharded over every device of this process; `auto_attack` is the same search
    as one pure program over every point.

    Args:
      logits_fn: x [B, H, W, C] -> logits [B, K]: the model, in eval mode. A closure over a
        big model's weights compiles them in as constants: for such a model use
        `seasoning.evaluation.Evaluator`, which passes the weights as arguments.
      x: [N, H, W, C] clean inputs in [0, 1].
      y: int [N] labels.
      tm: the threat model.
      key: `jax.random` key.
      version: "standard" or "fast".
      batch_size: points per compiled call.
      search_logits_fn: the model the attacks search with, e.g. the same model in bfloat16
        (default `logits_fn`); `logits_fn` at full float32 precision decides which points are
        broken.
      **overrides: `auto_attack` settings replacing the version's (n_iter, n_target_classes,
        n_restarts, n_queries, ...).

    Returns:
      float32 [N, H, W, C]: per point, x if it is misclassified; else the first attack's point
      that misclassifies it; else the first attack's highest-loss point. Each lies in `tm`'s
      ball around x and in [0, 1].

    Raises:
      UserError: x not [N, H, W, C] in [0, 1], or x and y of different lengths; several
        processes (use `seasoning.evaluation.Evaluator`).
    """
    from seasoning import evaluation, parallel  # late: the evaluator builds on this package

    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if x.ndim != 4 or len(x) != len(y) or not (x.min() >= 0 and x.max() <= 1):
        raise errors.UserError(
            f"x {x.shape} in [{x.min()}, {x.max()}], y {y.shape}: expected x [N, H, W, C] in "
            "[0, 1] and N labels."
        )
    shape = jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)
    source = _Arrays(x, y, int(jax.eval_shape(logits_fn, shape).shape[-1]))
    search = None if search_logits_fn is None else _ApplyLogits(search_logits_fn)
    evaluator = evaluation.Evaluator(
        _ApplyLogits(logits_fn),
        evaluation.AttackSettings.make([tm], version, **overrides),
        batch_size=batch_size,
        mesh=parallel.make_mesh(jax.local_devices()),
        search_apply_fn=search,
    )
    result = evaluator.run(None, source, np.arange(len(x)), key=key, keep_points=True)
    return result.points[str(tm)]


@dataclasses.dataclass(frozen=True)
class _ApplyLogits:
    """(variables, x) -> logits_fn(x): a `logits_fn` as the evaluator's apply function."""

    logits_fn: LogitsFn

    def __call__(self, variables: Any, x: jax.Array) -> jax.Array:
        del variables
        return self.logits_fn(x)


class _Arrays(NamedTuple):
    """Inputs in [0, 1] and labels as a `data.Source` (float32 images, which the evaluator
    takes as they are)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]
