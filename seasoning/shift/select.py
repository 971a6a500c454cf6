"""Choosing soup weights on the adaptation images: grid search, learned soup, greedy soup.

- `grid` (the paper's): every soup of the simplex grid scored by clean accuracy on the
  adaptation images; the best per shift (dataset-specific soups) and the best mean over all
  shifts (the single soup). Ties go to the first row of the grid.
- `learned` (Wortsman et al. 2022's learned soup, here per shift): the weights by gradient
  descent on the cross-entropy of the soup on the adaptation images (`soup.learned`).
- `greedy` (Wortsman et al. 2022's greedy soup, `soup.greedy`): ingredients added from the
  best alone while the adaptation accuracy does not drop; the uniform soup of those chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from seasoning import data, evaluation, soup
from seasoning.shift import predict

METHODS = ("grid", "learned", "greedy")


def grid_choice(accuracy: np.ndarray) -> tuple[np.ndarray, int]:
    """(the best row per shift [S], the row of the best mean) of accuracies [S, G]."""
    accuracy = np.asarray(accuracy)
    return np.argmax(accuracy, axis=1), int(np.argmax(accuracy.mean(axis=0)))


def learn(
    apply_fn: Callable,
    heads: Sequence[Any],
    stacked: Any,
    sets: Sequence[tuple[data.Source, np.ndarray]],
    *,
    mesh: Mesh,
    seed: Sequence[int],
    steps: int,
    batch_size: int,
    learning_rate: float,
    extrapolate: bool,
    prepare: predict.Prepare = None,
) -> soup.LearnedResult:
    """The learned soup of the adaptation images `sets` ((source, adaptation indices) per
    shift, with the shifts' `heads`): the mean loss over the shifts (one shift: its own soup).

    Each step draws `batch_size` images in all, an equal share from each shift (without
    replacement within a step, from a generator seeded by `seed`), fed as global batches
    sharded over the mesh, each process loading its rows (as training does).
    """
    share = max(mesh.size, batch_size // len(sets) // mesh.size * mesh.size)
    rng = np.random.default_rng(list(seed))
    loss_fn = predict.learned_loss_fn(apply_fn, tuple(heads), prepare)

    def batch_fn(step: int):
        del step  # the generator advances
        pairs = []
        for source, indices in sets:
            pick = rng.choice(indices, size=share, replace=share > len(indices))
            pairs.append(evaluation.load_batch(source, pick, mesh))
        return stacked, tuple(pairs)

    k = len(jax.tree.leaves(stacked)[0])
    return soup.learned(
        loss_fn, batch_fn, k, steps=steps, learning_rate=learning_rate, extrapolate=extrapolate
    )


def greedy_weights(trees: Sequence[Any], score_fn: Callable[[Any], float]) -> np.ndarray:
    """[K]: the weights of the greedy soup (uniform over the ingredients it keeps)."""
    result = soup.greedy(trees, score_fn)
    weights = np.zeros(len(trees))
    weights[result.chosen] = 1.0 / len(result.chosen)
    return weights
