"""Soup arithmetic: stacking ingredients, weighted sums, weight checks, grids of weights.

The semantics (convex weights by default, leaves combined in float32 and cast back, integer
leaves taken whole from the heaviest ingredient) are `seasoning.soup`'s module doc; use the
names from there (`soup.combine`, `soup.mix`, ...).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import errors
from seasoning.trees import first_difference

PyTree = Any

# Tolerance on the sum of convex (and affine) weights.
SUM_ATOL = 1e-6


# ----------------------------------------------------------------------------------------
# Stacking and weighted sums.


def check_ingredients(trees: Sequence[PyTree]) -> None:
    """Raises ValueError unless `trees` is a non-empty list of trees that match exactly."""
    if not isinstance(trees, list | tuple):
        raise TypeError(
            f"Soup ingredients must be a list of variable trees, got {type(trees).__name__}; "
            "for a tree already stacked along a leading ingredient axis use combine_stacked."
        )
    if not trees:
        raise errors.UserError("A soup needs at least one ingredient; got an empty list.")
    structure = jax.tree.structure(trees[0])
    for i, tree in enumerate(trees[1:], start=1):
        diff = first_difference(trees[0], tree)
        if diff is not None:
            raise errors.UserError(
                f"Soup ingredient {i} does not match ingredient 0 at {diff}; ingredients must "
                "share one architecture (structure, shapes and dtypes)."
            )
        if jax.tree.structure(tree) != structure:
            raise errors.UserError(
                f"Soup ingredient {i} has the same leaves as ingredient 0 but other containers: "
                f"{jax.tree.structure(tree)} vs {structure}."
            )


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks K ingredients into one tree whose leaves have a leading axis of size K.

    Args:
      trees: K >= 1 variable trees with the same structure, leaf shapes and leaf dtypes.

    Returns:
      The tree of `jnp.stack`ed leaves, [K, *leaf.shape], each in its leaf's dtype.

    Raises:
      ValueError: for an empty list, or ingredients that differ; the message names the first
        differing path, e.g. `params/Dense_0/kernel: shape (3, 4) vs (3, 5)`.
    """
    check_ingredients(trees)
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _combine_leaves(leaves: Sequence[jax.Array], weights: jax.Array) -> jax.Array:
    """sum_i weights[i] * leaves[i], in float32 or wider, cast back to the leaves' dtype.

    The terms are added in ingredient order, so the result does not depend on how the leaves
    were passed (stacked or not). Integer and boolean leaves come whole from the ingredient
    with the largest weight.
    """
    dtype = jnp.result_type(leaves[0])
    if not jnp.issubdtype(dtype, jnp.inexact):
        return jnp.stack(leaves)[jnp.argmax(weights)]
    compute = jnp.promote_types(dtype, jnp.float32)
    w = weights.astype(compute)
    total = w[0] * jnp.asarray(leaves[0], compute)
    for i in range(1, len(leaves)):
        total = total + w[i] * jnp.asarray(leaves[i], compute)
    return total.astype(dtype)


@jax.jit
def _weighted_sum(trees: list[PyTree], weights: jax.Array) -> PyTree:
    return jax.tree.map(lambda *leaves: _combine_leaves(leaves, weights), *trees)


@jax.jit
def _weighted_sum_stacked(stacked: PyTree, weights: jax.Array) -> PyTree:
    k = weights.shape[0]
    return jax.tree.map(lambda s: _combine_leaves([s[i] for i in range(k)], weights), stacked)


def _as_weight_array(weights: Any) -> jax.Array:
    w = jnp.asarray(weights)
    return w if jnp.issubdtype(w.dtype, jnp.floating) else w.astype(jnp.float32)


