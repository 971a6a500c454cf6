"""The demo's stages: the commands it runs, the record of the finished ones, and the ETA.

Each stage but the report is one command of the shipped drivers (`seasoning.train`,
`seasoning.soup`, `seasoning.shift`) with the shipped configs and the demo config's sizes, run
as a child process, so that what the demo does is what a user can type. `stages.json` in the
demo's workdir records every finished stage with its command and seconds; a stage whose
recorded command is the one about to run is not run again. An interrupted stage is simply run
again: each driver resumes its own work (training from its last checkpoint, a sweep or a shift
run with `--resume`).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from seasoning import deprecation, errors, soup
from seasoning import workdir as workdir_lib
from seasoning.demo import selection

STAGES_FILE, SELECTION_FILE = "stages.json", "selection.json"
# The parent's children: the suffix of their run and config names, and their label.
CHILDREN = (("_to_l2", "l2"), ("_to_l1", "l1"), ("_to_nominal", "nominal"))
LABELS = ("linf", "l2", "l1", "nominal")  # every ingredient, in the order of soup weights
# The soups the sweep evaluates: family -> the ingredients it mixes (the paper's figures: the
# Linf/L2 and Linf/nominal lines, the Linf/L2/L1 simplex).
FAMILIES = {
    "linf_l2": ("linf", "l2"),
    "linf_nominal": ("linf", "nominal"),
    "linf_l2_l1": ("linf", "l2", "l1"),
}
SWEEP_DIR, RECHECK_DIR, SHIFT_DIR = "sweep", "recheck", "shift"
# The re-check and the shift soups run side by side: the shift run only needs the
# ingredients, and the re-check leaves part of the CPU idle while it compiles.
LAST_GROUP = "last"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the demo.

    Attributes:
      name: its key in stages.json and in `expected_seconds`.
      title: what it does, for the progress line and the report.
      argv: the command, `python -m ...` and its arguments (`python` spelt as `sys.executable`
        when run).
      expected_seconds: how long it takes on the machine the config was measured on (for
        stages of a group: the whole group's time, counted once).
      group: stages with the same group run side by side (the fine-tunes, which only need
        the parent; the re-check and the shift soups); "" runs alone.
    """

    name: str
    title: str
    argv: tuple[str, ...]
    expected_seconds: float
    group: str = ""


def parent_name(config: ml_collections.ConfigDict) -> str:
    """The root ingredient's run name: its config file's stem, e.g. `fmnist_cnn_linf`."""
    return os.path.splitext(os.path.basename(config.parent_config))[0]


