"""Checking pytrees of arrays: the first path where two trees differ in keys, shape or dtype,
and the first leaf holding a NaN or infinity.

Fine-tuning loads a parent's weights into a model, and a soup mixes ingredients leaf by leaf;
both need the trees to match exactly, and both report a mismatch by its first path. Weights
of a diverged run must not be evaluated, mixed or fine-tuned from: the loaders name their
first non-finite leaf.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def path_str(path: tuple[Any, ...]) -> str:
    """`params/Conv_0/kernel` for a `jax.tree_util` key path."""
    return "/".join(_key_name(k) for k in path) or "<root>"


def first_difference(a: Any, b: Any) -> str | None:
    """The first path where `a` and `b` differ in structure, shape or dtype; None if they match.

    Returns:
      A description such as `params/Dense_1/kernel: shape (128, 10) vs (128, 100)` or
      `params/Conv_3: only in the first`, or None.
    """
    leaves_a = dict((path_str(p), v) for p, v in jax.tree_util.tree_leaves_with_path(a))
    leaves_b = dict((path_str(p), v) for p, v in jax.tree_util.tree_leaves_with_path(b))
    for path in sorted(set(leaves_a) | set(leaves_b)):
        if path not in leaves_b:
            return f"{path}: only in the first"
        if path not in leaves_a:
            return f"{path}: only in the second"
        shape_a, shape_b = np.shape(leaves_a[path]), np.shape(leaves_b[path])
        if shape_a != shape_b:
            return f"{path}: shape {shape_a} vs {shape_b}"
        dtype_a, dtype_b = _dtype(leaves_a[path]), _dtype(leaves_b[path])
        if dtype_a != dtype_b:
            return f"{path}: dtype {dtype_a} vs {dtype_b}"
    return None


def first_nonfinite(tree: Any) -> str | None:
    """The first path (in sorted order) of a floating-point leaf holding a NaN or infinity.

    Returns:
      A description such as `params/Dense_0/kernel: 12 of 8192 values are NaN or infinite`,
      or None when every value is finite.
    """
    leaves = dict((path_str(p), v) for p, v in jax.tree_util.tree_leaves_with_path(tree))
    for path in sorted(leaves):
        values = np.asarray(leaves[path])
        if not np.issubdtype(values.dtype, np.inexact):
            continue
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            return f"{path}: {bad} of {values.size} values are NaN or infinite"
    return None


def _dtype(leaf: Any) -> np.dtype:
    return np.dtype(getattr(leaf, "dtype", None) or np.asarray(leaf).dtype)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