def _concrete(value: Any) -> np.ndarray | None:
    """`value` as a float64 numpy array, or None for a tracer (under jit or vmap)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_weights(
    weights: Any,
    num_ingredients: int,
    *,
    convex: bool = True,
    allow_extrapolation: bool = False,
) -> np.ndarray:
    """Checks one weight vector [K] or a grid of them [G, K]; returns them as float64.

    `combine` and `combine_stacked` call this on concrete weights; under `jax.vmap` or
    `jax.jit` the weights are tracers and only their shape is checked there, so check a
    grid with this function before vmapping over it.

    Args:
      weights: [K] or [G, K] numbers.
      num_ingredients: K.
      convex: require every row to sum to 1 (within 1e-6) and, unless
        `allow_extrapolation`, to be non-negative. False allows any finite weights.
      allow_extrapolation: allow negative weights in a convex (then affine) soup.

    Raises:
      ValueError: for a wrong shape (naming both lengths), NaN or infinite weights, negative
        weights, or a sum other than 1 (naming the sum).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != num_ingredients:
        got = f"{w.shape[-1]} weights" if w.ndim in (1, 2) else f"weights of shape {w.shape}"
        raise errors.UserError(
            f"Got {got} for {num_ingredients} soup ingredients; expected shape "
            f"({num_ingredients},) or (G, {num_ingredients})."
        )
    rows = w.reshape(-1, num_ingredients)

    def where(i: int) -> str:
        return f" (grid row {i})" if w.ndim == 2 else ""

    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise errors.UserError(f"Soup weights {rows[i].tolist()}{where(i)} must be finite.")
    if not convex:
        return w
    if not allow_extrapolation:
        bad = (rows < 0).any(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise errors.UserError(
                f"Soup weights {rows[i].tolist()}{where(i)} must be >= 0 for a convex soup; "
                "pass allow_extrapolation=True for negative weights."
            )
    sums = rows.sum(axis=1)
    bad = np.abs(sums - 1.0) > SUM_ATOL
    if bad.any():
        i = int(np.argmax(bad))
        raise errors.UserError(
            f"Soup weights {rows[i].tolist()}{where(i)} sum to {float(sums[i]):.10g}, not 1 "
            f"(within {SUM_ATOL}); pass convex=False for an unnormalised combination."
        )
    return w


def combine(
    trees: Sequence[PyTree],
    weights: Any,
    *,
    convex: bool = True,
    allow_extrapolation: bool = False,
) -> PyTree:
    """The soup sum_i weights[i] * trees[i], leaf by leaf.

    Args:
      trees: K ingredients: variable trees with identical structure, shapes and dtypes.
      weights: K numbers (list, numpy or jax array).
      convex: require the weights to sum to 1 and (unless `allow_extrapolation`) to be
        non-negative; False allows any finite weights.
      allow_extrapolation: allow negative weights.

    Returns:
      A tree like `trees[0]`: floating leaves are summed in float32 (float64 for float64
      leaves) and cast back to their dtype; integer and boolean leaves come from the
      ingredient with the largest weight (the first one on ties).

    Raises:
      ValueError: for mismatched ingredients (naming the first differing path) or bad
        weights (see `check_weights`).
    """
    check_ingredients(trees)
    _check_weights_if_concrete(weights, len(trees), convex, allow_extrapolation)
    return _weighted_sum(list(trees), _as_weight_array(weights))


def combine_stacked(
    stacked: PyTree,
    weights: Any,
    *,
    convex: bool = True,
    allow_extrapolation: bool = False,
) -> PyTree:
    """`combine` for ingredients already `stack`ed along a leading axis K.

    Pure and traceable: `jax.vmap(combine_stacked, in_axes=(None, 0))(stacked, grid)` gives
    the G soups of a [G, K] grid (leaves [G, ...]) in one program. Concrete weights are
    checked as in `combine`; traced ones (under jit or vmap) only by shape, so check a grid
    with `check_weights` first.

    Args:
      stacked: a tree whose leaves all have the leading axis K (from `stack`).
      weights: [K] numbers.
      convex: as in `combine`.
      allow_extrapolation: as in `combine`.

    Returns:
      The soup: a tree like one ingredient (leaves without the leading axis).

    Raises:
      ValueError: for leaves with different leading axes, or bad weights.
    """
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(stacked)}
    if not sizes:
        raise errors.UserError("The stacked soup tree has no leaves, hence no ingredient axis.")
    if len(sizes) != 1 or None in sizes:
        raise errors.UserError(
            f"Every leaf of a stacked soup tree needs the same leading ingredient axis; got "
            f"leading sizes {sorted(sizes, key=str)}."
        )
    (k,) = sizes
    _check_weights_if_concrete(weights, k, convex, allow_extrapolation)
    return _weighted_sum_stacked(stacked, _as_weight_array(weights))


