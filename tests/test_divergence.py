"""A training run that reaches a NaN or infinity: stopped (or its steps skipped) without saving
any non-finite state, a clear message and exit status 3; loaders refuse non-finite weights."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from seasoning import (
    checkpoints,
    cli,
    config_lib,
    divergence,
    errors,
    runs,
    train,
    train_config,
    trees,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "configs", "fmnist_cnn_linf.py:runlocal")
# Nominal training at lr 1e9: step 1 leaves huge weights, step 2 a NaN gradient.
DIVERGING = [
    "optimizer.lr=1e9",
    "max_steps=12",
    "checkpoint_every_steps=1",
    "log_every_steps=5",
    "threat.norm=none",
    "threat.eps=0.0",
    "attack.name=none",
]


def _metrics(flags, loss=1.0):
    flags = np.asarray(flags, np.float32)
    values = np.where(flags > 0, np.nan, loss).astype(np.float32)
    return {"nonfinite": flags, "loss": values, "grad_norm": values, "param_norm": values}


def test_first_nonfinite_names_the_leaf():
    tree = {
        "params": {"b": np.zeros(3), "a": np.array([1.0, np.inf, np.nan, 2.0])},
        "step": np.array(3, np.int32),
    }
    assert trees.first_nonfinite(tree) == "params/a: 2 of 4 values are NaN or infinite"
    tree["params"]["a"] = np.ones(4, np.float32)
    assert trees.first_nonfinite(tree) is None


def test_stop_raises_at_the_first_nonfinite_step_and_names_the_last_checkpoint():
    guard = divergence.Guard("stop", 10, "/runs/r", lr=0.5, last_saved=None)
    assert guard.check(1, _metrics([0, 0])) == 0
    with pytest.raises(errors.DivergedError) as info:
        guard.check(3, _metrics([0, 0, 1, 0]))
    message = str(info.value)
    assert "not finite at step 5" in message and "loss=nan" in message
    assert "No checkpoint had been written" in message and "(this run: 0.5)" in message
    guard.last_saved = 4
    with pytest.raises(errors.DivergedError, match="step 4 of /runs/r, holds finite weights"):
        guard.check(5, _metrics([1]))
    with pytest.raises(errors.DivergedError, match="--config.init_from=/runs/r --workdir="):
        guard.check(5, _metrics([1]))


def test_skip_counts_and_stops_after_too_many_in_a_row():
    guard = divergence.Guard("skip", 3, "/runs/r", lr=0.1, last_saved=2)
    assert guard.check(1, _metrics([1, 1, 0, 1])) == 3  # a finite step resets the count
    assert guard.check(5, _metrics([1])) == 1  # two in a row, across two checks
    with pytest.raises(errors.DivergedError, match=r"step 6, 3 skipped steps in a row"):
        guard.check(6, _metrics([1, 0]))


@pytest.mark.parametrize(
    "error, status",
    [
        (errors.UserError, 2),
        (errors.DivergedError, 3),
        (errors.WriteError, 4),
        (errors.PreemptedError, 5),
        (errors.BusyError, 6),
    ],
)
def test_each_error_exits_with_its_status_and_one_line(capsys, error, status):
    def fail():
        raise error("Training diverged: loss not finite at step 7")

    with pytest.raises(SystemExit) as info:
        cli.exit_on_user_error(fail)
    assert info.value.code == status
    assert capsys.readouterr().err == "error: Training diverged: loss not finite at step 7\n"


@pytest.mark.parametrize(
    "override, message",
    [
        ("nonfinite=halt", "Unknown nonfinite 'halt'; expected one of: stop, skip"),
        ("max_nonfinite_in_row=0", "max_nonfinite_in_row=0: expected an integer >= 1"),
    ],
)
def test_the_policy_values_are_checked(override, message):
    config = train_config.base_train_config()
    config_lib.apply_override(config, override)
    with pytest.raises(errors.UserError, match=message):
        train_config.validate_train_config(config)


@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_only_finite_checkpoints(tmp_path):
    """lr 1e9: stopped at step 2 with the step-1 checkpoint kept (finite, loadable); a
    non-finite checkpoint written by other means is refused, naming the leaf, by the run
    loader, the ingredients' loader (soups, shift soups) and fine-tuning."""
    workdir = str(tmp_path / "run")
    config = config_lib.load_config(FMNIST, DIVERGING)
    with pytest.raises(errors.DivergedError) as info:
        train.train_and_evaluate(config, workdir)
    message = str(info.value)
    assert "not finite at step 2" in message and "step 1 of" in message
    assert sorted(os.listdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR))) == ["1"]
    assert runs.load(workdir).step == 1  # finite: loads
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    assert events[-1]["event"] == "diverged" and events[-1]["message"] == message

    tree, meta, _ = checkpoints.read_numpy(workdir)
    leaf = sorted(tree["params"])[0]
    first = sorted(tree["params"][leaf])[0]
    tree["params"][leaf][first] = np.full_like(tree["params"][leaf][first], np.nan)
    ckpt = checkpoints.Checkpointer(workdir, use_async=False)
    ckpt.save(5, tree, meta)
    ckpt.close()
    refused = rf"step 5 are not finite \(params/{leaf}/{first}"
    with pytest.raises(errors.UserError, match=refused):
        runs.load(workdir)
    with pytest.raises(errors.UserError, match=refused):  # soups and shift soups read this way
        runs.load_ingredients([workdir])
    child = config_lib.load_config(FMNIST, ["max_steps=2", f"init_from={workdir}"])
    with pytest.raises(errors.UserError, match=refused):  # fine-tuning from it
        train.train_and_evaluate(child, str(tmp_path / "child"))
    assert not (tmp_path / "child").exists()


@pytest.mark.slow
def test_skipped_steps_leave_the_weights_unchanged(tmp_path):
    """nonfinite=skip: steps 2-4 are skipped (their updates discarded, so checkpoints 2 and 3
    hold step 1's weights) and the run stops at the third in a row."""
    workdir = str(tmp_path / "run")
    overrides = [*DIVERGING, "nonfinite=skip", "max_nonfinite_in_row=3"]
    with pytest.raises(errors.DivergedError, match="step 4, 3 skipped steps in a row"):
        train.train_and_evaluate(config_lib.load_config(FMNIST, overrides), workdir)
    two, three = (checkpoints.read_numpy(workdir, step)[0] for step in (2, 3))
    assert trees.first_nonfinite(three) is None
    for a, b in zip(jax.tree.leaves(two["params"]), jax.tree.leaves(three["params"]), strict=True):
        np.testing.assert_array_equal(a, b)  # the same weights
