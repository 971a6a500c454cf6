"""Choosing soup weights: Wortsman et al.'s greedy soup and the learned soup (gradient
descent on the weights). Use the names from `seasoning.soup` (`soup.greedy`, `soup.learned`).
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from seasoning import errors
from seasoning.soup.mixing import PyTree, check_ingredients, combine_stacked, stack

# ----------------------------------------------------------------------------------------
# Greedy soup.


class GreedyResult(NamedTuple):
    """What `greedy` returns; unpacks as `soup, chosen, scores = greedy(...)`.

    Attributes:
      soup: the uniform soup of the chosen ingredients.
      chosen: indices of the ingredients in the soup, in the order they were added.
      scores: `{index: score}` in the order the ingredients were tried: the score of the
        candidate soup made by adding that ingredient (the first one alone). The final
        soup's score is `scores[chosen[-1]]`.
    """

    soup: PyTree
    chosen: list[int]
    scores: dict[int, float]


def greedy(
    trees: Sequence[PyTree],
    score_fn: Callable[[PyTree], float],
    *,
    order: Sequence[int] | None = None,
) -> GreedyResult:
    """Greedy soup (Wortsman et al. 2022, Algorithm 1).

    Ingredients are tried from the best to the worst by their own held-out score; starting
    from the best alone, each is added to the running uniform average when the candidate
    soup scores at least as well (>=) as the current one.

    Args:
      trees: K ingredients.
      score_fn: tree -> float on held-out data; higher is better. NaN counts as the worst.
      order: the ingredient indices to try, in order (distinct, possibly a subset). None:
        score every ingredient alone and sort descending (ties keep index order).

    Returns:
      `GreedyResult(soup, chosen, scores)`.

    Raises:
      ValueError: for mismatched ingredients, or an `order` with repeated or out-of-range
        indices.
    """
    check_ingredients(trees)
    k = len(trees)

    def score(tree: PyTree) -> float:
        value = float(score_fn(tree))
        return -math.inf if math.isnan(value) else value

    own: dict[int, float] = {}
    if order is None:
        own = {i: score(tree) for i, tree in enumerate(trees)}
        order = sorted(range(k), key=lambda i: -own[i])
    else:
        order = [operator.index(i) for i in order]
        if not order or len(set(order)) != len(order) or not all(0 <= i < k for i in order):
            raise errors.UserError(
                f"greedy order={order} must list distinct ingredient indices in [0, {k})."
            )
    stacked = stack(trees)

    def soup_of(indices: list[int]) -> PyTree:
        weights = np.zeros(k)
        weights[indices] = 1.0 / len(indices)
        return combine_stacked(stacked, weights)

    first = order[0]
    chosen = [first]
    soup = soup_of(chosen)
    best = own[first] if first in own else score(soup)
    scores = {first: best}
    for i in order[1:]:
        candidate = soup_of(chosen + [i])
        scores[i] = score(candidate)
        if scores[i] >= best:
            chosen.append(i)
            soup, best = candidate, scores[i]
    return GreedyResult(soup, chosen, scores)


# ----------------------------------------------------------------------------------------
# Learned soup.


class LearnedResult(NamedTuple):
    """What `learned` returns.

    Attributes:
      weights: float [K], the learned soup weights.
      losses: float [steps], the loss at each step (before its update).
    """

    weights: np.ndarray
    losses: np.ndarray


def learned_weights(alpha: jax.Array, extrapolate: bool) -> jax.Array:
    """Soup weights from `learned`'s parameters: softmax(alpha) on the simplex, else alpha."""
    return alpha if extrapolate else jax.nn.softmax(alpha)


@functools.lru_cache(maxsize=16)
def _learn_step(loss_fn: Callable, learning_rate: float, extrapolate: bool):
    """One compiled Adam step on `learned`'s parameters (a Python loop drives the steps:
    XLA:CPU ran the model's gradient inside a `lax.scan` many times slower)."""
    optimizer = optax.adam(learning_rate)

    def step(alpha, opt_state, batch):
        loss, grad = jax.value_and_grad(lambda a: loss_fn(learned_weights(a, extrapolate), batch))(
            alpha
        )
        updates, opt_state = optimizer.update(grad, opt_state, alpha)
        return optax.apply_updates(alpha, updates), opt_state, loss

    return optimizer, jax.jit(step, donate_argnums=(0, 1))


def _replicated_like(batch: Any, tree: Any) -> Any:
    """`tree` replicated over the device mesh of `batch`'s sharded arrays (as is if none):
    the placement the compiled step returns its parameters in, so that the first step's
    program serves every step (placed on one device, they cost a second compilation)."""
    for leaf in jax.tree.leaves(batch):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
            return jax.device_put(tree, replicated)
    return tree


def learned(
    loss_fn: Callable[[jax.Array, Any], jax.Array],
    batch_fn: Callable[[int], Any],
    k: int,
    *,
    steps: int = 200,
    learning_rate: float = 0.1,
    extrapolate: bool = False,
    log_every: int = 50,
) -> LearnedResult:
    """Learned soup (Wortsman et al. 2022): the weights by gradient descent on held-out data.

    Parametrised on the simplex as w = softmax(alpha), alpha starting at 0 (the uniform soup);
    with `extrapolate`, w = alpha unconstrained (any real weights, not summing to 1 either),
    starting at 1/K. Adam, `steps` steps of one compiled program (cached per `loss_fn` object,
    so pass the same one for many datasets of one shape); a progress line every `log_every`
    steps.

    Args:
      loss_fn: (weights [K], batch) -> scalar loss, pure (e.g. the cross-entropy of
        `combine_stacked(stacked, weights)` on the batch's images).
      batch_fn: step -> its batch (ingredients, images, labels: any pytree of arrays, e.g.
        sharded over a device mesh).
      k: the number of ingredients.
      steps: optimisation steps (an integer >= 1).
      learning_rate: Adam's step size (> 0).
      extrapolate: unconstrained weights instead of the simplex.

    Raises:
      UserError: bad steps, learning rate or k.
    """
    k = errors.check_count("k", k, 1)
    steps = errors.check_count("steps", steps, 1)
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise errors.UserError(f"learning_rate={learning_rate!r}: expected a number > 0.")
    alpha = jnp.full((k,), 1.0 / k) if extrapolate else jnp.zeros((k,))
    optimizer, step = _learn_step(loss_fn, float(learning_rate), bool(extrapolate))
    opt_state = optimizer.init(alpha)
    losses = []
    start = time.monotonic()
    for i in range(steps):
        batch = batch_fn(i)
        if i == 0:
            alpha, opt_state = _replicated_like(batch, (alpha, opt_state))
        alpha, opt_state, loss = step(alpha, opt_state, batch)
        losses.append(loss)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            rate = (i + 1) / max(time.monotonic() - start, 1e-9)
            logging.info(
                "learned soup: step %d/%d | loss %.4f | %.1f steps/s | ETA %.0f s",
                i + 1,
                steps,
                float(loss),
                rate,
                (steps - i - 1) / rate,
            )
    weights = np.asarray(learned_weights(alpha, extrapolate), np.float64)
    return LearnedResult(weights, np.asarray(jnp.stack(losses), np.float64))
