"""Two real processes (jax.distributed over localhost, CPU collectives, 2 CPU devices each)
against one process with 4 devices, on the same global batches: `seasoning.evaluate` and
`seasoning.soup` give the same counts.

The tolerance is zero points: both layouts run the same SPMD programs on a 4-device mesh with the
same global batches and keys, and every per-point decision (attack steps, predictions) is made
per example, so the counts must agree exactly (measured: identical). Only process 0 writes.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(module: str, args: list[str], processes: int) -> list[subprocess.CompletedProcess]:
    """Runs `python -m module args` as `processes` processes of one job; waits for all."""
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    base.pop("JAX_NUM_CPU_DEVICES", None)
    cpu = 4 // processes
    port = _free_port()
    procs = []
    for i in range(processes):
        env = dict(base)
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))  # fmt: skip
        argv = [sys.executable, "-m", module, *args, f"--cpu_devices={cpu}"]
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    out = []
    try:
        for p in procs:
            stdout, _ = p.communicate(timeout=TIMEOUT)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout))
    finally:
        for p in procs:
            p.kill()
    for i, done in enumerate(out):
        assert done.returncode == 0, f"process {i}:\n{done.stdout[-4000:]}"
    return out


@pytest.fixture(scope="module")
def runs(family):
    family["fmnist_cnn_linf_to_l2"]  # and its parent
    return family.root


def test_evaluate_on_two_processes_equals_one_process(runs, tmp_path):
    run = os.path.join(runs, "fmnist_cnn_linf")
    # 42 points in global batches of 4, one point a device: a padded last batch, survivor
    # batches padded alike, rows split over 2 processes. (One batch shape: one compile per
    # attack keeps the test short.)
    common = [f"--workdir={run}", "--version=fast", "--n_iter=10", "--n_target_classes=1",
              "--n_examples=42", "--batch_size=4", "--threat=l2:2"]  # fmt: skip
    results = {}
    for processes in (1, 2):
        output = str(tmp_path / f"eval_{processes}.json")
        logs = _run("seasoning.evaluate", [*common, f"--output={output}"], processes)
        with open(output) as f:
            results[processes] = json.load(f)
        assert "Wrote" in logs[0].stdout
        assert ("Wrote" in logs[-1].stdout) == (processes == 1)  # only process 0 writes
    one, two = results[1], results[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["jax"]["devices"] == two["jax"]["devices"] == 4
    assert one["n_examples"] == two["n_examples"] == 42
    assert two["clean_count"] == one["clean_count"]
    for name in ("l2:2",):
        assert (
            two["threat_models"][name]["robust_count"] == one["threat_models"][name]["robust_count"]
        ), name
        assert two["threat_models"][name]["after"] == one["threat_models"][name]["after"], name
        assert 0 <= two["threat_models"][name]["robust_accuracy"] <= two["clean_accuracy"] <= 1


def test_soup_grid_sweep_on_two_processes_equals_one_process(runs, tmp_path):
    """The sweep that reported 129% accuracy on two processes (each fed the whole batch).
    (Mode per_soup runs the evaluator of `seasoning.evaluate`, tested above.)"""
    mode = "grid"
    spec = os.path.join(CONFIGS, f"soup_fmnist.py:soup=l2,runs={runs},runlocal")
    args = [f"--config={spec}", f"--config.evaluation={mode}", "--config.eval.n_examples=44",
            "--config.eval.batch_size=24", "--config.chunk=3",
            "--config.eval.threats=('linf:0.1',)", "--config.front=()"]  # fmt: skip
    rows = {}
    for processes in (1, 2):
        workdir = str(tmp_path / f"soup_{processes}")
        _run("seasoning.soup", [*args, f"--workdir={workdir}"], processes)
        with open(os.path.join(workdir, "grid.json")) as f:
            result = json.load(f)
        assert result["complete"] and result["processes"] == processes
        assert result["settings"]["evaluation"] == mode
        rows[processes] = result["rows"]
    assert len(rows[1]) == 3
    for row in rows[2]:
        for name, value in row.items():
            if name != "weights":
                assert 0.0 <= value <= 1.0, (name, value)
    assert rows[2] == rows[1]
