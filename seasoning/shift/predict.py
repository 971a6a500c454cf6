"""Predicted labels of many soups (and logit ensembles) per compiled program.

Clean accuracy needs no attack, so a shifted dataset is scored by predictions alone: each
program mixes a block of soups from the stacked ingredients (`soup.combine_stacked`, under
`lax.map`), runs them on a batch of images, and maps their logits to predicted labels in the
dataset's label space (`data.shifts.predictions` with the dataset's head: ImageNet-A's
200-class mask, Conflict Stimuli's 16 categories). Logit ensembles average the logits of some
of the block's rows before the head. The batches go through `evaluation.run_all_points`, so
they are the same global batches on any number of processes, each feeding its rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from seasoning import data, evaluation, parallel
from seasoning.data import shifts
from seasoning.soup import grid as soup_grid

Prepare = soup_grid.Prepare | None  # a soup's variables -> variables to run (BN policy)


def _no_key() -> jax.Array:
    """Predictions draw nothing; `run_all_points` passes a key anyway."""
    return jax.random.key(0)


def _with_labels(predicted: jax.Array, y: jax.Array) -> jax.Array:
    """[R + S, B]: the predictions' rows, then the labels' (S = 1, or the label-set width)."""
    labels = y[None] if y.ndim == 1 else y.T
    return jnp.concatenate([predicted, labels.astype(jnp.int32)])


@functools.lru_cache(maxsize=32)
def rows_fn(
    apply_fn: evaluation.ApplyFn,
    head: data.source.Head | None,
    prepare: Prepare = None,
    ensembles: tuple[tuple[int, ...], ...] = (),
) -> evaluation.FlagsFn:
    """A function for `evaluation.run_all_points`: model argument (stacked ingredients,
    weights [R, K]) -> int32 [R + E + S, B]: each soup's predictions, then each ensemble's
    (the mean logits of the rows it lists), then the labels (see `split_labels`)."""

    def fn(model_arg, x, y, key):
        del key
        stacked, weights = model_arg

        def logits_of(w):
            return apply_fn(soup_grid.mix_stacked(stacked, w, prepare), x).astype(jnp.float32)

        logits = jax.lax.map(logits_of, weights)  # [R, B, C]
        rows = [shifts.predictions(head, logits)]
        for members in ensembles:
            mean = jnp.mean(logits[np.asarray(members)], axis=0)
            rows.append(shifts.predictions(head, mean)[None])
        return _with_labels(jnp.concatenate(rows), y)

    return fn


@functools.lru_cache(maxsize=32)
def model_fn(
    apply_fn: evaluation.ApplyFn, head: data.source.Head | None, prepare: Prepare = None
) -> evaluation.FlagsFn:
    """As `rows_fn` for one model: model argument its variables -> int32 [1 + S, B]."""

    def fn(variables, x, y, key):
        del key
        variables = variables if prepare is None else prepare(variables)
        logits = apply_fn(variables, x).astype(jnp.float32)
        return _with_labels(shifts.predictions(head, logits)[None], y)

    return fn


def split_labels(out: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(predictions [rows, N], labels [N] or [N, S]) from a program's output."""
    labels = out[rows:]
    return out[:rows], labels[0] if len(labels) == 1 else labels.T


def predict_rows(
    apply_fn: evaluation.ApplyFn,
    head: data.source.Head | None,
    stacked: Any,
    weights: np.ndarray,
    source: data.Source,
    indices: np.ndarray,
    *,
    mesh: Mesh,
    batch_size: int,
    prepare: Prepare = None,
    ensembles: Sequence[Sequence[int]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(predictions int32 [R + E, N], labels) of the soups `weights` [R, K] and the logit
    ensembles of rows `ensembles` on the points `indices` of `source`."""
    ensembles = tuple(tuple(int(i) for i in e) for e in ensembles)
    fn = rows_fn(apply_fn, head, prepare, ensembles)
    weights = np.asarray(weights, np.float32)
    out = evaluation.run_all_points(
        fn, (stacked, weights), source, indices, key=_no_key(), batch_size=batch_size, mesh=mesh
    )
    return split_labels(out, len(weights) + len(ensembles))


def predict_model(
    apply_fn: evaluation.ApplyFn,
    head: data.source.Head | None,
    variables: Any,
    source: data.Source,
    indices: np.ndarray,
    *,
    mesh: Mesh,
    batch_size: int,
    prepare: Prepare = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(predictions int32 [N], labels) of one model on the points `indices` of `source`."""
    variables = jax.device_put(variables, parallel.replicated(mesh))
    out = evaluation.run_all_points(
        model_fn(apply_fn, head, prepare),
        variables,
        source,
        indices,
        key=_no_key(),
        batch_size=batch_size,
        mesh=mesh,
    )
    predicted, labels = split_labels(out, 1)
    return predicted[0], labels


@functools.lru_cache(maxsize=32)
def learned_loss_fn(
    apply_fn: evaluation.ApplyFn,
    heads: tuple[data.source.Head | None, ...],
    prepare: Prepare = None,
) -> Callable[[jax.Array, Any], jax.Array]:
    """The loss of `soup.learned` for shifts with `heads`: batch (stacked ingredients,
    ((images, labels), ...) one pair a shift) -> the mean over shifts of the soup's label
    cross-entropy (`shifts.label_nll`) on that shift's images."""

    def loss(weights, batch):
        stacked, sets = batch
        variables = soup_grid.mix_stacked(stacked, weights, prepare)
        total = 0.0
        for (images, labels), head in zip(sets, heads, strict=True):
            log_probs = shifts.label_log_probs(head, apply_fn(variables, images))
            total = total + jnp.mean(shifts.label_nll(log_probs, labels))
        return total / len(sets)

    return loss
