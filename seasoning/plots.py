"""Figures of a soup grid (matplotlib, no display needed): metric curves along two ingredients,
simplex heat maps for three, the trade-off front between two metrics for any number, and the
weights that shift selection chose.

Every function writes one PNG atomically (`workdir.write_bytes`: locally a temporary file and a
rename, in an object store one upload) and returns its path.
"""

from __future__ import annotations

import io

import numpy as np

from seasoning import workdir as workdir_lib

_TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported at the first figure, so that
    commands that draw nothing do not pay for its import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    workdir_lib.write_bytes(path, buffer.getvalue())
    return path


def line(alpha: np.ndarray, metrics: dict[str, np.ndarray], labels: list[str], path: str) -> str:
    """Each metric (in %) against the weight `alpha` of the second ingredient."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for name, values in metrics.items():
        ax.plot(alpha, 100 * np.asarray(values), marker="o", ms=3, label=name)
    ax.axvspan(min(alpha.min(), 0), 0, color="0.9", zorder=0)
    ax.axvspan(1, max(alpha.max(), 1), color="0.9", zorder=0)
    ax.set_xlabel(f"w  (soup = (1 - w) {labels[0]} + w {labels[1]})")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def simplex(
    weights: np.ndarray, values: np.ndarray, labels: list[str], title: str, path: str
) -> str:
    """A heat map of `values` (in %) over three-ingredient weights [G, 3] on the triangle."""
    import matplotlib.tri as mtri

    xy = np.asarray(weights) @ _TRIANGLE
    fig, ax = _pyplot().subplots(figsize=(5.5, 5))
    tri = mtri.Triangulation(xy[:, 0], xy[:, 1])
    shade = ax.tripcolor(tri, 100 * np.asarray(values), shading="gouraud", cmap="viridis")
    ax.scatter(xy[:, 0], xy[:, 1], c="k", s=4)
    best = int(np.argmax(values))
    ax.scatter(*xy[best], marker="*", s=150, c="red", label=f"best {100 * values[best]:.1f}%")
    for corner, label in zip(_TRIANGLE, labels, strict=True):
        ax.annotate(
            label,
            corner,
            textcoords="offset points",
            xytext=(0, 6 if corner[1] else -14),
            ha="center",
            fontsize=9,
        )
    fig.colorbar(shade, ax=ax, label=f"{title} (%)")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both x and y (higher is better), by x."""
    order = np.lexsort((-y, -x))  # x descending, ties by y descending
    front, best_y = [], -np.inf
    for i in order:
        if y[i] > best_y:
            front.append(i)
            best_y = y[i]
    return np.array(sorted(front, key=lambda i: x[i]), dtype=int)


def front(
    x: np.ndarray,
    y: np.ndarray,
    ingredient_rows: dict[str, int],
    x_name: str,
    y_name: str,
    path: str,
) -> str:
    """Every soup as a point (x, y) in %, the trade-off front joined, ingredients labelled."""
    x, y = 100 * np.asarray(x), 100 * np.asarray(y)
    fig, ax = _pyplot().subplots(figsize=(5.5, 4.5))
    ax.scatter(x, y, s=12, c="0.6", label="soups")
    idx = pareto_front(x, y)
    ax.plot(x[idx], y[idx], "-o", c="tab:blue", ms=4, label="front")
    for label, row in ingredient_rows.items():
        ax.scatter(x[row], y[row], marker="s", s=50, c="tab:red", zorder=3)
        ax.annotate(label, (x[row], y[row]), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel(f"{x_name} accuracy (%)")
    ax.set_ylabel(f"{y_name} accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def weight_bars(chosen: dict[str, dict[str, list[float]]], labels: list[str], path: str) -> str:
    """Grouped bars of soup weights: one panel per selection method, one group per soup
    (`chosen[method][soup] = weights`), one bar per ingredient."""
    methods = list(chosen)
    fig, axes = _pyplot().subplots(len(methods), 1, figsize=(8, 2.6 * len(methods)), squeeze=False)
    for ax, method in zip(axes[:, 0], methods, strict=True):
        soups = list(chosen[method])
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            heights = [chosen[method][s][i] for s in soups]
            ax.bar(
                np.arange(len(soups)) + (i - (len(labels) - 1) / 2) * width,
                heights,
                width,
                label=label,
            )
        ax.set_xticks(np.arange(len(soups)), soups, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("weight")
        ax.set_title(f"{method} selection", fontsize=10)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=len(labels))
    fig.tight_layout()
    return _save(fig, path)
