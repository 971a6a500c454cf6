"""AutoAttack over a whole evaluation set: each attack runs only on the points still robust.

`auto_attack` is one compiled program with fixed shapes (what a vmapped soup grid needs): every
attack runs on every point of the batch. For a model's evaluation that wastes most of the
work, since after APGD-CE the later, costlier attacks only matter for the points APGD-CE left
robust. `run_auto_attack` does what the reference does: it runs the attacks' units (APGD-CE's
restarts, APGD-T's and FAB-T's target classes, Square) one after another from the host, each
on the points every earlier unit left robust, in fixed-size (padded) batches sharded over the
device mesh, so each attack compiles once (the unit is an argument of the program).

Per point the result is the first unit's point that misclassifies it, else the first unit's
highest-loss point. A point counts as robust only if every unit failed on it and its returned
point is classified correctly when predicted again: a break is never undone (a re-prediction
can differ from the attack's own at the decision boundary, by float reduction order). Every
returned point is checked to lie in the threat model.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from seasoning import parallel, threat
from seasoning.attacks.autoattack import (
    attack_unit,
    correct,
    effective_name,
    n_units,
    resolve_settings,
)

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (variables, x) -> logits


@dataclasses.dataclass
class AttackReport:
    """The outcome of `run_auto_attack` on one threat model.

    Attributes:
      robust: bool [N]: every attack failed on the point (and its returned point is classified
        correctly).
      clean: bool [N]: classified correctly at the clean point.
      after: attack name -> robust accuracy after it and every attack before it.
      seconds: attack name -> wall-clock seconds (compilation included).
      settings: the resolved settings (attacks, iterations, restarts, targets, queries).
      threat: the threat model attacked.
      wall_seconds: the whole call's seconds (clean predictions and checks included).
    """

    robust: np.ndarray
    clean: np.ndarray
    after: dict[str, float]
    seconds: dict[str, float]
    settings: dict[str, Any]
    threat: threat.ThreatModel
    wall_seconds: float

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean.mean())


def predict(
    apply_fn: ApplyFn, variables: Any, x: np.ndarray, *, batch_size: int, mesh: Mesh
) -> np.ndarray:
    """Predicted classes (int [N]) of `apply_fn(variables, .)` on `x`, in sharded batches."""
    fn = _compiled_predict(apply_fn, mesh)
    out = []
    for idx, n in _chunks(np.arange(len(x)), batch_size):
        out.append(np.asarray(fn(variables, x[idx]))[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def run_threat_models(
    apply_fn: ApplyFn,
    variables: Any,
    x: np.ndarray,
    y: np.ndarray,
    threats: Sequence[threat.ThreatModel],
    *,
    key: jax.Array,
    **kwargs: Any,
) -> dict[str, AttackReport]:
    """`run_auto_attack` under each threat model; str(threat model) -> its report.

    Threat model i uses the key fold_in(key, i): `seasoning.evaluate` and the soups' per-soup
    evaluation measure a model alike, so a one-hot soup scores exactly as its ingredient.

    Args:
      apply_fn, variables, x, y: as `run_auto_attack`.
      threats: the threat models, in order.
      key: `jax.random` key.
      **kwargs: `run_auto_attack`'s version, batch_size, mesh and attack overrides.
    """
    reports = {}
    for i, tm in enumerate(threats):
        _, reports[str(tm)] = run_auto_attack(
            apply_fn, variables, x, y, tm, key=jax.random.fold_in(key, i), **kwargs
        )
    return reports


def run_auto_attack(
    apply_fn: ApplyFn,
    variables: Any,
    x: np.ndarray,
    y: np.ndarray,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    version: str = "standard",
    batch_size: int = 256,
    mesh: Mesh | None = None,
    **overrides: Any,
) -> tuple[np.ndarray, AttackReport]:
    """AutoAttack of `version` on all of x, each attack unit only on the points still robust.

    Args:
      apply_fn: (variables, x [B, ...]) -> logits [B, K]; pure (BN models in eval mode).
      variables: the model's variables (passed to the compiled attacks as an argument).
      x: float32 [N, ...] in [0, 1] (host numpy).
      y: int [N] labels.
      tm: the threat model.
      key: `jax.random` key; attack i, unit u, batch j use fold_in(key, i), then u, then j.
      version: "standard" or "fast" (see `attacks.autoattack`).
      batch_size: points per compiled call (rounded up to a multiple of the device count).
      mesh: the device mesh (default: all devices).
      **overrides: `auto_attack` settings (n_iter, n_restarts, n_target_classes, fab_n_iter,
        fab_n_target_classes, n_queries, attacks).

    Returns:
      (x_adv [N, ...], report). x_adv is inside `tm` around x (checked).

    Raises:
      ValueError: an unknown version or setting.
      RuntimeError: if a returned point lies outside the threat model (a bug, never expected).
    """
    call_start = time.monotonic()
    mesh = parallel.make_mesh() if mesh is None else mesh
    batch_size = parallel.round_up_to_devices(min(batch_size, max(len(x), 1)), mesh)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    # Survivors are attacked in batches padded to a multiple of an eighth of the batch size.
    quantum = parallel.round_up_to_devices(-(-batch_size // 8), mesh)
    settings = resolve_settings(version, tm.norm, overrides)
    frozen = tuple(sorted(settings.items()))
    num_classes = _num_classes(apply_fn, variables, x)
    clean = predict(apply_fn, variables, x, batch_size=batch_size, mesh=mesh) == y
    robust, x_adv = clean.copy(), x.copy()
    after: dict[str, float] = {}
    seconds: dict[str, float] = {}
    first = True
    if not tm.trivial:
        for i, requested in enumerate(settings["attacks"]):
            name = effective_name(requested, num_classes)
            if name is None:
                continue
            start = time.monotonic()
            attack = _compiled_unit(apply_fn, mesh, tm, name, frozen)
            units = n_units(name, settings, num_classes)
            for u in range(units):
                todo = np.flatnonzero(robust)
                for j, (idx, n) in enumerate(_chunks(todo, batch_size, quantum)):
                    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), u), j)
                    x_a, ok = attack(variables, x[idx], y[idx], k, np.int32(u))
                    x_a, ok, rows = np.asarray(x_a)[:n], np.asarray(ok)[:n], idx[:n]
                    # The first unit's point stands for every point it did not break (its
                    # highest-loss point); later units replace only the points they break.
                    replace = np.ones(n, bool) if first else ~ok
                    x_adv[rows[replace]] = x_a[replace]
                    robust[rows] &= ok
                    done = j * batch_size + n
                    logging.info(
                        "%s %s %d/%d: %d/%d points, robust accuracy at most %.2f%%, %.0f s",
                        tm, name, u + 1, units, done, len(todo), 100 * robust.mean(),
                        time.monotonic() - start,
                    )  # fmt: skip
                first = False
            after[name] = float(robust.mean())
            seconds[name] = time.monotonic() - start
    _check_inside(tm, x_adv, x, batch_size)
    final = predict(apply_fn, variables, x_adv, batch_size=batch_size, mesh=mesh) == y
    if np.any(final != robust):
        logging.warning(
            "%s: %d point(s) broken by an attack are classified correctly when predicted again, "
            "%d robust point(s) are not; both count as broken.",
            tm, np.sum(final & ~robust), np.sum(robust & ~final),
        )  # fmt: skip
    report = AttackReport(
        robust=robust & final, clean=clean, after=after, seconds=seconds,
        settings=settings, threat=tm, wall_seconds=time.monotonic() - call_start,
    )  # fmt: skip
    return x_adv, report


def _num_classes(apply_fn: ApplyFn, variables: Any, x: np.ndarray) -> int:
    shape = jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)
    return int(jax.eval_shape(apply_fn, variables, shape).shape[-1])


def _one_unit(apply_fn, variables, x, y, key, rank, *, tm, name, settings):
    logits_fn = functools.partial(apply_fn, variables)
    cfg = dict(settings)
    x_adv = attack_unit(logits_fn, x, y, tm, name, key=key, cfg=cfg, rank=rank)
    return x_adv, correct(logits_fn, x_adv, y)


# The compiled functions are kept per (apply_fn, mesh, settings): a caller that evaluates many
# models with one apply_fn (a sweep of soups) traces and compiles each attack once.
@functools.lru_cache(maxsize=64)
def _compiled_unit(apply_fn, mesh, tm, name, settings):
    fn = functools.partial(_one_unit, apply_fn, tm=tm, name=name, settings=settings)
    return _jit_sharded(fn, mesh, n_batched=2)


@functools.lru_cache(maxsize=64)
def _compiled_predict(apply_fn, mesh):
    return _jit_sharded(lambda v, xb: jnp.argmax(apply_fn(v, xb), axis=-1), mesh, n_batched=1)


def _check_inside(tm: threat.ThreatModel, x_adv: np.ndarray, x: np.ndarray, batch: int) -> None:
    inside = [
        np.asarray(tm.contains(x_adv[s : s + batch], x[s : s + batch]))
        for s in range(0, len(x), batch)
    ]
    inside = np.concatenate(inside) if inside else np.zeros((0,), bool)
    if not inside.all():
        raise RuntimeError(
            f"{(~inside).sum()} adversarial point(s) lie outside {tm} (a bug in the attacks)."
        )


def _jit_sharded(fn: Callable, mesh: Mesh, n_batched: int) -> Callable:
    """jit with the variables replicated, `n_batched` batch arguments sharded over 'data'."""
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
    shardings = (replicated,) + (sharded,) * n_batched
    if n_batched == 2:
        shardings += (replicated, replicated)  # the key and the unit
    return jax.jit(fn, in_shardings=shardings)


def _chunks(indices: np.ndarray, size: int, quantum: int | None = None):
    """Yields (index batch, number of real entries); padding repeats the last index.

    Batches hold `size` indices; a last, shorter one is padded only up to a multiple of
    `quantum` (default: `size`), so that the few points a later attack still has to attack do
    not cost a whole batch, while each attack compiles for at most size / quantum shapes.
    """
    quantum = quantum or size
    for start in range(0, len(indices), size):
        idx = indices[start : start + size]
        padded = min(size, -(-len(idx) // quantum) * quantum)
        yield np.concatenate([idx, np.repeat(idx[-1:], padded - len(idx))]), len(idx)
