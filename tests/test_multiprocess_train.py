"""Training on two real processes (jax.distributed over localhost, 2 CPU devices each) against
one process with the same 4 devices, step by step, and a job that loses a process, then is
preempted.

Why step by step. Both layouts run the same SPMD program on the same global batches with the
same keys; they differ in how the cross-device sums (the gradient, BatchNorm's batch
statistics) are carried out (gloo between processes vs in-process), which changes float32
rounding. Over a free run that difference does not stay small: the attack's discrete decisions
(APGD's step-size halvings and best-point choices, per example) amplify it, so after 20 steps
of Linf training the parameters of two layouts differ by 0.1% to 22% of a leaf's largest value
and the eval accuracy by up to 4 points, whichever layouts are compared: one process with 1,
2, 4 or 8 devices among themselves as much as 1 vs 2 processes (measured, runlocal config:
64.0/63.9/63.9/59.6% for 1/2/4/8 devices in one process, 66.0% on 2 processes). A free run
cannot tell a bug from rounding. Replaying every step of the 2-process run on one process, from
the 2-process run's own checkpoint of the step before, can.

Tolerance: after each replayed step, every checkpointed leaf (params, BatchNorm statistics,
optimiser state) within 1e-3 of its largest absolute value. Measured on correct replays:
1e-7 to 4e-7 at most steps, 5.1e-5 at one step of 12 (a BatchNorm bias gradient; the same
with single-threaded XLA, so it is the cross-process sum, not thread scheduling). Measured on
the bugs this test exists for, replaying one step: the next step's key 0.1-0.42, the two hosts'
rows swapped 0.09-0.41, one host's rows fed twice (each host reading the whole batch's first
half) 0.34-1.4. The test replays one such bug too and requires it to fail the tolerance. Eval
accuracy of the same parameters: exactly equal (per-example predictions, integer counts).
"""

import json
import os
import re
import signal
import time

import jax
import jobs
import numpy as np
import pytest
from absl import flags

from seasoning import checkpoints, cli, config_lib, errors, lease, parallel, train

pytestmark = pytest.mark.slow  # two-process training

SPEC = os.path.join(jobs.ROOT, "configs", "fmnist_cnn_linf.py:runlocal")
# Every step checkpointed, so that every step can be replayed.
EVERY_STEP = ["checkpoint_every_steps=1", "keep_checkpoints=1000", "log_every_steps=1"]
TOLERANCE = 1e-3


def _flags(overrides: list[str], workdir: str) -> list[str]:
    return [f"--config={SPEC}", *(f"--config.{o}" for o in overrides), f"--workdir={workdir}"]


def _relative_difference(a, b) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12)))
    return worst


