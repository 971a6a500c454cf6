"""Clean and robust accuracy of a grid of soups, in one of two evaluation modes.

Both modes measure soups with the one evaluator (`seasoning.evaluation`):

`batched` (its `all_points` schedule, many soups per compiled program): the ingredients are
stacked ([K, ...] leaves) and a chunk of weight rows [C, K] is evaluated by `jax.lax.map`
(`vectorize` soups at a time under `jax.vmap`): each soup's variables are mixed inside the
program (`soup.combine_stacked`), its BatchNorm statistics optionally re-estimated
(`soup.bn`), and its per-point flags computed with every attack on every point
(`evaluation.point_flags`). The grid runs chunk by chunk through the same compiled program (the
last chunk padded), so memory stays bounded by C soups and a long grid can be saved, and
resumed, after every chunk.

`one_by_one` (its `still_robust` schedule): each soup is mixed by one compiled program, then
evaluated as `seasoning.evaluate` evaluates a model, each attack only on the points still
robust, with the same keys, so a one-hot soup scores exactly as its ingredient's eval.json. It
does less work (APGD-T only where APGD-CE failed) and wins where there is no idle hardware for
side-by-side soups to fill: a CPU (measured: docs/benchmarks.md, "Speed of the soup grid").
`auto` picks it on CPU, `batched` elsewhere. The modes were called `grid` and `per_soup`
before; those names are still accepted for one release (`OLD_MODE_NAMES`, CHANGELOG.md).

Both run unchanged on many processes (each feeds its rows of every batch).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from seasoning import deprecation, errors, evaluation, parallel, soup

if TYPE_CHECKING:  # the source only passes through to the evaluator
    from seasoning import data

Prepare = Callable[[Any], Any]  # a soup's variables -> the variables to evaluate (BN policy)

MODES = ("auto", "batched", "one_by_one")
# The modes' names before (config values, grid.json records), accepted for one release.
OLD_MODE_NAMES = {"grid": "batched", "per_soup": "one_by_one"}


def mix_stacked(stacked: Any, weights: Any, prepare: Prepare | None = None) -> Any:
    """The soup of `weights` from the stacked ingredients, its BatchNorm policy applied (pure:
    the step every program that evaluates soups starts with)."""
    variables = soup.combine_stacked(stacked, weights)
    return variables if prepare is None else prepare(variables)


@functools.lru_cache(maxsize=16)
def compiled_mix(prepare: Prepare | None, mesh: Mesh) -> Callable[[Any, Any], Any]:
    """`mix_stacked` as one compiled program (stacked, weights) -> variables, all replicated."""
    replicated = parallel.replicated(mesh)
    return jax.jit(
        functools.partial(_mix_positional, prepare=prepare),
        in_shardings=(replicated, replicated),
        out_shardings=replicated,
    )


def _mix_positional(stacked: Any, weights: Any, *, prepare: Prepare | None) -> Any:
    return mix_stacked(stacked, weights, prepare)


def current_mode_name(mode: str) -> str:
    """`mode` under today's name (`OLD_MODE_NAMES`); any other value as it is."""
    return OLD_MODE_NAMES.get(mode, mode)


def resolve_mode(mode: str) -> str:
    """'batched' or 'one_by_one' for a config's `evaluation`: auto is one_by_one on CPU, else
    batched; an old name (`OLD_MODE_NAMES`) is taken with a warning.

    Raises:
      UserError: an unknown mode.
    """
    if mode in OLD_MODE_NAMES:
        logging.warning(
            "Soup evaluation mode %r is now called %r; the old name is accepted until the next "
            "release (CHANGELOG.md).",
            mode,
            OLD_MODE_NAMES[mode],
        )
        mode = OLD_MODE_NAMES[mode]
    if mode not in MODES:
        raise errors.UserError(f"Unknown soup evaluation mode {mode!r}; expected one of {MODES}.")
    if mode == "auto":
        return "one_by_one" if jax.default_backend() == "cpu" else "batched"
    return mode


