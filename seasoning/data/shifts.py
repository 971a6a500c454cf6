"""Shifted test sets of CIFAR-10 and ImageNet (TFDS), and how logits score their labels.

A model's logits score a dataset's labels through the dataset's `head` (`DatasetEntry.head`):
logits [..., C] -> log-probabilities [..., L] over the label space. None is the plain
log-softmax (labels are the model's classes). Labels are int32 [N], or int32 [N, S] for
datasets with several correct labels per image (ImageNet-ReaL), padded with -1; a point with
no label at all is not scored.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from seasoning.data.source import DatasetEntry, Head

# Registry entries of this module (merged into `data.DATASETS`).
ENTRIES: Mapping[str, DatasetEntry] = {}


def label_log_probs(head: Head | None, logits: jax.Array) -> jax.Array:
    """Log-probabilities [..., L] of the labels of a dataset with `head`, from logits."""
    logits = jnp.asarray(logits, jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1) if head is None else head(logits)


def predictions(head: Head | None, logits: jax.Array) -> jax.Array:
    """int32 [...]: the predicted label of each point, in the dataset's label space."""
    return jnp.argmax(label_log_probs(head, logits), axis=-1).astype(jnp.int32)


def _label_sets(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels[:, None] if labels.ndim == 1 else labels


def scored(labels: np.ndarray) -> np.ndarray:
    """bool [N]: the points that have at least one label (the others are not scored)."""
    return (_label_sets(labels) >= 0).any(axis=-1)


def correct(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool [..., N]: whether each prediction is one of its point's labels.

    Args:
      predicted: int [..., N] predicted labels (e.g. one row per model).
      labels: int [N] or [N, S] (-1 padded).
    """
    sets = _label_sets(labels)
    predicted = np.asarray(predicted)[..., None]
    return ((predicted == sets) & (sets >= 0)).any(axis=-1)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float [...]: the fraction of the scored points predicted correctly, per row."""
    keep = scored(labels)
    if not keep.any():
        raise ValueError("No scored point: every point lacks a label.")
    return correct(predicted, labels)[..., keep].mean(axis=-1)


def label_nll(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """float [N]: -log of the probability of a correct label (any of a point's labels);
    0 for points without a label."""
    labels = labels[:, None] if labels.ndim == 1 else labels
    valid = labels >= 0
    picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0), axis=-1)
    picked = jnp.where(valid, picked, -jnp.inf)
    nll = -jax.scipy.special.logsumexp(picked, axis=-1)
    return jnp.where(valid.any(axis=-1), nll, 0.0)
