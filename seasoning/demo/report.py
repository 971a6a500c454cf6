"""report.md of the demo: every table, plot and verdict, from the stages' result files.

Every number is read from a file a stage wrote (the sweep's and the re-check's grid.json, the
shift run's shift.json and predictions.npz, stages.json) and formatted here once, so the report
never holds a figure typed by hand; under each table a line says which attack, on which points,
made it. The sweep's plots (its lines, simplex heat maps and front) are drawn here into
`plots/` from its grid.json; the shift run's weights plot is its own. Links are relative.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from seasoning import data, plots, stats
from seasoning import workdir as workdir_lib
from seasoning.attacks import autoattack
from seasoning.demo import selection, stages
from seasoning.shift import report as shift_report
from seasoning.shift import run as shift_run

REPORT_FILE, PLOTS_DIR = "report.md", "plots"
# The paper's recipe, for the "what was cut" list (PAPER.md; Croce & Hein 2022).
PAPER_POINTS = 1000
PAPER_GRID_STEP = 0.1
PAPER_ADAPTATION = 1000
FMNIST_TRAIN = 60_000  # Fashion-MNIST's training images


def pct(value: float) -> str:
    """An accuracy in [0, 1] as the report prints it: percent, one decimal."""
    return f"{100 * value:.1f}"


def soup_name(weights: Sequence[float], labels: Sequence[str]) -> str:
    """`l2`, or `0.25 l2 + 0.75 l1`: a soup by its nonzero weights."""
    index = selection.ingredient_of(weights)
    if index is not None:
        return labels[index]
    return " + ".join(f"{w:.2f} {lab}" for w, lab in zip(weights, labels, strict=True) if w)


def machine() -> str:
    """The CPU model and core count, e.g. `Intel(R) Xeon(R) Processor, 2 cores`."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def attack_text(settings: dict[str, Any], points: str) -> str:
    """What made a grid.json's robust numbers: the attacks, their budgets, the points."""
    threats = settings.get("threats") or [m for m in settings["metrics"] if ":" in m]
    overrides = settings.get("overrides", {})
    per_norm: dict[str, list[str]] = {}
    for norm in dict.fromkeys(t.split(":")[0] for t in threats):
        cfg = autoattack.resolve_settings(settings["version"], norm, overrides)
        it, fab_it = _plural(cfg["n_iter"], "iteration"), _plural(cfg["fab_n_iter"], "iteration")
        budgets = {
            "apgd-ce": f"APGD-CE {it} x {_plural(cfg['n_restarts'], 'restart')}",
            "apgd-dlr": f"APGD-DLR {it}",
            "apgd-t": f"APGD-T {_plural(cfg['n_target_classes'], 'target')} x {it}",
            "fab-t": f"FAB-T {_plural(cfg['fab_n_target_classes'], 'target')} x {fab_it}",
            "square": f"Square {_plural(cfg['n_queries'], 'query').replace('querys', 'queries')}",
        }
        text = ", ".join(budgets[a] for a in cfg["attacks"])
        per_norm.setdefault(text, []).append(norm)
    parts = [
        text if len(per_norm) == 1 else f"{'/'.join(norms)}: {text}"
        for text, norms in per_norm.items()
    ]
    cut = ", budgets cut" if overrides else ""
    return (
        f"AutoAttack `{settings['version']}`{cut}: {'; '.join(parts)}; each attack on the "
        f"points the ones before left robust; {points}."
    )


def _points(settings: dict[str, Any]) -> str:
    return f"the first {settings['n_examples']} images of {settings['dataset']}/{settings['split']}"


def _num_points(grid: dict[str, Any]) -> int:
    """The points a grid.json's accuracies were measured on."""
    return int(grid.get("n_points") or grid["settings"]["n_examples"])


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * left + "---:|" * (len(header) - left)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _threat_metrics(metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if ":" in m]


def verdicts(
    rows: Sequence[dict[str, Any]], labels: Sequence[str], metrics: Sequence[str], num_points: int
) -> list[str]:
    """Per metric, in words: whether a soup beat every ingredient, by how much, and whether
    that gap is more than the noise of the `num_points` shared points (`stats.compare` on the
    rows' per-point flags; rows without flags, from earlier versions, say so)."""
    ingredients = [r for r in rows if selection.ingredient_of(r["weights"]) is not None]
    soups = [r for r in rows if selection.ingredient_of(r["weights"]) is None]
    lines = []
    for m in metrics:
        best_i = max(ingredients, key=lambda r: r[m])
        name_i = soup_name(best_i["weights"], labels)
        if not soups:
            lines.append(f"- **{m}**: no soup was re-checked.")
            continue
        best_s = max(soups, key=lambda r: r[m])
        name_s = soup_name(best_s["weights"], labels)
        gap = 100 * (best_s[m] - best_i[m])
        if best_s[m] > best_i[m]:
            lines.append(
                f"- **{m}**: a soup beat every ingredient: {name_s} {pct(best_s[m])} "
                f"vs {pct(best_i[m])} for the best ingredient ({name_i}), "
                f"+{gap:.1f} points{_noise(best_s, best_i, m, num_points)}."
            )
        else:
            lines.append(
                f"- **{m}**: no soup beat every ingredient: the best re-checked soup "
                f"({name_s}) has {pct(best_s[m])}, the best ingredient ({name_i}) "
                f"{pct(best_i[m])}."
            )
    return lines


