"""BatchNorm policies of a soup: keep the mixed running statistics, or re-estimate them.

A soup's 'batch_stats' are, by default, the weighted sum of its ingredients' running
statistics ("interpolate"). Averaging weights shrinks the variance of hidden activations
(Jordan et al. 2022, REPAIR), so those statistics no longer match what the soup's layers see;
"recalibrate" replaces every BatchNorm layer's running `mean` and `var` by the exact mean and
biased variance of that layer's inputs over training images, whatever the layer's momentum.

    new = bn.recalibrate_batch_stats(model, variables, images, batch_size=256)  # on the host
    new = jax.jit(bn.recalibrate_in_program, static_argnums=0)(model, variables, images)
    prepare = bn.make_prepare("recalibrate", model, images)   # variables -> variables
    many = jax.vmap(lambda w: prepare(soup.combine_stacked(stacked, w)))(grid)

Both record each `flax.linen.BatchNorm` call's input moments (count, mean, sum of squared
deviations) with a method interceptor during a train-mode forward pass; the host version
merges them over batches in float64, the in-program one is the single-batch case.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import FrozenDict

from seasoning import errors

__all__ = [
    "BN_POLICIES",
    "make_prepare",
    "recalibrate_batch_stats",
    "recalibrate_in_program",
]

PyTree = Any
Moments = tuple[Any, Any, Any]  # (count, mean, sum of squared deviations)
Layer = tuple[str, ...]  # a BatchNorm module's path in 'batch_stats'

# How a soup gets its BatchNorm running statistics: mixed with the weights like every other
# leaf, or re-estimated on training images with `recalibrate_batch_stats`.
BN_POLICIES = ("interpolate", "recalibrate")

# Collection in which the recalibration pass records each BatchNorm layer's input moments.
_MOMENTS = "bn_input_moments"


def _input_moments(x: jax.Array, axis: int | Sequence[int]) -> tuple[jax.Array, ...]:
    """(count, mean, sum of squared deviations) of `x` over all but the feature axes."""
    x = jnp.asarray(x, jnp.float32)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    features = {a % x.ndim for a in axes}
    reduce = tuple(i for i in range(x.ndim) if i not in features)
    count = math.prod(x.shape[i] for i in reduce)
    mean = jnp.mean(x, axis=reduce)
    m2 = jnp.sum(jnp.square(x - jnp.expand_dims(mean, reduce)), axis=reduce)
    return jnp.asarray(count, jnp.int32), mean, m2


def _record_bn_inputs(next_fun, args, kwargs, context):
    """Method interceptor: sows the input moments of every `nn.BatchNorm` call."""
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
        if kwargs.get("mask") is not None:
            raise errors.UserError("BatchNorm recalibration does not support masked BatchNorm.")
        x = args[0] if args else kwargs["x"]
        module.sow(_MOMENTS, "moments", _input_moments(x, module.axis))
    return next_fun(*args, **kwargs)


def _pass_moments(model: Any, variables: PyTree, images: jax.Array) -> PyTree:
    """One train-mode forward pass; the input moments of each BatchNorm call, by module path.

    Pure and traceable (the in-program recalibration calls it under the caller's transforms).
    """
    apply_fn = model.apply if isinstance(model, nn.Module) else model
    with nn.intercept_methods(_record_bn_inputs):
        _, state = apply_fn(variables, images, train=True, mutable=["batch_stats", _MOMENTS])
    return state.get(_MOMENTS, {})


# The host version's compiled pass, cached per module (equal modules share it) or function.
_batch_moments = jax.jit(_pass_moments, static_argnums=0)


def _layer_calls(moments: PyTree) -> Iterator[tuple[Layer, Moments]]:
    """(layer path, (count, mean, M2)) for each recorded BatchNorm call, in call order."""
    for path, calls in traverse_util.flatten_dict(moments).items():
        for call in calls:
            yield path[:-1], call  # drop the sown name


def _merge(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise update of (count, mean, M2), in the inputs' precision.

    The host version merges float64 numpy values; the in-program one float32 jax values
    (the calls of a layer that runs more than once in the pass).
    """
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


def _accumulate(totals: dict[Layer, Moments], layer: Layer, moments: Moments) -> None:
    """Merges one call's moments into `totals[layer]`."""
    totals[layer] = _merge(totals[layer], moments) if layer in totals else moments


def _batch_stats(variables: PyTree) -> Mapping[str, Any] | None:
    """The 'batch_stats' collection of `variables`, or None when there is none."""
    return variables.get("batch_stats") if hasattr(variables, "get") else None


def _with_statistics(
    variables: PyTree, batch_stats: Mapping[str, Any], totals: Mapping[Layer, Moments]
) -> PyTree:
    """`variables` with each recorded layer's 'mean' and 'var' set from its merged moments.

    Raises:
      ValueError: for a recorded layer without a 'mean' or 'var' entry, or a layer in
        'batch_stats' that did not run (which would keep stale statistics).
    """
    flat = traverse_util.flatten_dict(batch_stats)
    for layer, (count, mean, m2) in totals.items():
        for name, value in (("mean", mean), ("var", m2 / count)):
            key = (*layer, name)
            if key not in flat:
                raise errors.UserError(
                    f"BatchNorm layer {'/'.join(layer)} has no batch_stats entry {name!r}."
                )
            flat[key] = jnp.asarray(value, jnp.result_type(flat[key]))
    stale = sorted(
        "/".join(key[:-1])
        for key in flat
        if key[-1] in ("mean", "var") and tuple(key[:-1]) not in totals
    )
    if stale:
        raise errors.UserError(
            f"BatchNorm layer(s) {', '.join(dict.fromkeys(stale))} did not run on the "
            "recalibration images, so their statistics cannot be re-estimated."
        )
    new_stats = traverse_util.unflatten_dict(flat)
    if isinstance(variables, FrozenDict):
        return variables.copy({"batch_stats": FrozenDict(new_stats)})
    return {**variables, "batch_stats": new_stats}


def recalibrate_batch_stats(
    model: nn.Module | Callable[..., Any],
    variables: PyTree,
    images: Any,
    *,
    batch_size: int = 256,
) -> PyTree:
    """Re-estimates every BatchNorm layer's running mean and variance on `images`.

    Why: averaging the weights of networks shrinks the variance of their hidden activations
    ("variance collapse", Jordan et al. 2022, REPAIR), so a soup's interpolated running
    statistics no longer match what its layers see, and its eval-mode accuracy drops.
    Recomputing the statistics on a few thousand training images fixes that.

    How: the model runs in train mode (`train=True`, BatchNorm normalising with batch
    statistics, as in training) on consecutive batches of `images`, under `jax.jit`; a method
    interceptor records each `flax.linen.BatchNorm` layer's input count, mean and sum of
    squared deviations per batch, and these are merged exactly in float64 (Chan et al.'s
    parallel algorithm). The new `mean` and `var` are the population mean and (biased)
    variance of each layer's inputs over all N images, not Flax's momentum average and not
    seeded by the soup's old statistics. The first BatchNorm layer's inputs do not depend on
    the batching, so its statistics are exact and independent of `batch_size`; a deeper
    layer's inputs depend on its batch through the batch normalisation of earlier layers
    (as in training), so its statistics vary slightly with `batch_size` and the image
    order, and with `batch_size >= N` they are those of one full-batch pass. Deterministic:
    the same inputs give the same result.

    Args:
      model: a Flax module, or an apply function with the signature of `module.apply`
        (called as `apply_fn(variables, x, train=True, mutable=[...])`). The compiled step
        is cached per module (equal modules share it) or per function object.
      variables: the soup's variables, e.g. `{'params', 'batch_stats'}`. Without (or with
        empty) 'batch_stats', e.g. a ViT's, they are returned unchanged.
      images: [N, ...] model inputs (e.g. NHWC float32 in [0, 1]), numpy or jax.
      batch_size: images per forward pass (the last batch may be smaller).

    Returns:
      `variables` with every BatchNorm layer's 'mean' and 'var' replaced (same dtypes);
      other collections and other 'batch_stats' entries are unchanged.

    Raises:
      ValueError: for no images, a bad batch size, or a BatchNorm layer in 'batch_stats'
        that the forward pass never ran.
    """
    batch_stats = _batch_stats(variables)
    if not batch_stats:
        return variables
    batch_size = errors.check_count("batch_size", batch_size, 1)
    num = len(images)
    if num == 0:
        raise errors.UserError("recalibrate_batch_stats needs at least one image; got none.")

    per_batch = [
        _batch_moments(model, variables, images[start : start + batch_size])
        for start in range(0, num, batch_size)
    ]
    totals: dict[Layer, Moments] = {}
    for moments in per_batch:
        for layer, (count, mean, m2) in _layer_calls(moments):
            call = (float(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64))
            _accumulate(totals, layer, call)
    return _with_statistics(variables, batch_stats, totals)


def recalibrate_in_program(
    model: nn.Module | Callable[..., Any], variables: PyTree, images: jax.Array
) -> PyTree:
    """Sets every BatchNorm layer's running mean and variance from one pass over `images`.

    The single-batch case of `recalibrate_batch_stats`, pure and traceable, so it runs inside
    a compiled program: under `jax.jit` (with `model` static or closed over), `jax.vmap` over
    soups (the variables; the images shared) and `lax.map`. One train-mode forward pass over
    `images` records each `flax.linen.BatchNorm` layer's input moments; each layer's new
    `mean` and `var` are the exact mean and biased variance of its inputs over all the images
    (reduced in float32, cast to the leaf dtypes). They do not depend on the layer's
    momentum or on the old statistics: nothing is read from the running averages that the
    pass updates.

    Args:
      model: a Flax module, or an apply function with the signature of `module.apply`
        (called as `apply_fn(variables, x, train=True, mutable=[...])`).
      variables: the soup's variables, e.g. `{'params', 'batch_stats'}`. Without (or with
        empty) 'batch_stats', e.g. a ViT's, they are returned unchanged.
      images: [N, ...] model inputs, N >= 1, one batch (e.g. NHWC float32 in [0, 1]).

    Returns:
      `variables` with every BatchNorm layer's 'mean' and 'var' replaced (same dtypes);
      other collections and other 'batch_stats' entries are unchanged.

    Raises:
      ValueError: for no images, or a BatchNorm layer in 'batch_stats' that the forward pass
        never ran (raised while tracing).
    """
    batch_stats = _batch_stats(variables)
    if not batch_stats:
        return variables
    if not jnp.shape(images) or jnp.shape(images)[0] == 0:
        raise errors.UserError(
            f"recalibrate_in_program needs at least one image; got shape {jnp.shape(images)}."
        )
    totals: dict[Layer, Moments] = {}
    for layer, (count, mean, m2) in _layer_calls(_pass_moments(model, variables, images)):
        _accumulate(totals, layer, (jnp.asarray(count, jnp.float32), mean, m2))
    return _with_statistics(variables, batch_stats, totals)


def make_prepare(
    policy: str, model: nn.Module | Callable[..., Any], calibration_images: Any = None
) -> Callable[[PyTree], PyTree] | None:
    """The per-soup step of a BatchNorm policy, to run inside the program that mixes soups.

    Args:
      policy: one of `BN_POLICIES`.
      model: a Flax module or an apply function, as in `recalibrate_in_program`.
      calibration_images: [N, ...] training images for "recalibrate" (put on the device
        once, here); unused for "interpolate".

    Returns:
      None for "interpolate" (the mixed statistics stay); for "recalibrate", a pure
      `variables -> variables` applying `recalibrate_in_program` with those images.

    Raises:
      ValueError: for an unknown policy (naming it and `BN_POLICIES`), or "recalibrate"
        without images.
    """
    if policy not in BN_POLICIES:
        raise errors.UserError(
            f"Unknown BatchNorm policy {policy!r}; expected one of {', '.join(BN_POLICIES)}."
        )
    if policy == "interpolate":
        return None
    if calibration_images is None or len(calibration_images) == 0:
        raise errors.UserError(
            "BatchNorm policy 'recalibrate' needs at least one calibration image; got none."
        )
    images = jnp.asarray(calibration_images)

    def prepare(variables: PyTree) -> PyTree:
        return recalibrate_in_program(model, variables, images)

    return prepare


def prepare_for_run(policy: str, run: Any, calibration_examples: int) -> Callable | None:
    """Deprecated: `runs.soup_prepare(run, policy, calibration_examples)`, which reads the
    calibration images, so that this module takes arrays only (CHANGELOG.md)."""
    warnings.warn(
        "seasoning.soup.bn.prepare_for_run is deprecated and will be removed in the next "
        "release: use seasoning.runs.soup_prepare(run, policy, calibration_examples) "
        "(CHANGELOG.md).",
        DeprecationWarning,
        stacklevel=2,
    )
    from seasoning import runs  # late: runs imports this module's package

    return runs.soup_prepare(run, policy, calibration_examples)
