"""AutoAttack-style robust evaluation: attacks in sequence, worst case per point, union of norms.

Versions (each later attack only changes points that every earlier attack left robust):

- "standard" (fra31/auto-attack's standard version without FAB-T):
  linf / l2: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR, 100 iterations, the 9
  highest non-label classes as targets, 1 restart each), Square (5000 queries, p_init 0.8);
  l1: APGD-CE (100 iterations, 5 restarts), APGD-T (100 iterations, 5 targets), both with the
  3 eps / 2 eps / eps schedule (`large_reps`) of L1-APGD; no Square (not implemented for l1).
- "fast": APGD-CE (25 iterations, 1 restart) then APGD-T (25 iterations, 3 targets); l1 also
  uses `large_reps`. No Square.

Targets are min(K - 1, n) classes when the model has fewer classes. APGD-T needs K >= 4 (the
targeted DLR loss); with fewer classes it is replaced by untargeted APGD-DLR (K == 3) or
skipped (K == 2). FAB-T, in the reference's standard version, is not implemented: it rarely
changes the robust accuracy after APGD-T (Croce & Hein 2020) and is a minimum-norm attack.

Every returned x_adv is projected onto the threat set and then checked with `tm.contains`; with
`check=True` a failed check raises at run time (through `jax.debug.callback`), and
`return_info=True` returns the per-example flags as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import threat
from seasoning.attacks.apgd import LogitsFn, Unroll, apgd_runs, apgd_targeted_runs, where
from seasoning.attacks.square import square_run

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "square")


def version_settings(version: str, norm: str) -> dict[str, Any]:
    """The attacks and budgets of an AutoAttack version for a norm (see module doc)."""
    l1 = norm == "l1"
    if version == "standard":
        return dict(
            attacks=("apgd-ce", "apgd-t") if l1 else ("apgd-ce", "apgd-t", "square"),
            n_iter=100,
            n_restarts=5 if l1 else 1,
            n_target_classes=5 if l1 else 9,
            n_queries=5000,
            large_reps=l1,
        )
    if version == "fast":
        return dict(
            attacks=("apgd-ce", "apgd-t"),
            n_iter=25,
            n_restarts=1,
            n_target_classes=3,
            n_queries=1000,
            large_reps=l1,
        )
    raise ValueError(f"unknown AutoAttack version {version!r}; allowed: ('standard', 'fast')")


class AutoAttackInfo(NamedTuple):
    """Per-example outcome of `auto_attack`."""

    robust: jax.Array  # bool [B]: classified correctly at x_adv (the robust accuracy's terms)
    clean: jax.Array  # bool [B]: classified correctly at x
    inside: jax.Array  # bool [B]: tm.contains(x_adv, x)
    after: dict[str, jax.Array]  # attack name -> bool [B], robust to it and all before it
    each: dict[str, jax.Array]  # APGD attack name -> bool [B], robust to that attack alone
    # (Square attacks only the points every earlier attack left robust: see `after`.)


def correct(logits_fn: LogitsFn, x: jax.Array, y: jax.Array) -> jax.Array:
    """bool [B]: logits_fn(x) predicts y."""
    return jnp.argmax(logits_fn(x), axis=-1) == y


def robust_accuracy(logits_fn: LogitsFn, x_adv: jax.Array, y: jax.Array) -> jax.Array:
    """Accuracy on `x_adv` (the robust accuracy when x_adv comes from `auto_attack`)."""
    return jnp.mean(correct(logits_fn, x_adv, y).astype(jnp.float32))


def union_robust(per_threat_robust: Mapping[str, jax.Array]) -> jax.Array:
    """bool [B]: robust under every threat model (a point counts only if it survives all).

    Raises:
      ValueError: for an empty mapping.
    """
    if not per_threat_robust:
        raise ValueError("union_robust needs at least one threat model's robust flags")
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
    n_queries: int | None = None,
    unroll: Unroll = None,
    check: bool = True,
    return_info: bool = False,
) -> jax.Array | tuple[jax.Array, AutoAttackInfo]:
    """AutoAttack: the worst case per example over a sequence of attacks.

    Pure and jit/vmap-able (all settings static). Accuracy on the returned points is the robust
    accuracy. Per example: x if x is misclassified; else the first attack's point that
    misclassifies it; else the first attack's highest-loss point.

    Args:
      logits_fn: x [B, ...] -> logits [B, K].
      x: [B, ...] float32 clean inputs in [0, 1] (NHWC images for Square).
      y: int [B] labels.
      tm: the threat model; "none" or eps == 0 returns x.
      key: `jax.random` key.
      version: "standard" or "fast" (see module doc).
      attacks, n_iter, n_restarts, n_target_classes, n_queries: override the version's
        settings (`attacks` from ("apgd-ce", "apgd-dlr", "apgd-t", "square"); n_restarts is for
        APGD-CE/DLR, APGD-T runs 1 restart per target).
      unroll: APGD's loop mode (see `apgd`).
      check: raise at run time if a returned point is outside the threat model.
      return_info: also return an `AutoAttackInfo`.

    Returns:
      x_adv [B, ...], or (x_adv, info) with `return_info`.
    """
    cfg = version_settings(version, tm.norm)
    for name, value in dict(
        attacks=attacks,
        n_iter=n_iter,
        n_restarts=n_restarts,
        n_target_classes=n_target_classes,
        n_queries=n_queries,
    ).items():
        if value is not None:
            cfg[name] = tuple(value) if name == "attacks" else value
    for name in cfg["attacks"]:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; allowed: {ATTACKS}")
    if tm.norm == "l1" and "square" in cfg["attacks"]:
        raise ValueError("square is not implemented for l1; drop it from `attacks`")

    y = y.astype(jnp.int32)
    logits_clean = logits_fn(x)
    num_classes = logits_clean.shape[-1]
    clean = jnp.argmax(logits_clean, axis=-1) == y
    robust, x_out, after, each = clean, x, {}, {}
    if not tm.trivial:
        keys = jax.random.split(key, len(cfg["attacks"]))
        common = dict(
            key=None,
            n_iter=cfg["n_iter"],
            large_reps=cfg["large_reps"],
            unroll=unroll,
            logits_clean=logits_clean,
        )
        for name, k in zip(cfg["attacks"], keys, strict=True):
            common["key"] = k
            if name == "apgd-t" and num_classes < 4:
                if num_classes < 3:
                    continue  # no targeted (or DLR) loss for 2 classes: APGD-CE covers it
                name = "apgd-dlr"
            if name in ("apgd-ce", "apgd-dlr"):
                loss = "ce" if name == "apgd-ce" else "dlr"
                res = apgd_runs(
                    logits_fn, x, y, tm, targets=None, n_runs=cfg["n_restarts"], loss=loss,
                    **common,
                )  # fmt: skip
                x_a = res.x_adv
            elif name == "apgd-t":
                res = apgd_targeted_runs(
                    logits_fn, x, y, tm, n_target_classes=cfg["n_target_classes"], **common
                )
                x_a = res.x_adv
            else:
                x_a, _ = square_run(
                    logits_fn, x, y, tm, key=k, n_queries=cfg["n_queries"], p_init=0.8,
                    rescale_schedule=False, active=robust,
                )  # fmt: skip
            x_a = tm.clamp(x_a, x)
            ok = correct(logits_fn, x_a, y)
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