def _replay(overrides: list[str], workdir: str) -> tuple[train.Setup, float]:
    """Replays every step of the run in `workdir` on one process, 4 devices: from the run's own
    state at step k, one step on global batch k must give its state at step k + 1.

    Returns the setup and the largest relative difference over all steps and leaves.
    """
    setup = train.build(config_lib.load_config(SPEC, overrides), mesh=jobs.one_process_mesh())
    ckpt = checkpoints.Checkpointer(workdir, use_async=False)
    assert ckpt.latest_step() == setup.num_steps
    state, worst = setup.initial_state(), 0.0
    for step, batch in zip(range(setup.num_steps), setup.batches(0), strict=False):
        if step == 0:  # the control: both hosts feeding the first half's rows must fail
            doubled = jax.tree.map(lambda x: np.concatenate([x[: len(x) // 2]] * 2), batch)
            wrong, _ = setup.train_step(setup.initial_state(), doubled, setup.step_key(0))
        replayed, _ = setup.train_step(state, batch, setup.step_key(step))
        state, _ = setup.restore(ckpt, step + 1)
        if step == 0:
            control = _relative_difference(wrong.checkpoint_items(), state.checkpoint_items())
            assert control > TOLERANCE, control
        difference = _relative_difference(replayed.checkpoint_items(), state.checkpoint_items())
        assert difference <= TOLERANCE, f"step {step + 1}: {difference}"
        worst = max(worst, difference)
    ckpt.close()
    return setup, worst


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_linf_training_on_two_processes_survives_a_dead_process_and_equals_one_process(tmp_path):
    """Linf APGD-CE training with a random start (so every step's key matters; 3 attack steps,
    the config: 10, as the step count changes nothing of what is compared and the train step
    compiles in proportion to it) on two processes; process 1 is killed mid-run: process 0
    stops within the heartbeat timeout with JAX's error naming the dead task, or, when the
    kill lands inside a collective, with our line saying another process most likely died;
    both restarted with the same command resume from the last checkpoint, and every step of
    the whole run (before and after the restart) equals the 1-process step. Only process 0
    writes metrics, and the eval accuracy it logs last is the 1-process evaluation of the
    final parameters. The restarted job is then sent SIGTERM on both processes (a preempted
    pod): both stop at the same step after a checkpoint of it, exit 5, and a third start
    finishes the run (replayed like the rest). Last, a start on the workdir while another job
    holds its lease: both processes exit 6."""
    heartbeat = 5
    # An evaluation every step slows the run enough to kill it mid-way.
    overrides = [
        "max_steps=10",
        "eval_every_steps=1",
        "dataset.num_eval_examples=200",
        "attack.random_start=True",
        "attack.steps=3",
        *EVERY_STEP,
    ]
    workdir = str(tmp_path / "two")
    args = [*_flags(overrides, workdir), f"--heartbeat_timeout={heartbeat}"]
    job = jobs.start("seasoning.train", args, str(tmp_path))
    ckpt_dir = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
    deadline = time.monotonic() + jobs.TIMEOUT
    while not (
        os.path.isdir(ckpt_dir) and any(d.isdigit() and int(d) >= 3 for d in os.listdir(ckpt_dir))
    ):
        assert job[0].popen.poll() is None, job[0].output()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    job[1].popen.kill()
    killed = time.monotonic()
    code = jobs.wait(job[:1], timeout=heartbeat + 120)[0]
    waited = time.monotonic() - killed
    output = job[0].output()
    assert code != 0, output[-4000:]
    # Which error comes first depends on where process 0 was: blocked in a collective it
    # learns from the heartbeats; inside one it sees the dead peer's socket close.
    expected = ("stopped sending heartbeats", "heartbeat timeout", "most likely died")
    assert any(message in output for message in expected), output[-4000:]
    print(f"process 0 stopped {waited:.0f} s after process 1 was killed")
    saved = checkpoints.latest_step(workdir)
    assert 3 <= saved < 10, saved

    # Restarted, then preempted: SIGTERM to both processes once the restart has trained a step.
    job = jobs.start("seasoning.train", args, str(tmp_path))
    while checkpoints.latest_step(workdir) <= saved:
        assert job[0].popen.poll() is None, job[0].output()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for process in job:
        process.popen.send_signal(signal.SIGTERM)
    terminated = time.monotonic()
    codes = jobs.wait(job, timeout=120)
    outputs = [p.output() for p in job]
    assert codes == [5, 5], outputs[0][-4000:]
    print(f"both processes exited {time.monotonic() - terminated:.1f} s after SIGTERM")
    stops = [re.findall(r"Stopped by SIGTERM at step (\d+) of 10", out) for out in outputs]
    assert stops[0] and stops[0] == stops[1], stops
    preempted = int(stops[0][0])
    assert checkpoints.latest_step(workdir) == preempted < 10

    logs = jobs.run("seasoning.train", args, str(tmp_path))
    assert "jax.distributed: process 1 of 2" in logs[1]
    for log in logs:
        assert f"Resumed from the checkpoint at step {preempted}." in log, log[-4000:]
    setup, worst = _replay(overrides, workdir)
    print(f"preempted at step {preempted}; largest one-step difference: {worst:.2g}")
    records = _metrics(workdir)
    events = [r.get("event") for r in records]
    assert events.count("start") == 1 and events.count("resumed") == 2
    assert events.count("preempted") == 1
    # Only process 0 wrote metrics: each step once per start (those between the last
    # checkpoint and the kill twice in all), one TensorBoard file per start.
    restarts = [i for i, event in enumerate(events) if event == "resumed"]
    before = [r["step"] for r in records[: restarts[0]] if "train/loss" in r]
    after = [r["step"] for r in records[restarts[1] :] if "train/loss" in r]
    assert before == list(range(1, len(before) + 1)) and len(before) >= saved
    assert after == list(range(preempted + 1, setup.num_steps + 1))
    assert len([f for f in os.listdir(workdir) if "tfevents" in f]) == 3
    final, _ = setup.restore(checkpoints.Checkpointer(workdir, use_async=False))
    one = setup.evaluate(final.variables())
    two = [r for r in records if "eval/accuracy" in r][-1]
    assert two["step"] == setup.num_steps
    assert two["eval/accuracy"] == one["accuracy"]
    assert 0.0 < one["accuracy"] <= 1.0

    # Another job holds the workdir: process 0 is refused, and so is process 1 (told by
    # process 0, instead of waiting for it in a collective); both exit 6, nothing written.
    before = sorted(os.listdir(workdir))
    with lease.of_workdir(workdir):
        job = jobs.start("seasoning.train", args, str(tmp_path))
        codes = jobs.wait(job, timeout=120)
        outputs = [p.output() for p in job]
    assert codes == [6, 6], outputs[1][-4000:]
    assert f"{workdir} is in use by another job: pid {os.getpid()}" in outputs[0]
    assert "process 0 found it held by another live job" in outputs[1]
    assert sorted(os.listdir(workdir)) == before


def test_heartbeat_timeout_is_range_checked():
    """0 is refused when the flag is parsed (absl stops the command before anything runs) and
    by the function behind it."""
    with pytest.raises(flags.IllegalFlagValueError, match="heartbeat_timeout=0"):
        flags.FLAGS[cli.HEARTBEAT_TIMEOUT.name].parse("0")
    with pytest.raises(errors.UserError, match="heartbeat_timeout=0 must be >= 1"):
        parallel.initialize_distributed("off", heartbeat_timeout=0)
