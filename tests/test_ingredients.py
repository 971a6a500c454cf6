"""Ingredients on real Fashion-MNIST: a Linf parent and its fine-tuned children, each trained
for a few steps, measured with `seasoning.evaluate` (fast); plus fine-tuning's errors."""

import json
import os

import numpy as np
import pytest
from conftest import FAMILY_MODEL

from seasoning import config_lib, evaluate, report, threat, train, trees

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
LINF = threat.ThreatModel("linf", 0.1)
L1 = threat.ThreatModel("l1", 10.0)
CLEAN = threat.ThreatModel("none", 0.0)


def _child_config(name, parent, *overrides):
    spec = os.path.join(CONFIGS, f"fmnist_cnn_linf_to_{name}.py") + f":runlocal,parent={parent}"
    return config_lib.load_config(spec, ["max_steps=60", *overrides])


@pytest.fixture(scope="module")
def runs(family):
    """The shared family (tests/conftest.py): Linf parent (100 steps), its L1 and nominal
    children (60 steps each), and a model trained nominally from scratch as long as the
    parent."""
    return {
        "parent": family["fmnist_cnn_linf"],
        "scratch": family["fmnist_cnn_scratch"],
        "l1": family["fmnist_cnn_linf_to_l1"],
        "nominal": family["fmnist_cnn_linf_to_nominal"],
    }


def _robust(workdir, tm, n_examples):
    result = evaluate.evaluate_run(
        workdir,
        [tm],
        version="fast",
        n_examples=n_examples,
        batch_size=16,
        output=f"eval_{tm.norm}.json",
    )
    return result["threat_models"][str(tm)]["robust_accuracy"]


@pytest.mark.slow
def test_linf_training_is_more_linf_robust_than_nominal_training(runs):
    parent, scratch = (_robust(runs[k], LINF, 300) for k in ("parent", "scratch"))
    assert parent > scratch + 0.2, (parent, scratch)


@pytest.mark.slow
def test_l1_child_is_more_l1_robust_than_its_parent(runs):
    parent, child = (_robust(runs[k], L1, 300) for k in ("parent", "l1"))
    assert child > parent + 0.03, (parent, child)


@pytest.mark.slow
def test_nominal_child_is_more_accurate_than_its_parent(runs):
    parent, child = (_robust(runs[k], CLEAN, 2000) for k in ("parent", "nominal"))
    assert child > parent + 0.01, (parent, child)


@pytest.mark.slow
def test_children_record_their_parent(runs):
    for name in ("l1", "nominal"):
        with open(os.path.join(runs[name], "config.json")) as f:
            assert json.load(f)["init_from"] == runs["parent"]
        with open(os.path.join(runs[name], "metrics.jsonl")) as f:
            events = [json.loads(line) for line in f]
        parent_events = [e for e in events if e.get("event") == "init_from"]
        assert parent_events == [{**parent_events[0], "parent": runs["parent"], "parent_step": 100}]


@pytest.mark.slow
def test_fine_tuning_a_different_model_fails_and_writes_nothing(runs, tmp_path):
    config = _child_config("l2", runs["parent"])
    with config.unlocked():  # the parent's convolutions, not its dense layer's 64 units
        config.model.update(features=FAMILY_MODEL["features"], hidden=128)
    workdir = tmp_path / "mismatch"
    with pytest.raises(ValueError, match=r"first difference .*params/Dense_0/.*shape"):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_fine_tuning_from_a_run_without_checkpoint_fails(tmp_path):
    config = _child_config("l2", str(tmp_path / "nothing_here"))
    with pytest.raises(FileNotFoundError, match="is not a run of `python -m seasoning.train`"):
        train.train_and_evaluate(config, str(tmp_path / "child"))
    assert not (tmp_path / "child").exists()


def test_first_difference_names_the_path():
    a = {"params": {"conv": {"kernel": np.zeros((3, 3)), "bias": np.zeros(3)}}}
    assert trees.first_difference(a, a) is None
    b = {"params": {"conv": {"kernel": np.zeros((3, 4)), "bias": np.zeros(3)}}}
    assert trees.first_difference(a, b) == "params/conv/kernel: shape (3, 3) vs (3, 4)"
    c = {"params": {"conv": {"kernel": np.zeros((3, 3)), "bias": np.zeros(3, np.int32)}}}
    assert trees.first_difference(a, c) == "params/conv/bias: dtype float64 vs int32"
    d = {"params": {"conv": {"kernel": np.zeros((3, 3))}}}
    assert trees.first_difference(a, d) == "params/conv/bias: only in the first"


@pytest.mark.slow
def test_report_tabulates_the_evaluated_runs(runs):
    for name in ("parent", "l1"):
        _robust(runs[name], L1, 300)  # reuses eval_l1.json when an earlier test wrote it
    text = report.table([runs["parent"], runs["l1"]], eval_file="eval_l1.json")
    header, rule, parent_row, child_row, note = text.splitlines()
    assert header.split(" | ")[1:4] == ["trained for", "clean", "l1:10"]
    assert parent_row.startswith("| fmnist_cnn_linf | linf 0.1 |")
    assert child_row.startswith("| fmnist_cnn_linf_to_l1 | l1 10 <- fmnist_cnn_linf |")
    assert "300 images of fashion_mnist/test" in note
    assert report.training_seconds(runs["l1"]) > 0
    with pytest.raises(FileNotFoundError, match="python -m seasoning.evaluate --workdir="):
        report.table([runs["nominal"]], eval_file="missing.json")
