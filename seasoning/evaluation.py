"""The one evaluator: per-point clean and robust flags of a model, or of many soups, on a dataset.

Every driver measures models here: `seasoning.evaluate` (eval.json), both soup modes
(grid.json), training's periodic evaluation, and the shift driver. Given an apply function and
its variables, a data source and the points to use, the threat models and AutoAttack settings,
it returns per-point flags [M, N] for the metrics `metric_names(threats)`: clean, each threat
model (`linf:0.1`), and the union (robust under every threat model) when there are several.

Two schedules:

- `still_robust` (`seasoning.evaluate`'s, the reference's): the attacks' units (APGD-CE's
  restarts, APGD-T's and FAB-T's target classes, Square) run one after another from the host,
  each on the points every earlier unit left robust, in padded batches sharded over the device
  mesh (one compile per attack: the unit is an argument). A point is robust when every unit
  failed on it and its returned point is classified correctly when predicted again in the
  evaluation's own batches: a break is never undone. Every returned point is checked to lie in
  the threat model. Threat model i uses fold_in(key, i); attack a, unit u, batch j then
  fold_in(., a), u, j.
- `all_points`: every attack on every point, fixed shapes, one compiled program per batch
  (`point_flags`), which is what evaluating many soups inside one program needs
  (`run_all_points` takes any flags function, e.g. a `lax.map` over soups). Batch j uses
  fold_in(key, j), threat model i then fold_in(., i).

Both schedules run the same attacks with the same budgets; they differ in which points a later
attack sees, and so in the random draws (starting points, Square's windows) each point gets.

Search and decision: the attacks take their losses, gradients and steps from `search_apply_fn`
(default `apply_fn`; e.g. the same model computing in bfloat16), while every decision that makes
a number (is this point classified correctly, clean or at a returned point) is `apply_fn`'s at
full float32 precision (`autoattack.full_precision`). A cruder search model can make the attacks
weaker, never count a robust point broken.

Multi-host: the points are cut into global batches of `batch_size` (the same batches whatever
the number of processes), each process loads and feeds only its rows of each batch
(`jax.make_array_from_process_local_data`), the programs return the batch's flags replicated,
so every process ends with the same global flags; callers write files from process 0 only. On
the same global batches and the same device count a result equals the 1-process result.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from seasoning import data, errors, evaluation_batches, evaluation_setup, parallel, threat
from seasoning.attacks import autoattack

# The set-up's names, as evaluation.<name> (one implementation, in seasoning.evaluation_setup).
AttackSettings = evaluation_setup.AttackSettings
Target = evaluation_setup.Target
target = evaluation_setup.target
SEARCH_DTYPES = evaluation_setup.SEARCH_DTYPES
search_dtype_for = evaluation_setup.search_dtype_for
# The points in global batches, each process its rows (evaluation_batches).
batch_size_for = evaluation_batches.batch_size_for
chunks = evaluation_batches.chunks
load_batch = evaluation_batches.load_batch
decoded_once = evaluation_batches.decoded_once
DECODED_CACHE_BYTES = evaluation_batches.DECODED_CACHE_BYTES

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (variables, x [B, H, W, C]) -> logits [B, K]
# (model argument, x, y, key) -> bool [..., M, B]: per-point flags of one batch.
FlagsFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]

SCHEDULES = ("still_robust", "all_points")
# The attacks' loops run rolled (`lax.scan`, one iteration a loop body) on every backend. On
# CPU the default (`unroll=None`, `attacks._common`) unrolls budgets of up to 16 model
# evaluations, which the training attack gains from; an evaluation does not: rolled, it compiles
# faster and runs as fast (measured: docs/evaluation.md, "Evaluating a run").
UNROLL = 1
# Survivor batches are padded to a multiple of this fraction of the batch size, so a later
# attack's few points do not cost a whole batch, and each attack compiles for at most this
# many batch shapes.
SURVIVOR_QUANTA = 8


def metric_names(threats: Sequence[threat.ThreatModel]) -> list[str]:
    """The metrics of an evaluation: clean, one per threat model, and union (several threats)."""
    names = ["clean"] + [str(tm) for tm in threats]
    return names + ["union"] if len(threats) > 1 else names


def metric_flags(clean: Any, robust: Sequence[Any]) -> jax.Array:
    """bool [M, B]: the rows of `metric_names` from clean flags and per-threat robust flags.

    The union (a point counts only if it survives every threat model) is computed here, once,
    for every schedule; it is added when there are two or more threat models.
    """
    rows = [jnp.asarray(clean, bool)] + [jnp.asarray(r, bool) for r in robust]
    if len(robust) > 1:
        union = rows[1]
        for r in rows[2:]:
            union = union & r
        rows.append(union)
    return jnp.stack(rows)


def checked_accuracy(count: Any, total: Any, name: str = "accuracy") -> float:
    """count / total as a float, checked to lie in [0, 1] (a result is never written otherwise).

    Raises:
      RuntimeError: total <= 0, or count outside [0, total]: a bug (e.g. rows fed twice).
    """
    count, total = float(count), float(total)
    if not total > 0 or not 0 <= count <= total:
        raise RuntimeError(f"{name}: {count:g} of {total:g} points is not an accuracy (a bug).")
    return count / total


def flag_accuracies(flags: np.ndarray) -> np.ndarray:
    """float [..., M]: the fraction of the points (last axis) that each row counts, checked.

    Raises:
      RuntimeError: no points, or a fraction outside [0, 1] (a bug).
    """
    flags = np.asarray(flags)
    counts = flags.sum(axis=-1)
    num = flags.shape[-1]
    if num == 0 or counts.min(initial=0) < 0 or counts.max(initial=0) > num:
        raise RuntimeError(f"Counts {counts} of {num} points are not accuracies (a bug).")
    return counts / num


@dataclasses.dataclass
class Evaluation:
    """The outcome of an evaluation: per-point flags and what produced them.

    Attributes:
      names: the metrics (`metric_names`), one row of `flags` each.
      flags: bool [M, N]: per metric, whether each point counts (correct, robust, ...).
      indices: int [N]: the points' indices in the source.
      loss: float [N] clean cross-entropy per point (`still_robust` only), else None.
      details: threat name -> {"after": attack -> robust accuracy after it and every attack
        before it, "seconds": attack -> wall-clock seconds, "settings": the resolved attack
        settings} (`still_robust` only; empty otherwise).
      seconds: the whole evaluation's wall-clock seconds.
      points: threat name -> float32 [N, H, W, C]: per point the adversarial point the
        attacks returned (the first that broke it, else the first attack's worst case; the
        clean point where no attack ran), when `run(keep_points=True)` asked for them.
    """

    names: list[str]
    flags: np.ndarray
    indices: np.ndarray
    loss: np.ndarray | None = None
    details: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    points: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return int(self.flags.shape[-1])

    def counts(self) -> dict[str, int]:
        """Metric -> the number of points that count for it."""
        return {n: int(c) for n, c in zip(self.names, self.flags.sum(axis=-1), strict=True)}

    def accuracies(self) -> dict[str, float]:
        """Metric -> fraction of the points, each checked to lie in [0, 1]."""
        return dict(zip(self.names, flag_accuracies(self.flags).tolist(), strict=True))

    def mean_loss(self) -> float:
        """Mean clean cross-entropy (`still_robust` evaluations)."""
        if self.loss is None:
            raise ValueError("This evaluation recorded no loss (all_points schedule).")
        return float(np.mean(self.loss))


def point_flags(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    settings: AttackSettings,
    search_logits_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """bool [M, B]: the `all_points` flags of one batch (pure, jit- and vmap-able).

    Every attack of `settings` runs on every point (`attacks.auto_attack`); threat model i
    uses fold_in(key, i). The attacks search with `search_logits_fn` (default `logits_fn`);
    `logits_fn` at full float32 precision decides every flag.
    """
    clean = autoattack.decided_correct(logits_fn, x, y)
    robust = []
    for i, tm in enumerate(settings.threats):
        _, info = autoattack.auto_attack(
            logits_fn,
            x,
            y,
            tm,
            key=jax.random.fold_in(key, i),
            version=settings.version,
            unroll=UNROLL,
            return_info=True,
            search_logits_fn=search_logits_fn,
            **dict(settings.overrides),
        )
        robust.append(info.robust)
    return metric_flags(clean, robust)


@functools.lru_cache(maxsize=64)
def _model_flags(apply_fn: ApplyFn, settings: AttackSettings, search_apply_fn: ApplyFn) -> FlagsFn:
    """A FlagsFn whose model argument is the variables of `apply_fn` (one per triple, so that
    its compiled program is shared by every Evaluator of the triple)."""

    def flags_fn(variables, x, y, key):
        return point_flags(
            functools.partial(apply_fn, variables),
            x,
            y,
            key,
            settings=settings,
            search_logits_fn=functools.partial(search_apply_fn, variables),
        )

    return flags_fn


# ------------------------------------------------------------------------------------------
# Global batches: the same for any number of processes; each process feeds its rows.


def check_points(
    indices: np.ndarray | None, source: data.Source, n_examples: int = 0
) -> np.ndarray:
    """The points to evaluate: `indices`, or the first `n_examples` of `source` (0: all).

    Raises:
      UserError: a bad n_examples, no points, or an index outside the source.
    """
    if indices is None:
        n_examples = errors.check_count("n_examples", n_examples, 0)
        indices = np.arange(min(n_examples or len(source), len(source)))
    indices = np.asarray(indices, np.int64).reshape(-1)
    if len(indices) == 0:
        raise errors.UserError(f"No points to evaluate (the source holds {len(source)}).")
    if indices.min() < 0 or indices.max() >= len(source):
        raise errors.UserError(
            f"Point indices must lie in [0, {len(source)}); got {indices.min()}..{indices.max()}."
        )
    return indices


# ------------------------------------------------------------------------------------------
# The all_points schedule.


@functools.lru_cache(maxsize=64)
def _compiled_flags(flags_fn: FlagsFn, mesh: Mesh) -> Callable:
    return evaluation_batches.replicated_jit(flags_fn, mesh, n_sharded=2, n_after=1)


def run_all_points(
    flags_fn: FlagsFn,
    model_arg: Any,
    source: data.Source,
    indices: np.ndarray,
    *,
    key: jax.Array,
    batch_size: int,
    mesh: Mesh,
) -> np.ndarray:
    """The `all_points` schedule for any flags function: [..., M, N] of its dtype.

    Args:
      flags_fn: (model_arg, x, y, key) -> [..., M, B] per-point outputs (bool flags, or e.g.
        predicted labels), pure; compiled once per function object and mesh (pass the same
        object for many models).
      model_arg: its first argument (variables, or stacked soups and their weights),
        replicated on every device.
      source, indices: the points (`check_points`).
      key: batch j uses fold_in(key, j).
      batch_size: global points per compiled call (rounded up to the device count).
      mesh: the device mesh.
    """
    program = _compiled_flags(flags_fn, mesh)
    size = evaluation_batches.batch_size_for(batch_size, mesh, len(indices))
    out = None
    for j, (pos, n) in enumerate(evaluation_batches.chunks(np.arange(len(indices)), size)):
        x, y = evaluation_batches.load_batch(source, indices[pos], mesh)
        flags = np.asarray(program(model_arg, x, y, jax.random.fold_in(key, j)))
        if out is None:
            out = np.zeros((*flags.shape[:-1], len(indices)), flags.dtype)
        out[..., pos[:n]] = flags[..., :n]
    return out


# ------------------------------------------------------------------------------------------
# The still_robust schedule.


def _clean(apply_fn, variables, x, y):
    with autoattack.full_precision():
        logits = apply_fn(variables, x).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.argmax(logits, axis=-1) == y, loss


def _one_unit(apply_fn, search_apply_fn, variables, x, y, key, unit, *, tm, name, frozen):
    search_fn = functools.partial(search_apply_fn, variables)
    x_adv = autoattack.attack_unit(
        search_fn, x, y, tm, name, key=key, cfg=dict(frozen), rank=unit, unroll=UNROLL
    )
    ok = autoattack.decided_correct(functools.partial(apply_fn, variables), x_adv, y)
    return x_adv, ok, tm.contains(x_adv, x)


def _final(apply_fn, variables, x_adv, x, y, *, tm):
    ok = autoattack.decided_correct(functools.partial(apply_fn, variables), x_adv, y)
    return ok, tm.contains(x_adv, x)


@functools.lru_cache(maxsize=64)
def _compiled_clean(apply_fn: ApplyFn, mesh: Mesh) -> Callable:
    return evaluation_batches.replicated_jit(functools.partial(_clean, apply_fn), mesh, n_sharded=2)


@functools.lru_cache(maxsize=64)
def _compiled_unit(
    apply_fn: ApplyFn, search_apply_fn: ApplyFn, mesh: Mesh, tm, name: str, frozen: tuple
) -> Callable:
    fn = functools.partial(_one_unit, apply_fn, search_apply_fn, tm=tm, name=name, frozen=frozen)
    return evaluation_batches.replicated_jit(fn, mesh, n_sharded=2, n_after=2)


@functools.lru_cache(maxsize=64)
def _compiled_final(apply_fn: ApplyFn, mesh: Mesh, tm) -> Callable:
    return evaluation_batches.replicated_jit(
        functools.partial(_final, apply_fn, tm=tm), mesh, n_sharded=3
    )


def _num_classes(apply_fn: ApplyFn, variables: Any, image_shape: tuple[int, ...]) -> int:
    shape = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    return int(jax.eval_shape(apply_fn, variables, shape).shape[-1])


class Evaluator:
    """Evaluates models of one apply function under fixed attack settings (see module doc).

    Build it once and call `run` for each model (or soup): the programs are compiled once per
    apply function, mesh and settings.

        evaluator = Evaluator(apply_fn, AttackSettings.make(threats, "standard"))
        result = evaluator.run(variables, source, check_points(None, source, 1000),
                               key=jax.random.key(0))
        result.accuracies()   # {"clean": ..., "linf:0.0313725": ..., ..., "union": ...}

    Args:
      apply_fn: (variables, x) -> logits, eval mode (BatchNorm running statistics); pure.
        It decides every flag (correctly classified, clean and at each adversarial point),
        its matmuls and convolutions at full float32 precision (`autoattack.full_precision`).
      settings: the threat models and AutoAttack settings (no threat models: clean only).
      schedule: "still_robust" or "all_points".
      batch_size: global points per compiled call (rounded up to the device count).
      mesh: the device mesh (default: every device of every process).
      search_apply_fn: the model the attacks search with (their losses, gradients and
        steps), taking the same variables: e.g. the model computing in bfloat16
        (`runs.Run.apply_fn_in`); default `apply_fn`. Its points are judged by `apply_fn`.

    Raises:
      UserError: an unknown schedule or a bad batch size.
    """

    def __init__(
        self,
        apply_fn: ApplyFn,
        settings: AttackSettings,
        *,
        schedule: str = "still_robust",
        batch_size: int = 256,
        mesh: Mesh | None = None,
        search_apply_fn: ApplyFn | None = None,
    ):
        if schedule not in SCHEDULES:
            raise errors.UserError(f"Unknown schedule {schedule!r}; expected one of {SCHEDULES}.")
        self.apply_fn = apply_fn
        self.search_apply_fn = apply_fn if search_apply_fn is None else search_apply_fn
        self.settings = settings
        self.schedule = schedule
        self.mesh = parallel.make_mesh() if mesh is None else mesh
        self.batch_size = evaluation_batches.batch_size_for(batch_size, self.mesh)
        self.names = metric_names(settings.threats)
        self._flags_fn = (
            _model_flags(apply_fn, settings, self.search_apply_fn)
            if schedule == "all_points"
            else None
        )

    def run(
        self,
        variables: Any,
        source: data.Source,
        indices: np.ndarray,
        *,
        key: jax.Array,
        label: str = "",
        keep_points: bool = False,
        finished: Mapping[str, tuple[np.ndarray, dict[str, Any]]] | None = None,
        on_threat: Callable[[str, np.ndarray, dict[str, Any]], None] | None = None,
    ) -> Evaluation:
        """Evaluates `variables` on the points `indices` of `source`.

        Args:
          variables: the model's variables (replicated on every device).
          source: the dataset split.
          indices: the points (`check_points`); every process passes the same.
          key: the attacks' `jax.random` key.
          label: a name for progress lines (e.g. the soup's weights).
          keep_points: return the adversarial points (`Evaluation.points`; `still_robust`
            on one process only).
          finished: threat name -> (robust flags [N], details) of threat models already
            evaluated with these settings and key (a resumed evaluation): not attacked again.
          on_threat: called with (threat name, robust flags, details) after each threat
            model it attacks, on every process (to save work as it is done; it may raise to
            stop the evaluation there).

        Raises:
          RuntimeError: an attack returned a point outside its threat model (a bug).
          UserError: `keep_points` with the all_points schedule or several processes.
        """
        if keep_points and (self.schedule != "still_robust" or jax.process_count() > 1):
            raise errors.UserError(
                "keep_points needs the still_robust schedule on one process (the adversarial "
                "points of several processes stay where they were computed)."
            )
        start = time.monotonic()
        indices = np.asarray(indices, np.int64)
        source = evaluation_batches.decoded_once(source)
        if self.schedule == "all_points":
            flags = run_all_points(
                self._flags_fn,
                variables,
                source,
                indices,
                key=key,
                batch_size=self.batch_size,
                mesh=self.mesh,
            )
            return Evaluation(self.names, flags, indices, seconds=time.monotonic() - start)
        size = evaluation_batches.batch_size_for(self.batch_size, self.mesh, len(indices))
        clean, loss = self._clean_pass(variables, source, indices, size)
        robust, details, points = [], {}, {}
        for i, tm in enumerate(self.settings.threats):
            if finished and str(tm) in finished and not keep_points:
                flags, details[str(tm)] = finished[str(tm)]
                robust.append(np.asarray(flags, bool))
                continue
            flags, details[str(tm)], adversarial = self._attack(
                variables, source, indices, clean, tm, jax.random.fold_in(key, i), size, label
            )
            robust.append(flags)
            if on_threat is not None:
                on_threat(str(tm), flags, details[str(tm)])
            if keep_points:
                x, _ = evaluation_batches.own_rows(source, indices)  # one process: every point
                points[str(tm)] = adversarial.get(np.arange(len(indices)), x)
        flags = np.asarray(metric_flags(clean, robust))
        return Evaluation(
            self.names, flags, indices, loss, details, time.monotonic() - start, points
        )

    def _clean_pass(self, variables, source, indices, size):
        program = _compiled_clean(self.apply_fn, self.mesh)
        clean = np.zeros(len(indices), bool)
        loss = np.zeros(len(indices), np.float32)
        for pos, n in evaluation_batches.chunks(np.arange(len(indices)), size):
            x, y = evaluation_batches.load_batch(source, indices[pos], self.mesh)
            ok, batch_loss = program(variables, x, y)
            clean[pos[:n]], loss[pos[:n]] = np.asarray(ok)[:n], np.asarray(batch_loss)[:n]
        return clean, loss

    def _attack(self, variables, source, indices, clean, tm, key, size, label):
        """(robust flags [N], details, this process's adversarial points) of one threat model,
        attack unit by attack unit."""
        t0 = time.monotonic()
        settings = self.settings.resolved(tm)
        frozen = tuple(sorted(settings.items()))
        quantum = parallel.round_up_to_devices(-(-size // SURVIVOR_QUANTA), self.mesh)
        robust = clean.copy()
        adversarial = evaluation_batches.OwnAdversarial(len(indices), size)
        after: dict[str, float] = {}
        seconds: dict[str, float] = {}
        first = True
        num_classes = _num_classes(self.apply_fn, variables, source.image_shape)
        attack_names = () if tm.trivial else settings["attacks"]
        for a, requested in enumerate(attack_names):
            name = autoattack.effective_name(requested, num_classes)
            if name is None:
                continue
            started = time.monotonic()
            program = _compiled_unit(
                self.apply_fn, self.search_apply_fn, self.mesh, tm, name, frozen
            )
            units = autoattack.n_units(name, settings, num_classes)
            for u in range(units):
                todo = np.flatnonzero(robust)
                for j, (pos, n) in enumerate(evaluation_batches.chunks(todo, size, quantum)):
                    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, a), u), j)
                    x, y = evaluation_batches.load_batch(source, indices[pos], self.mesh)
                    x_a, ok, inside = program(variables, x, y, k, np.int32(u))
                    ok, inside, pos = np.asarray(ok)[:n], np.asarray(inside)[:n], pos[:n]
                    _raise_if_outside(tm, inside)
                    # The first unit's point stands for every point it did not break (its
                    # highest-loss point); later units replace only the points they break.
                    replace = np.ones(n, bool) if first else ~ok
                    adversarial.put(pos[replace], np.asarray(x_a)[:n][replace])
                    robust[pos] &= ok
                    logging.info(
                        "%s%s %s %d/%d: %d/%d points, robust accuracy at most %.2f%%, %.0f s",
                        f"{label} " if label else "",
                        tm,
                        name,
                        u + 1,
                        units,
                        j * size + n,
                        len(todo),
                        100 * robust.mean(),
                        time.monotonic() - started,
                    )
                first = False
            after[name] = checked_accuracy(robust.sum(), len(robust), name)
            seconds[name] = round(time.monotonic() - started, 2)
        final = self._final_pass(variables, source, indices, tm, adversarial, size)
        if np.any(final != robust):
            logging.warning(
                "%s: %d point(s) broken by an attack are classified correctly when predicted "
                "again, %d robust point(s) are not; both count as broken.",
                tm,
                np.sum(final & ~robust),
                np.sum(robust & ~final),
            )
        details = {
            "after": after,
            "seconds": seconds,
            "wall_seconds": time.monotonic() - t0,
            "settings": self.settings.resolved_json(tm),
        }
        return robust & final, details, adversarial

    def _final_pass(self, variables, source, indices, tm, adversarial, size):
        """Re-predicts every returned point in the evaluation's batches; checks the ball."""
        program = _compiled_final(self.apply_fn, self.mesh, tm)
        final = np.zeros(len(indices), bool)
        for pos, n in evaluation_batches.chunks(np.arange(len(indices)), size):
            x, y = evaluation_batches.own_rows(source, indices[pos])
            x_adv = adversarial.get(pos[evaluation_batches.process_rows(len(pos))], x)
            args = parallel.host_to_global((x_adv, x, y), self.mesh)
            ok, inside = program(variables, *args)
            _raise_if_outside(tm, np.asarray(inside)[:n])
            final[pos[:n]] = np.asarray(ok)[:n]
        return final


def _raise_if_outside(tm: threat.ThreatModel, inside: np.ndarray) -> None:
    if not inside.all():
        raise RuntimeError(
            f"{(~inside).sum()} adversarial point(s) lie outside {tm} (a bug in the attacks)."
        )
