"""Which soups of the demo's sweeps to re-check with the stronger attack.

The sweep ranks soups under a cheap attack; the few that matter are evaluated again, with the
ingredients, under the re-check attack on the same points. `select` picks them from the sweep's
grid.json content: the soup with the best union accuracy, and for each threat model (and the
union) the best soup if it beats every ingredient there (the paper's "a soup more robust to an
Lp adversary than the model fine-tuned for it"). Weights are written in the order of all
ingredients (`labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

UNION = "union"


def full_weights(
    row_weights: Sequence[float], sweep_labels: Sequence[str], labels: Sequence[str]
) -> list[float]:
    """A sweep row's weights over `sweep_labels`, spelt over all ingredients `labels`."""
    out = [0.0] * len(labels)
    for w, label in zip(row_weights, sweep_labels, strict=True):
        out[labels.index(label)] = float(w)
    return out


def one_hot_rows(labels: Sequence[str]) -> list[list[float]]:
    """The ingredients themselves, as soups over all ingredients."""
    return np.eye(len(labels)).tolist()


def ingredient_of(weights: Sequence[float]) -> int | None:
    """The index of the ingredient a soup is (one weight 1), else None."""
    w = np.asarray(weights)
    hot = np.flatnonzero(np.isclose(w, 1.0))
    return int(hot[0]) if hot.size == 1 and np.allclose(np.delete(w, hot[0]), 0.0) else None


def select(sweep: dict[str, Any], labels: Sequence[str]) -> list[dict[str, Any]]:
    """The soups worth a re-check (see module doc), in the order first found.

    Args:
      sweep: a grid.json's content (settings with `labels` and `metrics`; rows).
      labels: every ingredient's label, the order of the returned weights.

    Returns:
      One dict per soup: `weights` (over `labels`), `sweep_metrics` (its row in the sweep),
      `why` (the reasons it was picked, e.g.
      "best union", "beats every ingredient on l2:0.8").
    """
    ingredients: dict[int, dict[str, float]] = {}
    soups: list[dict[str, Any]] = []
    seen: set[tuple[float, ...]] = set()
    sweep_labels = sweep["settings"]["labels"]
    for row in sweep["rows"]:
        weights = full_weights(row["weights"], sweep_labels, labels)
        metrics = {m: row[m] for m in sweep["settings"]["metrics"]}
        index = ingredient_of(weights)
        if index is not None:
            ingredients.setdefault(index, metrics)
            continue
        key = tuple(round(w, 6) for w in weights)
        if key not in seen:
            seen.add(key)
            soups.append({"weights": weights, "sweep_metrics": metrics})
    if not soups:
        return []
    chosen: list[dict[str, Any]] = []

    def pick(soup: dict[str, Any], why: str) -> None:
        for c in chosen:
            if c["weights"] == soup["weights"]:
                c["why"].append(why)
                return
        chosen.append({**soup, "why": [why]})

    # Clean accuracy needs no attack: the sweep's figure is already exact.
    metrics = [m for m in soups[0]["sweep_metrics"] if ":" in m or m == UNION]
    pick(max(soups, key=lambda s: s["sweep_metrics"][UNION]), f"best {UNION}")
    for metric in metrics:
        best = max(soups, key=lambda s: s["sweep_metrics"][metric])
        best_ingredient = max((m[metric] for m in ingredients.values()), default=-1.0)
        if best["sweep_metrics"][metric] > best_ingredient:
            pick(best, f"beats every ingredient on {metric}")
    return chosen
