"""The rows of a shift run's table, stored under stable ids: ingredients, ensembles, and each
selection method's single and dataset-specific soups.

shift.json and predictions.npz key every row by `row_id` (`ingredient/<label>`,
`ensemble/<i>+<j>`, `single/<method>`, `specific/<method>`); the display labels (`row_label`)
are applied only in reports, so renaming a label never breaks `--resume`.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np


def ensembles_of(config: ml_collections.ConfigDict, labels: list[str]) -> list[list[int]]:
    """Ingredient indices of each logit ensemble (default: first + last, and all)."""
    if config.ensembles:
        return [[labels.index(p) for p in spec.split("+")] for spec in config.ensembles]
    k = len(labels)
    return [[0, k - 1], list(range(k))] if k > 2 else [list(range(k))]


def row_label(kind: str, method: str = "", column: str = "") -> str:
    """The table's label of a soup row (`kind` "single" or "specific"; a specific soup of one
    `column`), as reports show it; files key rows by `row_id`, never by this."""
    if kind == "single":
        return f"single soup ({method})"
    if column:
        return f"{column} soup ({method})"
    return f"dataset-specific soups ({method})"


def row_id(kind: str, *, label: str = "", members: Sequence[int] = (), method: str = "") -> str:
    """The stable key of a table row in shift.json and predictions.npz: `ingredient/<label>`,
    `ensemble/<i>+<j>...` (ingredient indices), `single/<method>` or `specific/<method>`.

    Raises:
      ValueError: an unknown kind (a bug).
    """
    if kind == "ingredient":
        return f"ingredient/{label}"
    if kind == "ensemble":
        return "ensemble/" + "+".join(str(i) for i in members)
    if kind in ("single", "specific"):
        return f"{kind}/{method}"
    raise ValueError(f"Unknown table row kind {kind!r}.")


def table_rows(labels: list[str], ensembles: list[list[int]], methods: list[str]) -> list[dict]:
    """The rows of the paper's table: ingredients, ensembles, each method's soups; each with
    its stable `id` (`row_id`) and its display `name`."""
    rows = [
        {
            "id": row_id("ingredient", label=lab),
            "name": lab,
            "kind": "ingredient",
            "fp": 1,
            "ingredient": i,
        }
        for i, lab in enumerate(labels)
    ]
    for members in ensembles:
        name = (
            "ensemble of all"
            if len(members) == len(labels) and len(labels) > 2
            else "ensemble " + "+".join(labels[i] for i in members)
        )
        rows.append(
            {
                "id": row_id("ensemble", members=members),
                "name": name,
                "kind": "ensemble",
                "fp": len(members),
                "members": members,
            }
        )
    for method in methods:
        for kind in ("single", "specific"):
            rows.append(
                {
                    "id": row_id(kind, method=method),
                    "name": row_label(kind, method),
                    "kind": kind,
                    "fp": 1,
                    "method": method,
                }
            )
    return rows


def upgrade_rows(result: dict, arrays: dict[str, np.ndarray]) -> None:
    """Gives the rows of a run saved before rows had ids their `id`, and renames its arrays
    from the display name to the id (`unseen/<column>/row/<name>` -> `.../row/<id>`), so that
    `--resume` continues it. Rows that have ids are left as they are."""
    for row in result["rows"]:
        if "id" in row:
            continue
        row["id"] = row_id(
            row["kind"],
            label=row["name"],
            members=row.get("members", ()),
            method=row.get("method", ""),
        )
        for column in result["columns"]:
            old = f"unseen/{column['name']}/row/{row['name']}"
            if old in arrays:
                arrays[f"unseen/{column['name']}/row/{row['id']}"] = arrays.pop(old)
