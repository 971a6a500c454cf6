"""Shift soups: splits, selection on synthetic ingredients whose answer is known, the
driver end to end on the Fashion-MNIST family, and the ImageNet / CIFAR configs on mock data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seasoning import data, errors, parallel, soup
from seasoning.data.source import ArraySource
from seasoning.shift import predict, report, select, splits

# ------------------------------------------------------------------------------------------
# Splits.


def test_splits_are_disjoint_seeded_and_spread_over_members():
    members = [("a:test", 50), ("b:test", 40), ("c:test", 60)]
    out = splits.split_shift(members, n_adaptation=10, n_unseen=0, seed=3)
    assert [len(m.adaptation) for m in out] == [4, 3, 3]
    for m, (_, size) in zip(out, members, strict=True):
        assert not set(m.adaptation) & set(m.unseen)
        assert len(m.adaptation) + len(m.unseen) == size  # n_unseen=0: every other image
        assert np.all(np.diff(m.adaptation) > 0) and m.unseen.max() < size
    again = splits.split_shift(members, 10, 0, seed=3)
    assert all(np.array_equal(a.adaptation, b.adaptation) for a, b in zip(out, again, strict=True))
    other = splits.split_shift(members, 10, 0, seed=4)
    assert not all(
        np.array_equal(a.adaptation, b.adaptation) for a, b in zip(out, other, strict=True)
    )
    # A member's split depends on its name, not on the other members.
    alone = splits.split_shift(members[1:2], 3, 0, seed=3)
    assert np.array_equal(alone[0].adaptation, out[1].adaptation)
    capped = splits.split_shift(members, 10, n_unseen=7, seed=3)
    assert [len(m.unseen) for m in capped] == [3, 2, 2]
    assert all(set(c.unseen) <= set(m.unseen) for c, m in zip(capped, out, strict=True))


def test_split_errors_name_the_problem():
    with pytest.raises(errors.UserError, match="holds 5 images"):
        splits.split_shift([("tiny:test", 5)], 5, 0, seed=0)
    with pytest.raises(errors.UserError, match="fewer than the 3 members"):
        splits.split_shift([("a", 9), ("b", 9), ("c", 9)], 2, 0, seed=0)
    with pytest.raises(errors.UserError, match="n_unseen=-1"):
        splits.split_shift([("a", 9)], 2, -1, seed=0)


# ------------------------------------------------------------------------------------------
# Selection with linear ingredients: ingredient `best` is exact on a shift by construction.

DIM, CLASSES = 48, 5


def _linear(variables, x):
    return x.reshape(x.shape[0], -1) @ variables["params"]["w"]


def _linear_setup(best: int, seed: int = 0, n: int = 400):
    """Four linear ingredients and a dataset labelled by ingredient `best`; the others point
    the other way (-W_best plus noise), so any weight moved off `best` costs accuracy."""
    rng = np.random.default_rng(seed)
    w_best = rng.normal(size=(DIM, CLASSES))
    ws = [
        w_best if i == best else -w_best + 0.5 * rng.normal(size=(DIM, CLASSES)) for i in range(4)
    ]
    images = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    labels = np.argmax(data.to_float(images).reshape(n, -1) @ w_best, axis=1).astype(np.int32)
    trees = [{"params": {"w": w.astype(np.float32)}} for w in ws]
    return trees, ArraySource(images, labels, CLASSES)


@pytest.mark.parametrize("best", [1, 3])
def test_grid_learned_and_greedy_put_their_weight_on_the_best_ingredient(best):
    trees, source = _linear_setup(best)
    mesh = parallel.make_mesh()
    stacked = jax.device_put(soup.stack(trees), parallel.replicated(mesh))
    indices = np.arange(len(source))
    grid = soup.simplex_grid(4, 0.25)
    predicted, labels = predict.predict_rows(
        _linear, None, stacked, grid, source, indices, mesh=mesh, batch_size=128
    )
    member = np.zeros(len(indices), int)
    accuracy = report.shift_accuracy(predicted, labels, member)
    assert accuracy[np.flatnonzero(grid[:, best] == 1)[0]] == 1.0
    specific, single = select.grid_choice(accuracy[None])
    assert grid[specific[0], best] == 1.0 and single == specific[0]

    out = select.learn(
        _linear,
        [None],
        stacked,
        [(source, indices)],
        mesh=mesh,
        seed=(0,),
        steps=60,
        batch_size=64,
        learning_rate=0.2,
        extrapolate=False,
    )
    assert np.argmax(out.weights) == best and out.weights[best] > 0.7
    assert out.losses[-1] < out.losses[0]
    assert np.isclose(out.weights.sum(), 1.0, atol=1e-5)

    def score(tree):
        pred, lab = predict.predict_model(
            _linear, None, tree, source, indices, mesh=mesh, batch_size=128
        )
        return float(np.mean(pred == lab))

    greedy = select.greedy_weights(trees, score)
    assert greedy[best] == 1.0


def test_learned_extrapolation_may_leave_the_simplex():
    trees, source = _linear_setup(2)
    mesh = parallel.make_mesh()
    stacked = jax.device_put(soup.stack(trees), parallel.replicated(mesh))
    out = select.learn(
        _linear,
        [None],
        stacked,
        [(source, np.arange(len(source)))],
        mesh=mesh,
        seed=(1,),
        steps=60,
        batch_size=64,
        learning_rate=0.2,
        extrapolate=True,
    )
    # From the uniform soup, the descent pushes the others' weights below zero.
    assert np.argmax(out.weights) == 2 and out.weights.min() < 0
    assert out.losses[-1] < out.losses[0]


def test_ensembles_average_logits_and_heads_map_labels():
    trees, source = _linear_setup(0, n=64)
    mesh = parallel.make_mesh()
    stacked = jax.device_put(soup.stack(trees), parallel.replicated(mesh))
    indices = np.arange(64)
    weights = np.eye(4)
    predicted, labels = predict.predict_rows(
        _linear,
        None,
        stacked,
        weights,
        source,
        indices,
        mesh=mesh,
        batch_size=32,
        ensembles=[(0, 1), (0, 1, 2, 3)],
    )
    x = data.to_float(source.get(indices)[0]).reshape(64, -1)
    logits = np.stack([x @ t["params"]["w"] for t in trees])
    assert np.array_equal(predicted[:4], np.argmax(logits, axis=-1))
    assert np.array_equal(predicted[4], np.argmax(logits[:2].mean(0), axis=-1))
    assert np.array_equal(predicted[5], np.argmax(logits.mean(0), axis=-1))
    assert np.array_equal(labels, source.labels)
    # A head that keeps classes {1, 3} only: predictions never leave them.
    masked = predict.predict_rows(
        _linear, _keep_1_3, stacked, weights, source, indices, mesh=mesh, batch_size=32
    )[0]
    assert set(np.unique(masked)) <= {1, 3}


def _keep_1_3(logits):
    mask = jnp.zeros(CLASSES, bool).at[jnp.array([1, 3])].set(True)
    return jax.nn.log_softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)


def test_shift_accuracy_is_the_mean_over_members():
    labels = np.array([0, 0, 0, 0, 1, 1])
    member = np.array([0, 0, 0, 0, 1, 1])
    predicted = np.array([[0, 0, 0, 1, 1, 0]])
    # member 0: 3/4, member 1: 1/2 -> 0.625 (pooled would be 4/6).
    assert np.isclose(report.shift_accuracy(predicted, labels, member)[0], 0.625)