def _noise(soup_row: dict[str, Any], ingredient_row: dict[str, Any], metric: str, num: int) -> str:
    """`: <the paired test> (<verdict>)` for a soup's gap over an ingredient on `metric`."""
    if "flags" not in soup_row or "flags" not in ingredient_row:
        return " (per-point flags not recorded: not tested against noise)"
    soup = stats.unpack_flags(soup_row["flags"][metric], num)
    ingredient = stats.unpack_flags(ingredient_row["flags"][metric], num)
    c = stats.compare(soup, ingredient)
    verdict = "unlikely to be noise" if c.significant else f"within the noise of {num} points"
    return (
        f": {c.a_only} point{'' if c.a_only == 1 else 's'} only the soup gets right, "
        f"{c.b_only} only the ingredient (exact McNemar p = {c.p_value:.2g}: {verdict})"
    )


def trend(rows: Sequence[dict[str, Any]], metric: str, w_index: int) -> str:
    """How `metric` moves along a line of soups: first and last value, steps up and down."""
    ordered = sorted(rows, key=lambda r: r["weights"][w_index])
    values = [r[metric] for r in ordered]
    steps = np.diff(values)
    direction = (
        "falls" if values[-1] < values[0] else "rises" if values[-1] > values[0] else "ends level"
    )
    down = int((steps < 0).sum())
    return (
        f"{metric} {direction} from {pct(values[0])} to {pct(values[-1])} "
        f"({down} step{'' if down == 1 else 's'} down, {int((steps > 0).sum())} up, "
        f"{int((steps == 0).sum())} level)"
    )


