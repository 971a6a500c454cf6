"""The numbers of a shift run, computed from its saved per-point predictions, and report.md.

Every accuracy in `shift.json` and `report.md` comes from `shift_accuracy` over the arrays
of `predictions.npz` (predicted labels, labels, and the member each point belongs to), so a
reader can recompute each figure; none is typed twice.
"""

from __future__ import annotations

import numpy as np

from seasoning import evaluation, stats
from seasoning.data import shifts


def shift_accuracy(predicted: np.ndarray, labels: np.ndarray, member: np.ndarray) -> np.ndarray:
    """float [...]: the mean over members of each member's accuracy (a group's accuracy, as
    ImageNet-C's is the mean over its 75 sets), per row of `predicted` [..., N]."""
    member = np.asarray(member)
    per_member = [
        shifts.accuracy(np.asarray(predicted)[..., member == m], np.asarray(labels)[member == m])
        for m in np.unique(member)
    ]
    out = np.mean(per_member, axis=0)
    for value in np.ravel(out):
        evaluation.checked_accuracy(value, 1.0, "shift accuracy")
    return out


def row_key(row: dict) -> str:
    """The key of a table row's arrays: its `id` (`rows.row_id`); runs saved before rows had
    ids keyed them by the row's name."""
    return row.get("id", row["name"])


def unseen_accuracy(arrays: dict[str, np.ndarray], column: str, row: str) -> float:
    """The accuracy of table row `row` (its `row_key`) on the unseen images of `column`, from
    the arrays."""
    prefix = f"unseen/{column}/"
    return float(
        shift_accuracy(
            arrays[f"{prefix}row/{row}"], arrays[f"{prefix}labels"], arrays[f"{prefix}member"]
        )
    )


def unseen_interval(arrays: dict[str, np.ndarray], columns: list[str], row: str) -> list[float]:
    """The 95% interval of the accuracy of row `row` (its `row_key`) on the unseen images of
    `columns` (one column, or the mean over several as the table's mean column), each column
    the mean over its members (`stats.mean_interval`)."""
    groups, weights = [], []
    for column in columns:
        prefix = f"unseen/{column}/"
        labels = arrays[f"{prefix}labels"]  # (several per point, or none, for some shifts)
        correct = shifts.correct(arrays[f"{prefix}row/{row}"], labels)
        member, scored = arrays[f"{prefix}member"], shifts.scored(labels)
        members = np.unique(member)
        groups += [correct[(member == m) & scored] for m in members]
        weights += [1 / (len(columns) * len(members))] * len(members)
    return stats.mean_interval(groups, weights)


def robust_accuracies(flags: np.ndarray, metrics: list[str]) -> dict[str, float]:
    """Metric -> accuracy from per-point flags [M, N]."""
    return dict(zip(metrics, evaluation.flag_accuracies(flags).tolist(), strict=True))


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _weights(w: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in w)