def radii(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Norm -> its radius as written in config `threats` (e.g. {"linf": "0.1", ...})."""
    return dict(spec.replace(" ", "").split(":") for spec in config.threats)


def run_dirs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """Ingredient label -> its run directory under `workdir`."""
    parent = os.path.join(workdir, parent_name(config))
    return {"linf": parent, **{label: parent + suffix for suffix, label in CHILDREN}}


def _literal(strings: Sequence[str]) -> str:
    """A tuple of strings as a `--config.key=` value: `("a","b",)`."""
    return "(" + "".join(f'"{x}",' for x in strings) + ")"


def _attack_flags(config: ml_collections.ConfigDict, attack: ml_collections.ConfigDict):
    flags = [
        f"--config.eval.n_examples={config.points.n_examples}",
        f"--config.eval.batch_size={config.points.batch_size}",
        f"--config.eval.threats={_literal(config.threats)}",
        f"--config.front={_literal(config.threats[:2])}",
    ]
    # A budget of 0 is the soup config's default already (the version's).
    return flags + [
        f"--config.eval.{key}={value}" for key, value in attack.items() if key == "version" or value
    ]


# Demo config keys of `parent` / `children` -> the training config keys they set (0: unset).
_TRAIN_KEYS = {"max_steps": "max_steps", "attack_steps": "attack.steps", "lr": "optimizer.lr"}


def _train_overrides(section: ml_collections.ConfigDict, attacked: bool = True) -> list[str]:
    """The `--config.` flags of a demo config's `parent` / `children` section (no attack
    steps for nominal training, which has no attack)."""
    return [
        f"--config.{_TRAIN_KEYS[key]}={value:g}"
        for key, value in section.items()
        if value and (attacked or key != "attack_steps")
    ]


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[Stage]:
    """Every stage: training, fine-tuning, the sweep, the re-check and the shift soups.

    The re-check's soups are known only after the sweep: here it re-checks the ingredients
    alone, a placeholder for its expected time that `recheck_stage` replaces."""
    runs = run_dirs(config, workdir)
    local = ",runlocal" if config.runlocal else ""
    expected = config.expected_seconds
    eps = radii(config)
    parent_argv = [
        "-m",
        "seasoning.train",
        f"--config={config.parent_config}:eps={eps['linf']}{local}",
        f"--workdir={runs['linf']}",
    ]
    stages = [
        Stage(
            "parent",
            "Linf adversarial training of the root ingredient",
            (*parent_argv, *_train_overrides(config.parent)),
            expected.parent,
        )
    ]
    stem = os.path.splitext(config.parent_config)[0]
    for suffix, label in CHILDREN:
        radius = f",eps={eps[label]}" if label in eps else ""
        argv = [
            "-m",
            "seasoning.train",
            f"--config={stem}{suffix}.py:parent={runs['linf']}{radius}{local}",
            f"--workdir={runs[label]}",
            *_train_overrides(config.children, attacked=label != "nominal"),
        ]
        what = "nominal training" if label == "nominal" else label.upper()
        stages.append(
            Stage(label, f"fine-tuning to {what}", tuple(argv), expected.children, group="children")
        )
    stages.append(
        soup_stage(
            config,
            workdir,
            "sweep",
            "sweep of the soups, cheap attack",
            SWEEP_DIR,
            sweep_weights(config),
            config.sweep.attack,
            config.sweep.evaluation,
        )
    )
    placeholder = recheck_stage(config, workdir, selection.one_hot_rows(LABELS))
    return stages + [placeholder, shift_stage(config, workdir)]


def sweep_weights(config: ml_collections.ConfigDict) -> list[list[float]]:
    """Every soup of `FAMILIES` once, weights over `LABELS`: the lines in steps of
    `sweep.line_step`, the simplex in steps of `sweep.simplex_step`."""
    rows: list[list[float]] = []
    for members in FAMILIES.values():
        step = config.sweep.line_step if len(members) == 2 else config.sweep.simplex_step
        for w in soup.simplex_grid(len(members), step):
            row = [0.0] * len(LABELS)
            for value, label in zip(w, members, strict=True):
                row[LABELS.index(label)] = round(float(value), 6)
            if row not in rows:
                rows.append(row)
    return rows


def family_rows(rows: Sequence[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """The rows of a grid.json (weights over `LABELS`) that mix only `family`'s ingredients."""
    inside = [LABELS.index(label) for label in FAMILIES[family]]
    return [r for r in rows if all(w == 0 for i, w in enumerate(r["weights"]) if i not in inside)]


def soup_stage(
    config: ml_collections.ConfigDict,
    workdir: str,
    name: str,
    title: str,
    folder: str,
    weights: Sequence[Sequence[float]],
    attack: ml_collections.ConfigDict,
    evaluation: str,
    group: str = "",
) -> Stage:
    """`seasoning.soup` on the four ingredients, soups `weights` over `LABELS`."""
    rows = "(" + "".join("(" + ",".join(f"{w:.6g}" for w in r) + ")," for r in weights) + ")"
    argv = (
        "-m",
        "seasoning.soup",
        f"--config={config.soup_config}:soup=four,runs={workdir}",
        f"--workdir={os.path.join(workdir, folder)}",
        "--resume",
        f"--config.evaluation={evaluation}",
        "--config.grid.kind=list",
        f"--config.grid.weights={rows}",
        *_attack_flags(config, attack),
    )
    return Stage(name, title, argv, config.expected_seconds[name], group)


def recheck_stage(
    config: ml_collections.ConfigDict, workdir: str, weights: Sequence[Sequence[float]]
) -> Stage:
    """The re-check of the ingredients and selected soups, `weights` over `LABELS`, each soup
    attacked as `seasoning.evaluate` attacks a model (evaluation one_by_one)."""
    return soup_stage(
        config,
        workdir,
        "recheck",
        "re-check of the ingredients and selected soups, stronger attack",
        RECHECK_DIR,
        weights,
        config.recheck.attack,
        "one_by_one",
        LAST_GROUP,
    )


