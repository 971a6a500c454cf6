"""Clean and robust accuracy over a grid of soup weights, in one of two evaluation modes.

`grid` (one compiled program per chunk of soups): the ingredients are stacked ([K, ...]
leaves) and a chunk of weight rows [C, K] is evaluated by `jax.lax.map` (`vectorize` soups at
a time under `jax.vmap`): each soup's variables are mixed inside the program
(`soup.combine_stacked`), its BatchNorm statistics optionally re-estimated, and its clean and
AutoAttack robust accuracy computed on a data batch sharded over the device mesh. The grid
[G, K] runs chunk by chunk through the same compiled program (the last chunk padded), so memory
stays bounded by C soups and a long grid can be saved, and resumed, after every chunk. Shapes
are fixed, so every attack runs on every point (`attacks.auto_attack`'s one-program form).

`per_soup`: each soup is mixed by one compiled program, then attacked as `seasoning.evaluate`
attacks a model (`attacks.run_threat_models`): each attack only on the points still robust,
with the same keys, so a one-hot soup scores exactly as its ingredient's eval.json. It does
less work (APGD-T only where APGD-CE failed) and wins where there is no idle hardware for
side-by-side soups to fill: a CPU (measured in README). `auto` picks it on CPU, `grid`
elsewhere.

Per soup and threat model a point counts as robust when AutoAttack does not break it; the
union counts points robust under every threat model.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from seasoning import attacks, errors, parallel, soup, threat

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (variables, x) -> logits (eval mode)
Prepare = Callable[[Any], Any]  # a soup's variables -> the variables to evaluate (BN policy)


MODES = ("auto", "grid", "per_soup")


def resolve_mode(mode: str) -> str:
    """'grid' or 'per_soup' for a config's `evaluation`.

    auto: per_soup on a single-process CPU job, else grid. per_soup attacks host arrays from
    one process (as `seasoning.evaluate`), so a multi-process job must use grid.

    Raises:
      ValueError: an unknown mode, or per_soup in a multi-process job.
    """
    if mode not in MODES:
        raise errors.UserError(f"Unknown soup evaluation mode {mode!r}; expected one of {MODES}.")
    multi_process = jax.process_count() > 1
    if mode == "auto":
        return "per_soup" if jax.default_backend() == "cpu" and not multi_process else "grid"
    if mode == "per_soup" and multi_process:
        raise errors.UserError(
            "evaluation='per_soup' runs in one process; use evaluation='grid' (or 'auto') for "
            f"a job of {jax.process_count()} processes."
        )
    return mode


def metric_names(threats: list[threat.ThreatModel]) -> list[str]:
    """Column names: clean, one per threat model (`linf:0.1`), and union (several threats)."""
    names = ["clean"] + [str(tm) for tm in threats]
    return names + ["union"] if len(threats) > 1 else names


def soup_point_flags(
    apply_fn: ApplyFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    threats: tuple[threat.ThreatModel, ...],
    version: str,
    attack_overrides: tuple[tuple[str, Any], ...],
) -> jax.Array:
    """bool [M, B]: per metric (see `metric_names`) whether each point counts for one model."""
    logits_fn = functools.partial(apply_fn, variables)
    flags = [attacks.correct(logits_fn, x, y)]
    for i, tm in enumerate(threats):
        _, info = attacks.auto_attack(
            logits_fn,
            x,
            y,
            tm,
            key=jax.random.fold_in(key, i),
            version=version,
            return_info=True,
            **dict(attack_overrides),
        )
        flags.append(info.robust)
    if len(threats) > 1:
        flags.append(attacks.union_robust(dict(enumerate(flags[1:]))))
    return jnp.stack(flags)


def make_chunk_program(
    apply_fn: ApplyFn,
    mesh: Mesh,
    *,
    threats: list[threat.ThreatModel],
    version: str = "fast",
    prepare: Prepare | None = None,
    vectorize: int = 1,
    **attack_overrides: Any,
) -> Callable[..., jax.Array]:
    """The compiled program: (stacked [K, ...], weights [C, K], batch, key) -> counts [C, M].

    `vectorize` soups are evaluated side by side (`jax.vmap`, one batched program per group),
    the groups one after another inside the same program. Keep 1 unless a batch of points is
    too small to fill the device: vmapping soups turns every convolution into a grouped one,
    which was slower on CPU (2x) and on an H100 (1.3-1.5x, 1000+ points; benchmarks/grid.py).

    counts[c, m] is the number of real (mask 1) points of the batch that count for metric m
    of soup c. Stacked variables and weights are replicated, the batch sharded over 'data'.
    """
    flags_fn = functools.partial(
        soup_point_flags,
        apply_fn,
        threats=tuple(threats),
        version=version,
        attack_overrides=tuple(sorted((k, v) for k, v in attack_overrides.items() if v)),
    )

    def program(stacked, weights, batch, key):
        def one_soup(w):
            variables = soup.combine_stacked(stacked, w)
            if prepare is not None:
                variables = prepare(variables)
            flags = flags_fn(variables, batch["image"], batch["label"], key)
            return jnp.sum(flags * batch["mask"][None, :], axis=1)

        # lax.map: `vectorize` soups at a time are vmapped, the groups run in sequence.
        return jax.lax.map(one_soup, weights, batch_size=vectorize)

    replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(
        program,
        in_shardings=(replicated, replicated, sharded, replicated),
        out_shardings=replicated,
    )


def evaluate_grid(
    program: Callable[..., jax.Array],
    stacked: Any,
    weights: np.ndarray,
    batches: Callable[[], Iterator[dict[str, np.ndarray]]],
    *,
    key: jax.Array,
    chunk: int,
    mesh: Mesh,
    on_chunk: Callable[[int, np.ndarray], None] | None = None,
    start_row: int = 0,
) -> np.ndarray:
    """Runs `program` over the rows of `weights` [G, K], `chunk` soups at a time.

    Args:
      program: from `make_chunk_program`.
      stacked: the stacked ingredients (`soup.stack`).
      weights: [G, K] soup weights.
      batches: a fresh iterator of host batches {"image", "label", "mask"} per call (the same
        points every time).
      key: the attacks' key; batch j uses fold_in(key, j), the same for every soup.
      chunk: soups per compiled call (the last chunk is padded by repeating its last row).
      mesh: the device mesh of the batches.
      on_chunk: called with (first row, accuracies [rows, M]) after each chunk (saving).
      start_row: rows before it are skipped (resuming).

    Returns:
      Accuracies [G - start_row, M] (fractions of the real points) of the rows evaluated.
    """
    out = []
    total = len(weights)
    t0 = time.monotonic()
    for first in range(start_row, total, chunk):
        rows = weights[first : first + chunk]
        padded = np.concatenate([rows, np.repeat(rows[-1:], chunk - len(rows), axis=0)])
        counts, seen = 0, 0
        for j, batch in enumerate(batches()):
            seen += int(batch["mask"].sum())
            counts = counts + np.asarray(
                program(
                    stacked,
                    padded,
                    parallel.host_to_global(batch, mesh),
                    jax.random.fold_in(key, j),
                ),
                np.float64,  # exact fractions, as the per-soup path reports them
            )
        acc = (counts / max(seen, 1))[: len(rows)]
        out.append(acc)
        if on_chunk is not None:
            on_chunk(first, acc)
        _log_progress(first + len(rows), total, first + len(rows) - start_row, t0)
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate_one_by_one(
    apply_fn: ApplyFn,
    ingredients: list[Any],
    weights: np.ndarray,
    batches: Callable[[], Iterator[dict[str, np.ndarray]]],
    *,
    key: jax.Array,
    mesh: Mesh,
    threats: list[threat.ThreatModel],
    version: str = "fast",
    prepare: Prepare | None = None,
    **attack_overrides: Any,
) -> np.ndarray:
    """The slow path, for tests and benchmarks: materialise each soup, evaluate it alone.

    Same points, keys and attacks as `evaluate_grid`; returns accuracies [G, M].
    """
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
    flags_fn = jax.jit(
        functools.partial(
            soup_point_flags,
            apply_fn,
            threats=tuple(threats),
            version=version,
            attack_overrides=tuple(sorted((k, v) for k, v in attack_overrides.items() if v)),
        ),
        in_shardings=(replicated, sharded, sharded, replicated),
    )
    rows = []
    for w in weights:
        variables = soup.combine(ingredients, w, allow_extrapolation=True)
        if prepare is not None:
            variables = prepare(variables)
        counts, seen = 0, 0
        for j, batch in enumerate(batches()):
            x, y = parallel.host_to_global((batch["image"], batch["label"]), mesh)
            flags = flags_fn(variables, x, y, jax.random.fold_in(key, j))
            counts = counts + np.sum(np.asarray(flags) * batch["mask"][None, :], axis=1)
            seen += int(batch["mask"].sum())
        rows.append(counts / max(seen, 1))
    return np.stack(rows)


def evaluate_per_soup(
    apply_fn: ApplyFn,
    stacked: Any,
    weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: jax.Array,
    mesh: Mesh,
    threats: list[threat.ThreatModel],
    version: str = "fast",
    prepare: Prepare | None = None,
    batch_size: int = 256,
    on_chunk: Callable[[int, np.ndarray], None] | None = None,
    start_row: int = 0,
    **attack_overrides: Any,
) -> np.ndarray:
    """Mode `per_soup`: each soup mixed in a compiled program, then attacked as evaluate does.

    Args:
      apply_fn: (variables, x) -> logits, eval mode; the same object for every soup (the
        attacks compile once).
      stacked: the stacked ingredients (`soup.stack`).
      weights: [G, K] soup weights.
      x: float32 [N, ...] evaluation points in [0, 1] (host); y: int [N] labels.
      key: the attacks' key (threat model i uses fold_in(key, i), as `seasoning.evaluate`).
      mesh: the device mesh.
      threats: the threat models.
      version: AutoAttack version.
      prepare: the BatchNorm policy applied to each mixed soup (in the mixing program).
      batch_size: points per compiled attack call.
      on_chunk: called with (row, accuracies [1, M]) after each soup (saving).
      start_row: rows before it are skipped (resuming).
      **attack_overrides: `auto_attack` settings (n_iter, n_target_classes).

    Returns:
      Accuracies [G - start_row, M] (see `metric_names`) of the rows evaluated.
    """
    replicated = parallel.replicated(mesh)
    batch_size = parallel.round_up_to_devices(min(batch_size, max(len(x), 1)), mesh)

    def mix(stacked, w):
        variables = soup.combine_stacked(stacked, w)
        return variables if prepare is None else prepare(variables)

    mix = jax.jit(mix, in_shardings=(replicated, replicated), out_shardings=replicated)
    overrides = {k: v for k, v in attack_overrides.items() if v}
    out = []
    t0 = time.monotonic()
    for row in range(start_row, len(weights)):
        variables = mix(stacked, np.asarray(weights[row], np.float32))
        if threats:
            reports = attacks.run_threat_models(
                apply_fn, variables, x, y, threats, key=key, version=version,
                batch_size=batch_size, mesh=mesh, **overrides,
            )  # fmt: skip
            robust = [reports[str(tm)].robust for tm in threats]
            clean = reports[str(threats[0])].clean
        else:
            robust = []
            clean = attacks.runner.predict(
                apply_fn, variables, x, batch_size=batch_size, mesh=mesh
            ) == np.asarray(y)
        flags = [clean, *robust] + ([np.logical_and.reduce(robust)] if len(robust) > 1 else [])
        acc = np.mean(np.stack(flags), axis=1)[None, :]
        out.append(acc)
        if on_chunk is not None:
            on_chunk(row, acc)
        _log_progress(row + 1, len(weights), row + 1 - start_row, t0)
    return np.concatenate(out) if out else np.zeros((0, 0))


def _log_progress(done: int, total: int, done_now: int, t0: float) -> None:
    """One line: soups evaluated, rate, ETA (rate over this run's soups only)."""
    rate = done_now / max(time.monotonic() - t0, 1e-9)
    logging.info(
        "soups %d/%d | %.3f soups/s | ETA %.0f s", done, total, rate, (total - done) / rate
    )