def _check_weights_if_concrete(
    weights: Any, k: int, convex: bool, allow_extrapolation: bool
) -> None:
    concrete = _concrete(weights)
    if concrete is not None:
        check_weights(concrete, k, convex=convex, allow_extrapolation=allow_extrapolation)
        if concrete.ndim != 1:
            raise errors.UserError(
                f"Soup weights must be one vector of {k}; got shape {concrete.shape} (vmap "
                "combine_stacked over the rows of a grid)."
            )
    elif jnp.shape(weights) != (k,):
        raise errors.UserError(
            f"Got soup weights of shape {jnp.shape(weights)} for {k} ingredients; expected ({k},)."
        )


def mix(a: PyTree, b: PyTree, alpha: Any, *, allow_extrapolation: bool = False) -> PyTree:
    """The two-ingredient soup (1 - alpha) * a + alpha * b.

    Args:
      a: the ingredient at alpha = 0.
      b: the ingredient at alpha = 1.
      alpha: a number in [0, 1] (or a traced scalar, which is not checked).
      allow_extrapolation: allow alpha outside [0, 1] (a point on the line beyond a or b).

    Raises:
      ValueError: for mismatched ingredients, a non-finite alpha, or alpha outside [0, 1]
        without `allow_extrapolation`.
    """
    check_ingredients([a, b])
    concrete = _concrete(alpha)
    if concrete is not None:
        if concrete.shape != ():
            raise errors.UserError(f"mix needs a scalar alpha; got shape {concrete.shape}.")
        value = float(concrete)
        if not math.isfinite(value):
            raise errors.UserError(f"mix alpha={value!r} must be finite.")
        if not allow_extrapolation and not 0.0 <= value <= 1.0:
            raise errors.UserError(
                f"mix alpha={value!r} is outside [0, 1]; pass allow_extrapolation=True to "
                "extrapolate beyond an ingredient."
            )
        weights = jnp.asarray([1.0 - value, value], jnp.float32)
    else:
        alpha = _as_weight_array(alpha)
        weights = jnp.stack([1 - alpha, alpha])
    return _weighted_sum([a, b], weights)


def uniform(trees: Sequence[PyTree]) -> PyTree:
    """The uniform soup: every ingredient with weight 1/K."""
    check_ingredients(trees)
    return combine(trees, np.full(len(trees), 1.0 / len(trees)))


# ----------------------------------------------------------------------------------------
# Weight grids.

# The grids a soup config may ask for: `simplex_grid` (any number of ingredients),
# `line_grid` (two ingredients, alpha from low to high, extrapolating outside [0, 1]) and
# "list" (the soups a config names one by one, e.g. the ones a sweep selected).
GRID_KINDS = ("simplex", "line", "list")


def _divisions(step: Any) -> int:
    """The integer m = 1 / step, or ValueError when `step` does not divide 1."""
    try:
        value = float(step)
    except (TypeError, ValueError):
        raise errors.UserError(f"Grid step={step!r} must be a number in (0, 1].") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise errors.UserError(f"Grid step={step!r} must be in (0, 1].")
    m = round(1.0 / value)
    if abs(m * value - 1.0) > 1e-9:
        raise errors.UserError(
            f"Grid step={step!r} does not divide 1 (1/step = {1.0 / value:.6g}); use e.g. "
            "0.5, 0.25, 0.2, 0.1, 0.05 or 1/3."
        )
    return m