def shift_stage(config: ml_collections.ConfigDict, workdir: str) -> Stage:
    """Soups for distribution shifts with the four ingredients."""
    s = config.shift
    argv = (
        "-m",
        "seasoning.shift",
        f"--config={config.shift_config}:runs={workdir},step={s.grid_step}",
        f"--workdir={os.path.join(workdir, SHIFT_DIR)}",
        "--resume",
        f"--config.n_adaptation={s.n_adaptation}",
        f"--config.n_unseen={s.n_unseen}",
        f"--config.learned.steps={s.learned_steps}",
        f"--config.methods={_literal(s.methods)}",
        "--config.robust.enabled=False",
    )
    return Stage(
        "shift",
        "shift soups: selection on adaptation images, unseen images",
        argv,
        config.expected_seconds.shift,
        LAST_GROUP,
    )


def command_line(stage: Stage) -> str:
    """The stage's command as a user types it in a shell."""
    return shlex.join(["python", *stage.argv])


class Record:
    """stages.json: the finished stages (command, seconds, when), saved atomically."""

    def __init__(self, workdir: str):
        self.path = workdir_lib.path(workdir, STAGES_FILE)
        try:
            self.data: dict[str, Any] = workdir_lib.read_json(self.path)
        except FileNotFoundError:
            self.data = {"stages": {}}

    def finished(self, stage: Stage) -> dict[str, Any] | None:
        """The record of `stage` if it finished with this very command, else None."""
        entry = self.data["stages"].get(stage.name)
        return entry if entry and entry["command"] == list(stage.argv) else None

    def finish(self, stage: Stage, seconds: float) -> None:
        self.data["stages"][stage.name] = {
            "title": stage.title,
            "group": stage.group,
            "command": list(stage.argv),
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.save()

    def save(self) -> None:
        workdir_lib.write_json(self.path, self.data)


def stage_groups(plan: Sequence[Stage]) -> list[list[Stage]]:
    """The plan cut into what runs at once: a group's stages together, others alone."""
    out: list[list[Stage]] = []
    for stage in plan:
        if stage.group and out and out[-1][0].group == stage.group:
            out[-1].append(stage)
        else:
            out.append([stage])
    return out


def ran_together(record: dict[str, Any]) -> list[list[str]]:
    """The names of the finished stages of a stages.json, by what ran at once: a group's
    stages together, others alone."""
    out: dict[tuple[str, str], list[str]] = {}
    for name, entry in record["stages"].items():
        group = entry.get("group")
        out.setdefault(("group", group) if group else ("alone", name), []).append(name)
    return list(out.values())


def wall_seconds(record: dict[str, Any]) -> float:
    """The demo's wall-clock seconds from a stages.json: a group's side-by-side stages count
    once (the longest)."""
    return sum(
        max(record["stages"][name]["seconds"] for name in names) for names in ran_together(record)
    )


def eta_seconds(plan: Sequence[Sequence[Stage]], record: Record, next_index: int) -> float:
    """Seconds left from group `next_index` of `plan` (`stage_groups`) on: the expected times,
    scaled by how the groups finished before compared with theirs."""

    def expected(group: Sequence[Stage]) -> float:
        return max(s.expected_seconds for s in group)

    done = [
        (max(record.data["stages"][s.name]["seconds"] for s in group), expected(group))
        for group in plan[:next_index]
        if all(record.finished(s) for s in group)
    ]
    ratio = sum(a for a, _ in done) / sum(e for _, e in done) if done else 1.0
    return ratio * sum(expected(group) for group in plan[next_index:])


def check_clearable(workdir: str) -> None:
    """Raises UserError unless `workdir` is absent, empty or a demo workdir (holds
    stages.json): `--fresh` deletes it, and must never delete anything else."""
    path = workdir_lib.path(workdir)
    if path.exists() and any(path.iterdir()) and not (path / STAGES_FILE).exists():
        raise errors.UserError(
            f"--fresh would delete {workdir}, which holds files but no {STAGES_FILE}: it is not "
            "a demo workdir. Choose another --workdir or remove it yourself."
        )


# Old name, removed in the next release (CHANGELOG.md).
batches = deprecation.renamed(stage_groups, "seasoning.demo.stages.batches")
