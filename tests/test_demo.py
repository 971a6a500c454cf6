"""The demo (`make demo`): the pipeline end to end at runlocal sizes, its report checked against
the JSON files it was made from, a second run that reuses every stage; and its parts."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from seasoning import config_lib, errors, stats
from seasoning.demo import config as demo_config
from seasoning.demo import report, selection, stages
from seasoning.soup import config as soup_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.py")


def _demo(workdir: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "seasoning.demo",
            f"--config={DEMO}:runlocal",
            f"--workdir={workdir}",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _tables(markdown: str) -> dict[str, list[list[str]]]:
    """Heading -> the rows (cells) of the first table under it."""
    out, heading, rows = {}, None, None
    for line in markdown.splitlines() + [""]:
        if line.startswith("#"):
            heading, rows = line.lstrip("# ").strip(), None
        elif line.startswith("|") and heading is not None and heading not in out:
            rows = [] if rows is None else rows
            if not set(line.replace("|", "").strip()) <= set("-: "):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows is not None:
            out[heading], rows = rows, None
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo") / "runs")
    first = _demo(workdir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    return workdir, first


def _read(workdir: str, *parts: str):
    with open(os.path.join(workdir, *parts)) as f:
        return json.load(f)


@pytest.mark.slow
def test_demo_writes_every_artefact_and_the_report_links_existing_plots(demo):
    workdir, first = demo
    assert f"The report: {workdir}/report.md" in first.stdout
    record = _read(workdir, stages.STAGES_FILE)
    assert set(record["stages"]) == {"parent", "l2", "l1", "nominal", "sweep", "recheck", "shift"}
    for run in stages.run_dirs(config_lib.load_config(f"{DEMO}:runlocal"), workdir).values():
        assert os.listdir(os.path.join(run, "checkpoints")), run
        assert _read(run, "config.json")["dataset"]["name"] == "fashion_mnist"
    sweep = _read(workdir, stages.SWEEP_DIR, "grid.json")
    recheck = _read(workdir, stages.RECHECK_DIR, "grid.json")
    chosen = _read(workdir, stages.SELECTION_FILE)["soups"]
    assert sweep["complete"] and recheck["complete"]
    assert len(recheck["rows"]) == 4 + len(chosen)
    # The re-check ran the four attacks of standard on the sweep's points.
    assert recheck["settings"]["version"] == "standard"
    assert recheck["settings"]["n_examples"] == sweep["settings"]["n_examples"]
    shift = _read(workdir, stages.SHIFT_DIR, "shift.json")
    assert set(shift["settings"]["methods"]) == {"grid", "learned"}
    with np.load(
        os.path.join(workdir, stages.SHIFT_DIR, "predictions.npz"), allow_pickle=False
    ) as arrays:
        assert any(k.startswith("unseen/") for k in arrays.files)
    text = open(os.path.join(workdir, report.REPORT_FILE)).read()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 7  # two lines, four simplex maps, the front, the shift weights
    for link in links:
        assert os.path.getsize(os.path.join(workdir, link)) > 1000, link
    for stage in record["stages"].values():  # "what was run" names each command
        assert " ".join(stage["command"][:2]) in text


@pytest.mark.slow
def test_every_number_of_the_report_is_the_one_in_the_json_files(demo):
    workdir, _ = demo
    text = open(os.path.join(workdir, report.REPORT_FILE)).read()
    tables = _tables(text)
    recheck = _read(workdir, stages.RECHECK_DIR, "grid.json")
    labels, metrics = recheck["settings"]["labels"], recheck["settings"]["metrics"]
    headline = tables["Ingredients and selected soups"]
    assert headline[0][2:] == metrics
    assert len(headline) - 1 == len(recheck["rows"])
    for cells, row in zip(headline[1:], recheck["rows"], strict=True):
        assert cells[0] == report.soup_name(row["weights"], labels)
        assert cells[2:] == [f"{100 * row[m]:.1f}" for m in metrics]
    sweep = _read(workdir, stages.SWEEP_DIR, "grid.json")
    for family in ("linf_l2", "linf_nominal"):
        a, b = stages.FAMILIES[family]
        rows = sorted(
            stages.family_rows(sweep["rows"], family), key=lambda r: r["weights"][labels.index(b)]
        )
        table = next(v for k, v in tables.items() if k.startswith(f"{a} <-> {b}:"))
        assert table[0][1:] == [f"{r['weights'][labels.index(b)]:.2f}" for r in rows]
        for cells in table[1:]:
            assert cells[1:] == [f"{100 * r[cells[0]]:.1f}" for r in rows], cells[0]
    simplex = next(v for k, v in tables.items() if "on the simplex" in k)
    rows = stages.family_rows(sweep["rows"], "linf_l2_l1")
    for cells in simplex[1:]:
        assert cells[2] == f"{100 * max(r[cells[0]] for r in rows):.1f}"
    shift = _read(workdir, stages.SHIFT_DIR, "shift.json")
    table = tables["Accuracy on unseen images (%)"]
    columns = [c["name"] for c in shift["columns"]]
    assert table[0][2:-1] == columns
    for cells, row in zip(table[1:], shift["rows"], strict=True):
        assert cells[0] == row["name"]
        assert cells[2:-1] == [f"{100 * row['unseen'][c]:.2f}" for c in columns]
    # Every verdict names the numbers of the re-check.
    for line in report.verdicts(recheck["rows"], labels, metrics, recheck["n_points"]):
        assert line in text


@pytest.mark.slow
def test_a_second_demo_reuses_every_stage(demo, capsys):
    """Run in this process (the first run tested the command): no stage runs again."""
    workdir, _ = demo
    before = _read(workdir, stages.STAGES_FILE)["stages"]
    report_before = open(os.path.join(workdir, report.REPORT_FILE)).read()
    demo_main = importlib.import_module("seasoning.demo.__main__")
    demo_main.run_demo(config_lib.load_config(f"{DEMO}:runlocal"), workdir)
    out = capsys.readouterr().out
    assert out.count("reused") == 7, out
    assert "$ python" not in out  # no stage command ran
    assert _read(workdir, stages.STAGES_FILE)["stages"] == before
    assert open(os.path.join(workdir, report.REPORT_FILE)).read() == report_before


def test_fresh_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    with pytest.raises(errors.UserError, match="not a demo workdir"):
        stages.check_clearable(str(tmp_path))
    assert (tmp_path / "precious.txt").exists()
    stages.check_clearable(str(tmp_path / "absent"))  # nothing to delete: fine
    (tmp_path / stages.STAGES_FILE).write_text("{}")
    stages.check_clearable(str(tmp_path))


def _row(weights, **metrics):
    return {"weights": weights, **metrics}


def test_selection_picks_the_best_union_soup_and_the_soups_that_beat_every_ingredient():
    labels = ["linf", "l2", "l1"]
    metrics = ["clean", "linf:0.1", "l2:0.8", "union"]
    rows = [
        _row([1, 0, 0], clean=0.80, **{"linf:0.1": 0.60, "l2:0.8": 0.50}, union=0.10),
        _row([0, 1, 0], clean=0.82, **{"linf:0.1": 0.50, "l2:0.8": 0.70}, union=0.20),
        _row([0, 0, 1], clean=0.79, **{"linf:0.1": 0.40, "l2:0.8": 0.60}, union=0.40),
        # beats every ingredient on L2 and has the best union
        _row([0.5, 0.5, 0], clean=0.81, **{"linf:0.1": 0.55, "l2:0.8": 0.72}, union=0.45),
        # the best soup on clean, but below the L2 child there: not picked for clean
        _row([0, 0.5, 0.5], clean=0.815, **{"linf:0.1": 0.45, "l2:0.8": 0.65}, union=0.30),
    ]
    sweep = {"settings": {"labels": labels, "metrics": metrics}, "rows": rows}
    chosen = selection.select(sweep, labels + ["nominal"])
    assert [c["weights"] for c in chosen] == [[0.5, 0.5, 0.0, 0.0]]
    assert chosen[0]["why"] == [
        "best union",
        "beats every ingredient on l2:0.8",
        "beats every ingredient on union",
    ]
    # No soup beats any ingredient anywhere: only the best union soup is re-checked.
    rows[3].update(**{"l2:0.8": 0.69}, union=0.35)
    chosen = selection.select(sweep, labels)
    assert [c["why"] for c in chosen] == [["best union"]]


def test_verdicts_say_where_a_soup_won_and_where_none_did():
    labels = ["linf", "l2"]
    rows = [
        _row([1.0, 0.0], a=0.5, b=0.3),
        _row([0.0, 1.0], a=0.4, b=0.6),
        _row([0.5, 0.5], a=0.45, b=0.65),
    ]
    lines = report.verdicts(rows, labels, ["a", "b"], 20)
    assert lines[0].startswith("- **a**: no soup beat every ingredient")
    assert "0.50 linf + 0.50 l2 45.0" not in lines[0] and "(linf) 50.0" in lines[0]
    assert lines[1] == (
        "- **b**: a soup beat every ingredient: 0.50 linf + 0.50 l2 65.0 vs 60.0 "
        "for the best ingredient (l2), +5.0 points (per-point flags not "
        "recorded: not tested against noise)."
    )


def test_a_verdict_tests_the_gap_on_the_points_only_one_model_gets_right():
    """+5 points on 20 shared points is one point that changed (within the noise); +30 points
    with no point lost is 6 against 0 (exact McNemar p = 2 / 2^6: not noise)."""
    ingredient = np.zeros(20, bool)
    ingredient[:12] = True
    close, far = ingredient.copy(), ingredient.copy()
    close[12] = True  # 13 of 20
    far[12:18] = True  # 18 of 20
    other = np.zeros(20, bool)

    def row(weights, flags):
        return {
            "weights": weights,
            "b": float(flags.mean()),
            "flags": {"b": stats.pack_flags(flags)},
        }

    for soup, expected in (
        (
            close,
            "1 point only the soup gets right, 0 only the ingredient "
            "(exact McNemar p = 1: within the noise of 20 points)",
        ),
        (
            far,
            "6 points only the soup gets right, 0 only the ingredient "
            "(exact McNemar p = 0.031: unlikely to be noise)",
        ),
    ):
        rows = [row([1.0, 0.0], ingredient), row([0.0, 1.0], other), row([0.5, 0.5], soup)]
        (line,) = report.verdicts(rows, ["linf", "l2"], ["b"], 20)
        assert line.endswith(f"points: {expected}."), line


def test_sweep_weights_hold_each_family_once():
    config = config_lib.load_config(DEMO)
    rows = stages.sweep_weights(config)
    assert len({tuple(r) for r in rows}) == len(rows)
    for row in rows:
        assert abs(sum(row) - 1) < 1e-9 and min(row) >= 0
    sweep = [{"weights": r} for r in rows]
    # The simplex's step (0.2) is a multiple of the lines' (0.1): its edge lies on the line.
    line = round(1 / config.sweep.line_step) + 1
    m = round(1 / config.sweep.simplex_step)
    assert len(stages.family_rows(sweep, "linf_l2")) == line
    assert len(stages.family_rows(sweep, "linf_nominal")) == line
    assert len(stages.family_rows(sweep, "linf_l2_l1")) == (m + 1) * (m + 2) // 2 + line - m - 1
    assert len(rows) == 2 * line - 1 + (m + 1) * (m + 2) // 2 - m - 1
    # The argv spells them as the soup config's list grid, and the config accepts it.
    stage = stages.soup_stage(
        config, "runs/x", "sweep", "t", "sweep", rows, config.sweep.attack, "batched"
    )
    weights = next(a for a in stage.argv if a.startswith("--config.grid.weights="))
    parsed = config_lib.load_config(
        "configs/soup_fmnist.py:soup=four", ["grid.kind=list", weights.removeprefix("--config.")]
    )
    assert np.allclose(parsed.grid.weights, rows)


def test_the_plan_runs_the_fine_tunes_and_then_the_recheck_and_shift_side_by_side():
    config = config_lib.load_config(DEMO)
    plan = stages.stage_groups(stages.plan(config, "runs/x"))
    names = [[s.name for s in batch] for batch in plan]
    assert names == [["parent"], ["l2", "l1", "nominal"], ["sweep"], ["recheck", "shift"]]
    steps = f"--config.attack.steps={config.children.attack_steps}"
    children = {s.name: s.argv for s in plan[1]}
    assert steps in children["l2"] and steps in children["l1"]
    assert not any(a.startswith("--config.attack.") for a in children["nominal"])
    assert f"--config.max_steps={config.children.max_steps}" in children["nominal"]


def test_eta_scales_the_expected_time_by_how_the_finished_stages_went(tmp_path):
    stage = lambda name, seconds, group="": stages.Stage(name, name, ("-m", name), seconds, group)
    plan = stages.stage_groups(
        [stage("a", 10.0), stage("b", 20.0, "g"), stage("c", 20.0, "g"), stage("d", 30.0)]
    )
    assert [[s.name for s in batch] for batch in plan] == [["a"], ["b", "c"], ["d"]]
    record = stages.Record(str(tmp_path))
    assert stages.eta_seconds(plan, record, 0) == 60.0  # a group counts once
    record.finish(plan[0][0], 20.0)  # twice as slow as expected
    assert stages.eta_seconds(plan, record, 1) == pytest.approx(100.0)


@pytest.mark.parametrize("variant", ["", ":runlocal"])
def test_the_demo_configs_validate(variant):
    demo_config.validate_demo_config(config_lib.load_config(DEMO + variant))


@pytest.mark.parametrize(
    "override, message",
    [
        ("points.n_examples=0", r"points.n_examples=0: expected an integer >= 1"),
        ("sweep.line_step=0.3", r"does not divide 1"),
        ("sweep.simplex_step=0", r"sweep.simplex_step=0.0: expected a number in \(0, 1\]"),
        ("recheck.attack.n_queries=-1", r"recheck.attack.n_queries=-1"),
        ("recheck.attack.version='plus'", r"'plus'.*standard"),
        ("shift.methods=('grid','best')", r"shift.methods 'best'"),
        ("parent_config='configs/nope.py'", r"no such config file"),
        ("expected_seconds.sweep=0", r"expected_seconds.sweep=0"),
        ("threats=('l2:2','linf:0.1','l1:10')", r"one linf, one l2 and one l1"),
        ("threats=('linf:-1','l2:2','l1:10')", r"threats.*-1"),
        ("children.lr=-0.1", r"children.lr=-0.1"),
        ("children.attack_steps=-1", r"children.attack_steps=-1: expected an integer >= 0"),
    ],
)
def test_bad_demo_config_values_are_named(override, message):
    config = config_lib.load_config(DEMO, [override])
    with pytest.raises(errors.UserError, match=message):
        demo_config.validate_demo_config(config)


@pytest.mark.parametrize(
    "weights, message",
    [
        ("()", r"one or more rows of 2 weights"),
        ("((1.0,0.0,0.0),)", r"one or more rows of 2 weights"),
        ("((0.7,0.7),)", r"sum to 1.4"),
        ("((1.5,-0.5),)", r"must be >= 0"),
    ],
)
def test_a_list_grid_is_checked(weights, message):
    config = config_lib.load_config(
        os.path.join(ROOT, "configs", "soup_fmnist.py"),
        ["grid.kind=list", f"grid.weights={weights}"],
    )
    with pytest.raises(errors.UserError, match=message):
        soup_config.validate_soup_config(config)


def test_trend_counts_the_steps_along_a_line():
    rows = [_row([1 - w, w], a=a) for w, a in [(0.0, 0.5), (0.5, 0.6), (1.0, 0.4), (0.25, 0.6)]]
    assert report.trend(rows, "a", 1) == "a falls from 50.0 to 40.0 (1 step down, 1 up, 1 level)"
    rows.append(_row([0.1, 0.9], a=0.45))
    assert "(2 steps down, 1 up, 1 level)" in report.trend(rows, "a", 1)


def test_fresh_clears_a_demo_whose_first_stage_failed(tmp_path, monkeypatch):
    """The failure message suggests --fresh; it must work before any stage has finished."""
    demo_main = importlib.import_module("seasoning.demo.__main__")
    failing = stages.Stage(
        name="parent",
        title="a stage that fails",
        argv=("-c", "import sys; sys.exit(3)"),
        expected_seconds=1.0,
        group="",
    )
    never = stages.Stage(name="after", title="never run", argv=(), expected_seconds=1.0, group="")
    monkeypatch.setattr(stages, "plan", lambda config, workdir: [failing, never])
    workdir = str(tmp_path / "demo")
    config = config_lib.load_config("configs/demo.py:runlocal")
    with pytest.raises(errors.UserError, match=r"'parent' failed \(exit status 3\).*--fresh"):
        demo_main.run_demo(config, workdir)
    assert _read(workdir, stages.STAGES_FILE)["stages"] == {}
    (tmp_path / "demo" / "partial.txt").write_text("left by the failed stage")
    with pytest.raises(errors.UserError, match="'parent' failed"):
        demo_main.run_demo(config, workdir, fresh=True)
    assert not (tmp_path / "demo" / "partial.txt").exists()  # --fresh deleted the workdir