def simplex_grid(n: int, step: float, *, max_rows: int = 1_000_000) -> np.ndarray:
    """All weight vectors of n ingredients with entries in {0, step, 2 step, ..., 1} summing to 1.

    Built exactly: each entry is the float64 nearest to an integer count over m = 1/step, so
    rows sum to 1 within a few ulps. There are C(m + n - 1, n - 1) rows: 11 for (2, 0.1),
    66 for (3, 0.1), 286 for (4, 0.1).

    Order: descending lexicographic in the entries, so the first row is (1, 0, ..., 0) and the
    last (0, ..., 0, 1); for n = 2 the rows run from (1, 0) through (0.9, 0.1) to (0, 1), the
    order of `line_grid`.

    Args:
      n: number of ingredients, >= 1.
      step: grid spacing; 1/step must be an integer (0.1, 0.25, 1/3, ...).
      max_rows: refuse grids larger than this (C(m + n - 1, n - 1) grows fast).

    Returns:
      float64 array [G, n].

    Raises:
      ValueError: for n < 1, a step that is not 1/m for an integer m, or too many rows.
    """
    try:
        n = operator.index(n)
    except TypeError:
        raise errors.UserError(f"simplex_grid n={n!r} must be an integer >= 1.") from None
    if n < 1:
        raise errors.UserError(f"simplex_grid n={n} must be >= 1.")
    m = _divisions(step)
    size = math.comb(m + n - 1, n - 1)
    if size > max_rows:
        raise errors.UserError(
            f"simplex_grid(n={n}, step={step}) has {size} rows, more than max_rows={max_rows}; "
            "use a coarser step."
        )
    # Stars and bars: n - 1 bar positions among m + n - 1 slots; reversed lexicographic
    # order of the bars is descending lexicographic order of the counts between them.
    bars = np.array(list(itertools.combinations(range(m + n - 1), n - 1)), np.int64)
    bars = bars.reshape(size, n - 1)[::-1]
    edges = np.concatenate([np.full((size, 1), -1), bars, np.full((size, 1), m + n - 1)], axis=1)
    counts = np.diff(edges, axis=1) - 1
    return counts / m


def line_grid(step: float, *, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Two-ingredient weights (1 - alpha, alpha) for alpha = low, low + step, ..., high.

    With the defaults this equals `simplex_grid(2, step)`; `low < 0` or `high > 1` extrapolate
    (e.g. alpha in [-0.5, 1.5]), which `combine` accepts with `allow_extrapolation=True`.

    Args:
      step: spacing of alpha; (high - low) / step must be an integer.
      low: first alpha.
      high: last alpha (> low).

    Returns:
      float64 array [G, 2] with G = (high - low) / step + 1, alpha ascending; each entry is
      computed from the integer index in one rounding, so the endpoints are exact.

    Raises:
      ValueError: for non-finite bounds, low >= high, step <= 0, or a step that does not
        divide high - low.
    """
    low, high, step = float(low), float(high), float(step)
    if not all(math.isfinite(v) for v in (low, high, step)) or not low < high or step <= 0:
        raise errors.UserError(
            f"line_grid needs finite low < high and step > 0; got low={low}, high={high}, "
            f"step={step}."
        )
    span = high - low
    num = round(span / step)
    if num < 1 or abs(num * step - span) > 1e-9 * max(1.0, span):
        raise errors.UserError(
            f"line_grid step={step} does not divide high - low = {span} into equal parts."
        )
    k = np.arange(num + 1, dtype=np.float64)
    alpha = (low * (num - k) + high * k) / num
    first = ((1.0 - low) * (num - k) + (1.0 - high) * k) / num
    return np.stack([first, alpha], axis=1)