def markdown(result: dict, arrays: dict[str, np.ndarray]) -> str:
    """report.md of a finished shift run (see module doc)."""
    settings = result["settings"]
    columns = [c["name"] for c in result["columns"]]
    labels = settings["labels"]
    out = ["# Soups for distribution shifts", ""]
    ingredients = ", ".join(
        f"{lab} (`{d}`)" for lab, d in zip(labels, settings["ingredients"], strict=True)
    )
    unseen = ", ".join(
        f"{c['name']}: {sum(m['n_unseen'] for m in c['members'])}" for c in result["columns"]
    )
    out.append(
        f"Ingredients: {ingredients}. Weights chosen on {settings['n_adaptation']} adaptation "
        f"images per shift (split seed {settings['split_seed']}); accuracies (%) on the unseen "
        f"images of each shift ({unseen}). A group (e.g. the corruptions) scores the mean over "
        "its member sets. #FP: forward passes per image."
    )
    out += ["", "## Accuracy on unseen images (%)", ""]
    out.append("| setup | #FP | " + " | ".join(columns) + " | mean |")
    out.append("|---|---:|" + "---:|" * (len(columns) + 1))
    values = {}
    for row in result["rows"]:
        accs = [unseen_accuracy(arrays, c, row_key(row)) for c in columns]
        values[row["name"]] = accs
        mean = _pct(float(np.mean(accs)))
        mean = f"({mean})" if row["kind"] == "specific" else mean
        cells = [row["name"], f"x{row['fp']}", *(_pct(a) for a in accs), mean]
        out.append("| " + " | ".join(cells) + " |")
    widest = max(
        np.diff(unseen_interval(arrays, [c], row_key(row)))[0] / 2
        for c in columns
        for row in result["rows"]
    )
    out += [
        "",
        f"Each accuracy lies within a 95% interval of at most +-{100 * widest:.1f} "
        "points (shift.json: `unseen_interval`, `mean_interval`).",
        "",
    ]
    out += [*comparison_lines(result, values, columns), ""]
    out += ["## Chosen weights", ""]
    out.append(
        "| method | soup | " + " | ".join(f"w_{lab}" for lab in labels) + " | adaptation acc. |"
    )
    out.append("|---|---|" + "---:|" * (len(labels) + 1))
    for method in settings["methods"]:
        chosen = result["selection"][method]
        entries = [("single", chosen["single"], chosen["single_adaptation"])]
        entries += [
            (f"for {c}", chosen["specific"][c], chosen["specific_adaptation"][c]) for c in columns
        ]
        for name, w, acc in entries:
            cells = [method, name, *(f"{v:.2f}" for v in w), _pct(acc)]
            out.append("| " + " | ".join(cells) + " |")
    out += ["", "![chosen weights](weights.png)", ""]
    robust = result.get("robust")
    if robust:
        where = f"{robust['dataset']}/{robust['split']}, first {robust['n_examples']} images"
        out += [
            f"## Robustness of the selected soups (%, {where}, AutoAttack {robust['version']})",
            "",
        ]
        metrics = robust["metrics"]
        out.append("| soup | weights | " + " | ".join(metrics) + " |")
        out.append("|---|---|" + "---:|" * len(metrics))
        for i, row in enumerate(robust["rows"]):
            accs = robust_accuracies(arrays[f"robust/{i}"], metrics)
            cells = [
                "; ".join(row["names"]),
                _weights(row["weights"]),
                *(_pct(accs[m]) for m in metrics),
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Time", ""]
    for line in timing_lines(result):
        out.append(f"- {line}")
    return "\n".join(out) + "\n"


def comparison_lines(result: dict, values: dict[str, list[float]], columns: list[str]) -> list[str]:
    """Where the soups beat the best single ingredient, the 4-ensemble, and each other."""
    rows = {r["name"]: r for r in result["rows"]}
    ingredients = [n for n, r in rows.items() if r["kind"] == "ingredient"]
    best_single = np.max([values[n] for n in ingredients], axis=0)
    lines = []
    ensembles = [n for n, r in rows.items() if r["kind"] == "ensemble"]
    full = max(ensembles, key=lambda n: rows[n]["fp"]) if ensembles else None
    for name, row in rows.items():
        if row["kind"] not in ("single", "specific"):
            continue
        accs = np.array(values[name])
        wins = [c for c, a, b in zip(columns, accs, best_single, strict=True) if a > b]
        text = (
            f"- {name}: beats the best ingredient of each column on {len(wins)}/"
            f"{len(columns)} ({', '.join(wins) or 'none'})"
        )
        if full:
            beat = [c for c, a, b in zip(columns, accs, values[full], strict=True) if a > b]
            text += f"; the {full} on {len(beat)}/{len(columns)} ({', '.join(beat) or 'none'})"
        lines.append(
            text + f"; mean {_pct(accs.mean())} vs {_pct(best_single.mean())} (best "
            "ingredient per column)."
        )
    for kind in ("single", "specific"):
        grid = [n for n, r in rows.items() if r["kind"] == kind and r.get("method") == "grid"]
        other = [n for n, r in rows.items() if r["kind"] == kind and r.get("method") == "learned"]
        if grid and other:
            g, o = np.array(values[grid[0]]), np.array(values[other[0]])
            better = [c for c, a, b in zip(columns, o, g, strict=True) if a > b]
            worse = [c for c, a, b in zip(columns, o, g, strict=True) if a < b]
            lines.append(
                f"- {other[0]} vs {grid[0]}: learned higher on {', '.join(better) or 'none'}; "
                f"grid higher on {', '.join(worse) or 'none'}."
            )
    return lines


def timing_lines(result: dict) -> list[str]:
    """How long each stage took (wall-clock seconds from shift.json, summed over the sessions
    of a resumed run)."""
    seconds = result.get("stage_seconds", {})
    lines = []
    grid = seconds.get("grid", {})
    if grid:
        n = len(result["grid"]["weights"])
        per = ", ".join(f"{c} {t:.1f} s" for c, t in grid.items())
        lines.append(f"grid: {n} soups on each shift's adaptation images: {per}")
    for method, took in seconds.get("select", {}).items():
        what = (
            "given the grid's predictions"
            if method == "grid"
            else "every shift and the single soup"
        )
        lines.append(f"{method} selection: {took:.1f} s ({what})")
    if seconds.get("unseen"):
        lines.append(f"unseen images, every row: {sum(seconds['unseen'].values()):.1f} s")
    if "robust" in seconds:
        lines.append(f"AutoAttack of the ingredients and selected soups: {seconds['robust']:.1f} s")
    total = sum(grid.values()) + sum(seconds.get("select", {}).values())
    total += sum(seconds.get("unseen", {}).values()) + seconds.get("robust", 0.0)
    lines.append(f"all stages: {total:.1f} s")
    return lines