def upgrade_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of a grid.json written before the modes' renaming, with today's mode name
    (so that `--resume` continues it and a finished sweep is reused)."""
    if settings.get("evaluation") not in OLD_MODE_NAMES:
        return settings
    return {**settings, "evaluation": current_mode_name(settings["evaluation"])}


@functools.lru_cache(maxsize=16)
def soups_flags_fn(
    apply_fn: evaluation.ApplyFn,
    settings: evaluation.AttackSettings,
    prepare: Prepare | None = None,
    vectorize: int = 1,
) -> evaluation.FlagsFn:
    """The flags function of a chunk of soups, for `evaluation.run_all_points`.

    Its model argument is (stacked ingredients [K, ...], weights [C, K]); it returns bool
    [C, M, B]. `vectorize` soups are evaluated side by side (`jax.vmap`), the groups one after
    another (`lax.map`). Keep 1 unless a batch of points is too small to fill the device:
    vmapping soups turns every convolution into a grouped one, which was slower on a CPU and
    on a GPU (docs/benchmarks.md, "Speed of the soup grid"). Cached, so that every chunk and
    sweep with these arguments compiles once.
    """

    def flags_fn(model_arg, x, y, key):
        stacked, weights = model_arg

        def one_soup(w):
            variables = mix_stacked(stacked, w, prepare)
            logits_fn = functools.partial(apply_fn, variables)
            return evaluation.point_flags(logits_fn, x, y, key, settings=settings)

        return jax.lax.map(one_soup, weights, batch_size=vectorize)

    return flags_fn


def evaluate_batched(
    apply_fn: evaluation.ApplyFn,
    stacked: Any,
    weights: np.ndarray,
    source: data.Source,
    indices: np.ndarray,
    *,
    settings: evaluation.AttackSettings,
    key: jax.Array,
    mesh: Mesh,
    batch_size: int,
    chunk: int = 4,
    vectorize: int = 1,
    prepare: Prepare | None = None,
    on_chunk: Callable[[int, np.ndarray], None] | None = None,
    start_row: int = 0,
) -> np.ndarray:
    """Mode `batched`: the rows of `weights` [G, K], `chunk` soups per compiled call.

    Args:
      apply_fn: (variables, x) -> logits, eval mode; the same object for every call.
      stacked: the stacked ingredients (`soup.stack`), replicated.
      weights: [G, K] soup weights.
      source, indices: the points (`evaluation.check_points`).
      settings: threat models and attack settings.
      key: the attacks' key (batch j uses fold_in(key, j), the same for every soup).
      mesh: the device mesh.
      batch_size: global points per compiled call.
      chunk: soups per compiled call (the last chunk is padded by repeating its last row).
      vectorize: soups vmapped side by side (see `soups_flags_fn`).
      prepare: the BatchNorm policy applied to each mixed soup, in the program.
      on_chunk: called with (first row, per-point flags bool [rows, M, N]) after each chunk
        (saving).
      start_row: rows before it are skipped (resuming).

    Returns:
      Accuracies [G - start_row, M] (`evaluation.metric_names`) of the rows evaluated.
    """
    flags_fn = soups_flags_fn(apply_fn, settings, prepare, vectorize)
    names = evaluation.metric_names(settings.threats)
    out = []
    t0 = time.monotonic()
    for first in range(start_row, len(weights), chunk):
        rows = np.asarray(weights[first : first + chunk], np.float32)
        padded = np.concatenate([rows, np.repeat(rows[-1:], chunk - len(rows), axis=0)])
        flags = evaluation.run_all_points(
            flags_fn,
            (stacked, padded),
            source,
            indices,
            key=key,
            batch_size=batch_size,
            mesh=mesh,
        )[: len(rows)]
        out.append(evaluation.flag_accuracies(flags))
        if on_chunk is not None:
            on_chunk(first, flags)
        _log_progress(first + len(rows), len(weights), first + len(rows) - start_row, t0)
    return np.concatenate(out) if out else np.zeros((0, len(names)))


def evaluate_one_by_one(
    apply_fn: evaluation.ApplyFn,
    stacked: Any,
    weights: np.ndarray,
    source: data.Source,
    indices: np.ndarray,
    *,
    settings: evaluation.AttackSettings,
    key: jax.Array,
    mesh: Mesh,
    batch_size: int,
    prepare: Prepare | None = None,
    on_chunk: Callable[[int, np.ndarray], None] | None = None,
    start_row: int = 0,
) -> np.ndarray:
    """Mode `one_by_one`: each soup mixed in a compiled program, then evaluated as a model.

    Arguments as `evaluate_batched`; `key` is used as `seasoning.evaluate` uses its seed's key,
    so a one-hot soup scores exactly as its ingredient. `on_chunk` is called after each soup.

    Returns:
      Accuracies [G - start_row, M] (`evaluation.metric_names`) of the rows evaluated.
    """
    mixed = compiled_mix(prepare, mesh)
    evaluator = evaluation.Evaluator(
        apply_fn, settings, schedule="still_robust", batch_size=batch_size, mesh=mesh
    )
    out = []
    t0 = time.monotonic()
    for row in range(start_row, len(weights)):
        w = np.asarray(weights[row], np.float32)
        variables = mixed(stacked, w)
        result = evaluator.run(
            variables, source, indices, key=key, label=f"soup {row + 1}/{len(weights)}"
        )
        out.append(evaluation.flag_accuracies(result.flags)[None, :])
        if on_chunk is not None:
            on_chunk(row, result.flags[None])
        _log_progress(row + 1, len(weights), row + 1 - start_row, t0)
    return np.concatenate(out) if out else np.zeros((0, len(evaluator.names)))


def stacked_on_mesh(stacked: Any, mesh: Mesh) -> Any:
    """The stacked ingredients replicated on every device (every process passes the same)."""
    return jax.device_put(stacked, parallel.replicated(mesh))


def _log_progress(done: int, total: int, done_now: int, t0: float) -> None:
    """One line: soups evaluated, rate, ETA (rate over this run's soups only)."""
    rate = done_now / max(time.monotonic() - t0, 1e-9)
    logging.info(
        "soups %d/%d | %.3f soups/s | ETA %.0f s", done, total, rate, (total - done) / rate
    )


# Old name, removed in the next release (CHANGELOG.md).
mix = deprecation.renamed(mix_stacked, "seasoning.soup.grid.mix")
evaluate_grid = deprecation.renamed(evaluate_batched, "seasoning.soup.grid.evaluate_grid")
evaluate_per_soup = deprecation.renamed(
    evaluate_one_by_one, "seasoning.soup.grid.evaluate_per_soup"
)
