"""benchmarks/gpu.sh, run here with a stand-in for Python: the GPU run is one prepared call with
a fixed device-time budget, so the script must run the steps in the order asked, stop inside
its BUDGET, keep what a step printed before it was cut short, and refuse a misspelt step
before running anything."""

import os
import pathlib
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _stand_in(tmp_path, sleep):
    """An executable that prints one JSON row naming its arguments, then sleeps."""
    path = tmp_path / "py"
    path.write_text(f'#!/bin/sh\necho "{{\\"args\\": \\"$*\\"}}"\nexec sleep {sleep}\n')
    path.chmod(0o755)
    return path


def _run(tmp_path, sleep, **settings):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PY": str(_stand_in(tmp_path, sleep))}
    env.update({k: str(v) for k, v in settings.items()})
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return done, time.monotonic() - start


def _started(log):
    return [
        line.split()[1] for line in log.splitlines() if line.startswith("== ") and "limit" in line
    ]


def test_a_plan_runs_its_steps_in_the_order_it_names(tmp_path):
    done, _ = _run(tmp_path, 0, STEPS="issue27 tests")
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "out" / "log.txt").read_text()
    assert _started(log) == [
        "versions",
        "scale",
        "autoattack_cifar",
        "vit_fused",
        "vit_b256",
        "vit_b256_remat",
        "vit_b512_remat",
        "apgd_cifar",
        "tests",
    ]
    rows = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert any("benchmarks/autoattack.py --models=wrn-28-10,preact-resnet-18" in r for r in rows)
    assert "not run for lack of BUDGET" not in log


def test_the_budget_cuts_a_step_short_and_skips_the_rest(tmp_path):
    # Unbounded, these two steps would sleep 60 s; the budget ends the run after ~2 s.
    done, seconds = _run(tmp_path, 30, STEPS="scale apgd_cifar", BUDGET=4, MIN_STEP=1)
    assert done.returncode == 0, done.stderr
    assert seconds < 25, seconds
    log = (tmp_path / "out" / "log.txt").read_text()
    assert _started(log) == ["scale"]
    assert "== scale: exit 124" in log  # timeout's status: the step was cut at the budget
    assert "== apgd_cifar: skipped" in log
    assert 'not run for lack of BUDGET: STEPS="apgd_cifar" in another call' in log
    # The row the step printed before it was cut short is kept.
    rows = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(rows) == 1 and "benchmarks/scale.py" in rows[0]


def test_a_misspelt_step_or_budget_is_refused_before_anything_runs(tmp_path):
    done, _ = _run(tmp_path, 0, STEPS="scale vit_fsued")
    assert done.returncode == 2
    assert "'vit_fsued'" in done.stderr and "vit_fused" in done.stderr
    assert not (tmp_path / "out").exists()
    done, _ = _run(tmp_path, 0, STEPS="scale", BUDGET="8m")
    assert done.returncode == 2 and "BUDGET=8m" in done.stderr
    assert not (tmp_path / "out").exists()
