"""Model soups: weighted sums of checkpoints fine-tuned from one parent (Croce et al. 2023).

A soup of K ingredients theta_1..theta_K (variable pytrees of one architecture, e.g.
`{'params', 'batch_stats'}`) with weights w is the leafwise sum theta = sum_i w_i theta_i.

    soup_vars = soup.combine([v_linf, v_l2, v_l1, v_clean], [0.4, 0.3, 0.2, 0.1])
    soup_vars = soup.mix(v_a, v_b, 0.25)                  # 0.75 a + 0.25 b
    grid = soup.simplex_grid(3, 0.1)                      # [66, 3], rows sum to 1
    best = soup.greedy(trees, score_fn)                   # Wortsman et al.'s greedy soup
    w = soup.learned(loss_fn, batch_fn, k=4).weights      # learned soup (gradient descent)
    stacked = soup.stack([v_linf, v_l2, v_l1])            # leaves [3, ...]
    soup.check_weights(grid, 3)                           # all rows, eagerly
    many = jax.jit(jax.vmap(soup.combine_stacked, in_axes=(None, 0)))(stacked, grid)

Weights are convex by default (non-negative, summing to 1 within 1e-6); negative weights
(extrapolation past an ingredient, e.g. `mix(a, b, 1.5)`) need `allow_extrapolation=True`,
and `convex=False` allows any finite weights (a general linear combination).

Leaves are combined in float32 (float64 for float64 leaves) and cast back to their own dtype,
so a bfloat16 leaf stays bfloat16 and one-hot weights give an ingredient back bit for bit.
Integer and boolean leaves (step counters and the like; Flax's BatchNorm has none) are never
averaged: they are taken whole from the ingredient with the largest weight (the first such
ingredient on ties), which also keeps one-hot weights exact for them.

BatchNorm (`BN_POLICIES`, module `soup.bn`): "interpolate" mixes the running statistics like
any other leaf (what `combine` does); "recalibrate" then replaces them with statistics measured
on training images, by `recalibrate_batch_stats` on the host or `bn.recalibrate_in_program`
inside a compiled program, which fixes the variance collapse of averaged networks.

The names above are imported from `soup.mixing`, `soup.search` and `soup.bn` on first use, so
that `soup.config` (the soup config schema, which the experiment configs import) loads without
JAX. `soup.grid` evaluates many soups per compiled program, `soup.sweep` is the driver's work.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seasoning.soup import bn
    from seasoning.soup.bn import BN_POLICIES, recalibrate_batch_stats
    from seasoning.soup.mixing import (
        GRID_KINDS,
        SUM_ATOL,
        check_weights,
        combine,
        combine_stacked,
        line_grid,
        mix,
        simplex_grid,
        stack,
        uniform,
    )
    from seasoning.soup.search import (
        GreedyResult,
        LearnedResult,
        greedy,
        learned,
        learned_weights,
    )

# Each public name and the submodule that defines it.
_OWNERS = {
    "BN_POLICIES": "bn",
    "recalibrate_batch_stats": "bn",
    "GRID_KINDS": "mixing",
    "SUM_ATOL": "mixing",
    "check_weights": "mixing",
    "combine": "mixing",
    "combine_stacked": "mixing",
    "line_grid": "mixing",
    "mix": "mixing",
    "simplex_grid": "mixing",
    "stack": "mixing",
    "uniform": "mixing",
    "GreedyResult": "search",
    "LearnedResult": "search",
    "greedy": "search",
    "learned": "search",
    "learned_weights": "search",
}

__all__ = [
    "BN_POLICIES",
    "GRID_KINDS",
    "SUM_ATOL",
    "GreedyResult",
    "LearnedResult",
    "bn",
    "check_weights",
    "combine",
    "combine_stacked",
    "greedy",
    "learned",
    "learned_weights",
    "line_grid",
    "mix",
    "recalibrate_batch_stats",
    "simplex_grid",
    "stack",
    "uniform",
]


def __getattr__(name: str) -> Any:
    """Imports the soup code on first use of one of its names (PEP 562)."""
    if name not in _OWNERS and name not in ("bn", "search"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in ("bn", "mixing", "search"):
        importlib.import_module(f"{__name__}.{module}")
    package = sys.modules[__name__]
    for key, module in _OWNERS.items():
        setattr(package, key, getattr(sys.modules[f"{__name__}.{module}"], key))
    return getattr(package, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
