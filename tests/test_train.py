"""The training driver, run for real: in-process and as the `python -m seasoning.train` CLI."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seasoning import (
    checkpoints,
    config_lib,
    errors,
    evaluate,
    preemption,
    runs,
    threat,
    train,
)
from seasoning import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "configs/fmnist_cnn_linf.py")


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "seasoning.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_vit_runlocal_trains_on_synthetic_data_and_is_attacked_in_float32(tmp_path):
    """A ViT trained in bfloat16 (as configs/vitb_linf.py trains) is evaluated in float32:
    bfloat16 inputs round to ~1e-3, a tenth of an Linf step at 4/255, unless asked for."""
    workdir = str(tmp_path / "vit")
    config = config_lib.load_config(
        f"{ROOT}/configs/vitb_linf.py:runlocal", ["compute_dtype=bfloat16", "max_steps=2"]
    )
    final = train.train_and_evaluate(config, workdir)
    assert np.isfinite(final["loss"])
    tree, meta, _ = checkpoints.read_numpy(workdir)
    assert meta["model"]["name"] == "vit-ti16" and not tree["batch_stats"]
    assert runs.load(workdir).model.dtype == jnp.float32
    assert runs.load(workdir, compute_dtype="bfloat16").model.dtype == jnp.bfloat16
    result = evaluate.evaluate_run(
        workdir,
        [threat.parse("linf:4/255")],
        version="fast",
        n_examples=8,
        batch_size=8,
        n_iter=1,
        n_target_classes=1,
    )
    assert result["settings"]["compute_dtype"] == "float32"
    assert "float32" in evaluate.format_table(result)


@pytest.mark.slow
def test_resume_refuses_a_different_model(tmp_path):
    workdir = str(tmp_path / "run")
    config = config_lib.load_config(f"{FMNIST}:runlocal", ["max_steps=2"])
    train.train_and_evaluate(config, workdir)
    os.remove(os.path.join(workdir, "config.json"))  # even without config.json's guard
    other = config_lib.load_config(f"{FMNIST}:runlocal", ["max_steps=2", "model.std=(0.5,)"])
    with pytest.raises(checkpoints.ModelMismatchError, match=r"model.std: \[0.353\] -> \[0.5\]"):
        train.train_and_evaluate(other, workdir)


@pytest.mark.slow
def test_workdir_of_another_config_is_not_overwritten(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config_lib.load_config(f"{FMNIST}:runlocal", ["max_steps=2"]), workdir)
    before = open(os.path.join(workdir, "config.json")).read()
    other = config_lib.load_config(f"{FMNIST}:runlocal", ["max_steps=2", "optimizer.lr=0.3"])
    with pytest.raises(ValueError, match=r"optimizer.lr: 0.05 -> 0.3"):
        train.train_and_evaluate(other, workdir)
    assert open(os.path.join(workdir, "config.json")).read() == before


def test_cli_error_exits_nonzero_and_writes_nothing(tmp_path):
    """The real command: an error found once the run starts is one line, no traceback."""
    workdir = tmp_path / "run"
    proc = _cli(
        f"--config={FMNIST}:runlocal", f"--workdir={workdir}", "--config.model.name=resnet-5O"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "Unknown model name 'resnet-5O'" in out
    assert "Traceback" not in out
    assert not workdir.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.optimizer.lrr=0.1", "Unknown config key 'optimizer.lrr'"),
        ("--config.batch_size=big", "batch_size='big' is not a valid int"),
    ],
)
def test_config_flag_errors_exit_2_before_anything_runs(tmp_path, capsys, override, message):
    """`--config` errors stop the command before absl parses its flags (in this process: the
    command's own entry point, `main_with_config`)."""
    workdir = tmp_path / "run"
    argv = ["train", f"--config={FMNIST}:runlocal", f"--workdir={workdir}", override]
    with pytest.raises(SystemExit) as exit_info:
        config_lib.main_with_config(train.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not workdir.exists()


def _live_children(pid: int) -> list[int]:
    """The processes `pid` started (its input workers among them)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except FileNotFoundError:  # a thread that ended between listdir and open
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_kill_and_resume_reaches_the_same_parameters(tmp_path):
    """SIGKILL mid-run, then the same command again: bitwise the parameters of a clean run.

    Two CLI starts: the killed one reads its batches in an input worker process, the resumed
    one and the uninterrupted run (this process's) in a thread, on the same 4 CPU devices
    (tests/conftest.py) as the CLI's `--cpu_devices=4`. The killed run's worker ends too."""
    # Nominal training keeps the runs short; the adversarial step is covered elsewhere.
    overrides = [
        "max_steps=60",
        "batch_size=32",
        "checkpoint_every_steps=20",
        "log_every_steps=40",
        "threat.norm=none",
        "threat.eps=0",
        "attack.name=none",
    ]
    args = [f"--config={FMNIST}:runlocal", "--cpu_devices=4", *(f"--config.{o}" for o in overrides)]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    workers = "--config.dataset.num_workers=1"
    proc = _cli(*args, workers, f"--workdir={killed}")
    first_checkpoint = killed / "checkpoints" / "20"
    deadline = time.time() + 120
    while not first_checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    children = _live_children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    killed_output, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert "; 1 worker process" in killed_output
    steps = sorted(int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit())
    assert steps and steps[-1] < 60, f"the kill came too late to test anything: {steps}"
    assert len(children) >= 2, children  # the worker and multiprocessing's tracker
    deadline = time.time() + 10
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "input workers outlived the killed run"

    resumed = _cli(*args, f"--workdir={killed}")  # no worker: a thread, as the clean run
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "Resumed from the checkpoint at step" in out
    train.train_and_evaluate(config_lib.load_config(f"{FMNIST}:runlocal", overrides), str(clean))

    tree_a, _, step_a = checkpoints.read_numpy(str(clean))
    tree_b, _, step_b = checkpoints.read_numpy(str(killed))
    assert step_a == step_b == 60
    leaves_a, leaves_b = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_the_same_command_resumes_bitwise(tmp_path, monkeypatch):
    """SIGTERM mid-run (a preempted VM; here sent by the run's first write of training metrics,
    at step 5): the run stops at the end of that step with a checkpoint of it (off the periodic
    schedule), exit status 5 on the command line (tests/test_divergence.py); resumed, it ends
    with the parameters of an uninterrupted run."""
    overrides = [
        "max_steps=20",
        "batch_size=32",
        "checkpoint_every_steps=15",
        "log_every_steps=5",
        "threat.norm=none",
        "threat.eps=0",
        "attack.name=none",
    ]
    config = config_lib.load_config(f"{FMNIST}:runlocal", overrides)
    stopped, clean = str(tmp_path / "stopped"), str(tmp_path / "clean")
    write, sent = metrics_lib.MetricWriter.write, []

    def write_then_terminate(self, step, scalars, *, prefix=""):
        write(self, step, scalars, prefix=prefix)
        if prefix == "train/" and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(metrics_lib.MetricWriter, "write", write_then_terminate)
        with pytest.raises(errors.PreemptedError, match="Stopped by SIGTERM at step 5 of 20"):
            train.train_and_evaluate(config, stopped)
    assert sent == [5]
    assert checkpoints.latest_step(stopped) == 5
    with open(os.path.join(stopped, "metrics.jsonl")) as f:
        assert json.loads(f.readlines()[-1])["event"] == "preempted"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back
    train.train_and_evaluate(config, stopped)
    train.train_and_evaluate(config, clean)
    (tree_a, _, step_a), (tree_b, _, step_b) = (checkpoints.read_numpy(w) for w in (stopped, clean))
    assert step_a == step_b == 20
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_sigterm_watcher_puts_the_handler_back_and_leaves_other_threads_alone():
    before = signal.getsignal(signal.SIGTERM)
    watcher = preemption.Watcher()
    watcher.start()
    assert signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)  # noted, not fatal
    assert watcher.requested
    watcher.stop()
    assert signal.getsignal(signal.SIGTERM) == before
    elsewhere = preemption.Watcher()  # signal handlers belong to the main thread
    thread = threading.Thread(target=elsewhere.start)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) == before and not elsewhere.requested


@pytest.mark.slow
def test_checkpoint_reads_on_another_device_count(tmp_path):
    """Saved by 4 devices, read by a process with 2: evaluation and soups run on other
    machines (and CPU splits) than training."""
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config_lib.load_config(f"{FMNIST}:runlocal", ["max_steps=2"]), workdir)
    code = (
        "import sys; from seasoning import checkpoints; "
        "tree, meta, step = checkpoints.read_numpy(sys.argv[1]); "
        "print(step, meta['num_classes'], tree['params']['Dense_0']['kernel'].shape)"
    )
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", code, workdir],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["2", "10"]