def _family(sweep: dict[str, Any], family: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The sweep's rows of `family` and the positions of its ingredients among `LABELS`."""
    labels = sweep["settings"]["labels"]
    inside = [labels.index(label) for label in stages.FAMILIES[family]]
    return stages.family_rows(sweep["rows"], family), inside


def _line_section(sweep: dict[str, Any], family: str, workdir: str) -> list[str]:
    settings = sweep["settings"]
    metrics = settings["metrics"]
    rows, (a, b) = _family(sweep, family)
    rows = sorted(rows, key=lambda r: r["weights"][b])
    names = stages.FAMILIES[family]
    title = f"{names[0]} <-> {names[1]}"
    plot = f"{PLOTS_DIR}/line_{family}.png"
    values = {m: np.array([r[m] for r in rows]) for m in metrics}
    plots.line(
        np.array([r["weights"][b] for r in rows]),
        values,
        list(names),
        str(workdir_lib.path(workdir, plot)),
    )
    out = [f"### {title}: {len(rows)} soups", ""]
    out += _table(
        [f"w of {names[1]}", *(f"{r['weights'][b]:.2f}" for r in rows)],
        [[m, *(pct(r[m]) for r in rows)] for m in metrics],
    )
    out += ["", f"_{attack_text(settings, _points(settings))}_", ""]
    moves = [trend(rows, m, b) for m in _threat_metrics(metrics)]
    out += [f"Along {names[0]} -> {names[1]} (w from 0 to 1): " + "; ".join(moves) + ".", ""]
    out += [f"![{title}]({plot})", ""]
    return out


def _simplex_section(sweep: dict[str, Any], family: str, workdir: str) -> list[str]:
    settings = sweep["settings"]
    labels, metrics = settings["labels"], settings["metrics"]
    rows, inside = _family(sweep, family)
    names = list(stages.FAMILIES[family])
    weights = np.array([[r["weights"][i] for i in inside] for r in rows])
    best = {m: max(rows, key=lambda r: r[m]) for m in metrics}
    alone = {i: next(r for r in rows if selection.ingredient_of(r["weights"]) == i) for i in inside}
    out = [f"### {' / '.join(names)}: {len(rows)} soups on the simplex", ""]
    out += _table(
        ["metric", "best soup", "its accuracy", *(f"{n} alone" for n in names)],
        [
            [
                m,
                soup_name(best[m]["weights"], labels),
                pct(best[m][m]),
                *(pct(alone[i][m]) for i in inside),
            ]
            for m in metrics
        ],
    )
    out += ["", f"_{attack_text(settings, _points(settings))}_", ""]
    images = []
    for m in ("union", *_threat_metrics(metrics)):
        plot = f"{PLOTS_DIR}/simplex_{m.replace(':', '_')}.png"
        plots.simplex(
            weights, np.array([r[m] for r in rows]), names, m, str(workdir_lib.path(workdir, plot))
        )
        images.append(f"![{m}]({plot})")
    out += [" ".join(images), ""]
    return out


def _front_section(sweep: dict[str, Any], workdir: str) -> list[str]:
    """Every soup of the sweep on the first two threat models, the ingredients marked."""
    settings = sweep["settings"]
    labels, rows = settings["labels"], sweep["rows"]
    x_name, y_name = _threat_metrics(settings["metrics"])[:2]
    corners = {
        labels[i]: k
        for k, r in enumerate(rows)
        if (i := selection.ingredient_of(r["weights"])) is not None
    }
    plot = f"{PLOTS_DIR}/front.png"
    plots.front(
        np.array([r[x_name] for r in rows]),
        np.array([r[y_name] for r in rows]),
        corners,
        x_name,
        y_name,
        str(workdir_lib.path(workdir, plot)),
    )
    return [
        f"### The front: all {len(rows)} soups, {x_name} against {y_name}",
        "",
        f"![front]({plot})",
        "",
        f"_{attack_text(settings, _points(settings))}_",
        "",
    ]


def _headline(recheck: dict[str, Any], chosen: list[dict[str, Any]]) -> list[str]:
    settings = recheck["settings"]
    labels, metrics = settings["labels"], settings["metrics"]
    why = {tuple(c["weights"]): ", ".join(c["why"]) for c in chosen}
    body = []
    for row in recheck["rows"]:
        reason = why.get(tuple(row["weights"]), "ingredient")
        body.append([soup_name(row["weights"], labels), reason, *(pct(row[m]) for m in metrics)])
    out = _table(["model", "why re-checked", *metrics], body, left=2)
    half = 100 * stats.half_width(_num_points(recheck))
    out += [
        "",
        f"_Accuracy (%), each within a 95% interval of at most +-{half:.1f} points. "
        f"{attack_text(settings, _points(settings))}_",
        "",
    ]
    return out


def _shift_section(workdir: str) -> list[str]:
    folder = os.path.join(workdir, stages.SHIFT_DIR)
    result = workdir_lib.read_json(workdir_lib.path(folder, shift_run.SHIFT_FILE))
    arrays = workdir_lib.read_arrays(workdir_lib.path(folder, shift_run.ARRAYS_FILE))
    text = shift_report.markdown(result, arrays)
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = "##" + line  # one section of this report
        out.append(line.replace("](weights.png)", f"]({stages.SHIFT_DIR}/weights.png)"))
    return out[2:]  # its title is this section's


def _stages_section(record: dict[str, Any]) -> list[str]:
    body = []
    for name, entry in sorted(record["stages"].items(), key=lambda e: e[1]["finished"]):
        command = shlex.join(["python", *entry["command"]])
        body.append([name, entry["title"], f"`{command}`", f"{entry['seconds']:.0f}"])
    out = _table(["stage", "what", "command", "seconds"], body, left=3)
    together = "; ".join(
        " and ".join(", ".join(names).rsplit(", ", 1)) + " ran side by side"
        for names in stages.ran_together(record)
        if len(names) > 1
    )
    out += [
        "",
        f"{stages.wall_seconds(record) / 60:.1f} minutes of wall-clock time in all on "
        f"{record['machine']}" + (f"; {together}" if together else "") + ". Each stage "
        "is timed from its group's start to its own end, in the session that finished it "
        "(an interrupted stage's earlier sessions are not counted).",
    ]
    return out


def _training_line(label: str, run: str) -> str:
    c = workdir_lib.read_json(workdir_lib.path(run, "config.json"))
    steps = c["max_steps"] or c["num_epochs"] * (FMNIST_TRAIN // c["batch_size"])
    t, attack = c["threat"], c["attack"]
    how = f"{t['norm']} {t['eps']:g}, {attack['name'].upper()} {attack['steps']} steps"
    return (
        f"  - {label}: {steps} steps of {c['batch_size']} images "
        f"({steps * c['batch_size'] / FMNIST_TRAIN:.2f} epoch), "
        f"{'nominal training' if t['norm'] == 'none' else how}, "
        f"lr {c['optimizer']['lr']:g}"
    )


def _cuts(record: dict[str, Any], sweep: dict, recheck: dict, shift: dict, workdir: str):
    config = ml_collections.ConfigDict(record["config"])
    s, r = sweep["settings"], recheck["settings"]
    out = [
        "- Training, much shorter than the shipped configs (the Linf parent: 10 epochs of "
        "APGD-CE 10) and the fine-tuning reference (1 epoch at lr 0.01; a short fine-tune "
        "needs the larger lr to move):"
    ]
    out += [_training_line(lab, run) for lab, run in stages.run_dirs(config, workdir).items()]
    usual = [str(tm) for tm in data.default_threats(s["dataset"])]
    if list(config.threats) != usual:
        out.append(
            f"- Threat models {', '.join(config.threats)}, not the registry's usual "
            f"radii for {s['dataset']} ({', '.join(usual)}): `configs/demo.py` says "
            "why."
        )
    out += [
        f"- Robust accuracy on {s['n_examples']} test points, not {PAPER_POINTS}: a 95% "
        f"interval of up to +-{100 * stats.half_width(s['n_examples']):.1f} points "
        "(Clopper-Pearson; grid.json holds each accuracy's). Soups and ingredients share the "
        "points, so the verdicts above test a gap on the points only one of the two gets "
        "right (exact McNemar).",
        f"- The sweep under a cheap attack (AutoAttack `{s['version']}`, budgets cut: the line "
        f"under its tables); only the ingredients and the selected soups under AutoAttack "
        f"`{r['version']}`, its budgets {'cut' if r['overrides'] else 'in full'} (the line "
        "under the first table; the reference's standard: APGD 100 iterations, 5 restarts "
        "for L1, 9 targets (5 for L1), FAB-T 9 targets x 100 iterations, Square 5000 "
        "queries).",
        f"- Grids: the lines in steps of {config.sweep.line_step}, the simplex in steps of "
        f"{config.sweep.simplex_step}, the shift grid in steps of {config.shift.grid_step} "
        f"(the paper: {PAPER_GRID_STEP}).",
        f"- Shift soups chosen on {shift['settings']['n_adaptation']} adaptation images a shift "
        f"(the paper: {PAPER_ADAPTATION}), learned soups with "
        f"{shift['settings']['learned']['steps']} Adam steps; the shift soups' own robustness "
        "is not measured here (`python -m seasoning.shift` does, with `robust.enabled`).",
    ]
    return out


def markdown(workdir: str) -> str:
    """The whole report of a finished demo in `workdir` (see module doc)."""
    read = lambda *parts: workdir_lib.read_json(workdir_lib.path(workdir, *parts))  # noqa: E731
    record = read(stages.STAGES_FILE)
    sweep = read(stages.SWEEP_DIR, "grid.json")
    chosen = read(stages.SELECTION_FILE)["soups"]
    recheck = read(stages.RECHECK_DIR, "grid.json")
    shift = read(stages.SHIFT_DIR, shift_run.SHIFT_FILE)
    labels, metrics = recheck["settings"]["labels"], recheck["settings"]["metrics"]
    out = ["# Robust model soups on Fashion-MNIST: the demo", ""]
    out.append(
        "One Linf-robust small CNN, fine-tuned briefly to L2, L1 and nominal training; soups "
        "`theta = sum_i w_i theta_i` of these four ingredients, swept under a cheap attack; the "
        "ingredients and the best soups re-checked under a stronger one on the same points; "
        "then soups chosen for distribution shifts on a few labelled images of each shift. "
        f"Made by `make demo` in {stages.wall_seconds(record) / 60:.1f} minutes on "
        f"{record['machine']}."
    )
    out += ["", "## Ingredients and selected soups", ""]
    out += _headline(recheck, chosen)
    out += ["Where a soup beat every ingredient (this table's attack):", ""]
    out += verdicts(recheck["rows"], labels, metrics, _num_points(recheck)) + [""]
    out += ["## Soups that trade one robustness for another", ""]
    out += _line_section(sweep, "linf_l2", workdir)
    out += _line_section(sweep, "linf_nominal", workdir)
    out += _simplex_section(sweep, "linf_l2_l1", workdir)
    out += _front_section(sweep, workdir)
    out += ["## Soups for distribution shifts", ""]
    out += _shift_section(workdir) + [""]
    out += ["## What was run", ""]
    out += _stages_section(record) + [""]
    out += ["What was cut relative to the paper's recipe, to fit minutes on a CPU:", ""]
    out += _cuts(record, sweep, recheck, shift, workdir) + [""]
    return "\n".join(out)


def write(workdir: str) -> str:
    """Writes report.md into `workdir`; returns its path."""
    path = workdir_lib.path(workdir, REPORT_FILE)
    workdir_lib.write_atomic(path, markdown(workdir))
    return str(path)
