"""Two real processes (jax.distributed over localhost, CPU collectives, 2 CPU devices each)
against one process with 4 devices (this one, on its 4 CPU devices), on the same global
batches: `seasoning.evaluate`, `seasoning.soup` and `seasoning.shift` give the same counts.

The tolerance is zero points: both layouts run the same SPMD programs on a 4-device mesh with the
same global batches and keys, and every per-point decision (attack steps, predictions) is made
per example, so the counts must agree exactly (measured: identical; also against the 1-process
CLI with --cpu_devices=4). Only process 0 writes.
"""

import json
import os

import jobs
import pytest

from seasoning import config_lib, evaluate, threat
from seasoning.shift import run as run_lib
from seasoning.soup import sweep

pytestmark = pytest.mark.slow  # two-process jobs

CONFIGS = os.path.join(jobs.ROOT, "configs")


@pytest.fixture(scope="module")
def runs(family):
    for child in ("l2", "l1", "nominal"):  # and their parent
        family[f"fmnist_cnn_linf_to_{child}"]
    return family.root


def test_evaluate_on_two_processes_equals_one_process(runs, tmp_path):
    run = os.path.join(runs, "fmnist_cnn_linf")
    # 42 points in global batches of 4, one point a device: a padded last batch, survivor
    # batches padded alike, rows split over 2 processes. (One batch shape: one compile per
    # attack keeps the test short.)
    settings = dict(version="fast", n_iter=10, n_target_classes=1, n_examples=42, batch_size=4)
    output = str(tmp_path / "eval_2.json")
    flags = [f"--{k}={v}" for k, v in settings.items()]
    logs = jobs.run(
        "seasoning.evaluate",
        [f"--workdir={run}", "--threat=l2:2", *flags, f"--output={output}"],
        str(tmp_path),
    )
    assert "Wrote" in logs[0] and "Wrote" not in logs[1]  # only process 0 writes
    with open(output) as f:
        two = json.load(f)
    one = evaluate.evaluate_run(
        run,
        [threat.parse("l2:2")],
        output=str(tmp_path / "eval_1.json"),
        mesh=jobs.one_process_mesh(),
        **settings,
    )
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["jax"]["devices"] == two["jax"]["devices"] == 4
    assert one["n_examples"] == two["n_examples"] == 42
    assert two["clean_count"] == one["clean_count"]
    assert (
        two["threat_models"]["l2:2"]["robust_count"] == one["threat_models"]["l2:2"]["robust_count"]
    )
    assert two["threat_models"]["l2:2"]["after"] == one["threat_models"]["l2:2"]["after"]
    assert 0 <= two["threat_models"]["l2:2"]["robust_accuracy"] <= two["clean_accuracy"] <= 1


def test_soup_grid_sweep_on_two_processes_equals_one_process(runs, tmp_path):
    """The sweep that reported 129% accuracy on two processes (each fed the whole batch).
    (Mode one_by_one runs the evaluator of `seasoning.evaluate`, tested above.)"""
    spec = os.path.join(CONFIGS, f"soup_fmnist.py:soup=l2,runs={runs},runlocal")
    overrides = [
        "evaluation=batched",
        "eval.n_examples=44",
        "eval.batch_size=24",
        "chunk=3",
        "eval.threats=('linf:0.1',)",
        "front=()",
    ]
    workdir = str(tmp_path / "soup_2")
    jobs.run(
        "seasoning.soup",
        [f"--config={spec}", *(f"--config.{o}" for o in overrides), f"--workdir={workdir}"],
        str(tmp_path),
    )
    with open(os.path.join(workdir, "grid.json")) as f:
        two = json.load(f)
    one = sweep.run_sweep(
        config_lib.load_config(spec, overrides),
        str(tmp_path / "soup_1"),
        mesh=jobs.one_process_mesh(),
    )
    assert two["complete"] and (one["processes"], two["processes"]) == (1, 2)
    assert two["settings"]["evaluation"] == one["settings"]["evaluation"] == "batched"
    assert one["jax"]["devices"] == two["jax"]["devices"] == 4
    assert len(one["rows"]) == 3
    for row in two["rows"]:
        for name in two["settings"]["metrics"]:
            assert 0.0 <= row[name] <= 1.0, (name, row[name])
            low, high = row["intervals"][name]
            assert low <= row[name] <= high
    assert two["rows"] == one["rows"]


def test_shift_on_two_processes_equals_one_process(runs, tmp_path):
    """Grid and learned selection, and every row's unseen accuracy, on two processes: the same
    as one process with the same 4 devices (the learned soup's batches are sharded too)."""
    spec = os.path.join(CONFIGS, f"shift_fmnist.py:runlocal,runs={runs}")
    overrides = [
        "shifts=('fashion_mnist_rotated',)",
        "columns=('rotated',)",
        "methods=('grid','learned')",
        "robust.enabled=False",
    ]
    workdir = str(tmp_path / "shift_2")
    logs = jobs.run(
        "seasoning.shift",
        [f"--config={spec}", *(f"--config.{o}" for o in overrides), f"--workdir={workdir}"],
        str(tmp_path),
    )
    assert "Wrote" in logs[0] and "Wrote" not in logs[1]
    with open(os.path.join(workdir, run_lib.SHIFT_FILE)) as f:
        two = json.load(f)
    one = run_lib.run_shift(
        config_lib.load_config(spec, overrides),
        str(tmp_path / "shift_1"),
        mesh=jobs.one_process_mesh(),
    )
    assert two["complete"] and (one["processes"], two["processes"]) == (1, 2)
    assert two["grid"]["adaptation"] == one["grid"]["adaptation"]
    assert two["selection"]["grid"] == one["selection"]["grid"]
    learned_one, learned_two = one["selection"]["learned"], two["selection"]["learned"]
    assert learned_two["single"] == pytest.approx(learned_one["single"], abs=1e-6)
    assert [r["unseen"] for r in two["rows"]] == [r["unseen"] for r in one["rows"]]
