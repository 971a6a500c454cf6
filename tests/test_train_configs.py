"""The CIFAR-10 and ImageNet training configs end to end on TFDS mock data: their own
preprocessing ops through the Grain pipeline, two training steps, the periodic evaluation.

The model is the small CNN (the test is about the configs' data path, not their models)."""

from __future__ import annotations

import json
import os

import ml_collections
import pytest
import tensorflow_datasets as tfds

from seasoning import checkpoints, config_lib, data, train

pytestmark = pytest.mark.slow  # training runs

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Nominal training: the configs' attacks are tested elsewhere, and the step compiles faster.
SHRINK = [
    "batch_size=8",
    "eval_batch_size=8",
    "max_steps=2",
    "dataset.num_eval_examples=8",
    "threat.norm=none",
    "threat.eps=0.0",
    "attack.name=none",
    "log_every_steps=1",
    "compute_dtype=float32",
    "accumulate_steps=1",
    "schedule.warmup_steps=0",
]


@pytest.mark.parametrize(
    "path, train_ops, size",
    [
        ("cifar10_wrn28_10_linf.py", "decode|pad_crop(4)|flip_lr", 32),
        ("resnet50_linf.py", "decode|inception_crop(224, area=(0.08, 1.0))|flip_lr", 224),
    ],
)
def test_training_config_runs_on_mock_data(path, train_ops, size, tmp_path):
    config = config_lib.load_config(os.path.join(CONFIGS, path), SHRINK)
    mean, std = config.model.get("mean", (0.5,)), config.model.get("std", (0.5,))
    config.model = ml_collections.ConfigDict(dict(name="cnn-small", mean=mean, std=std))
    assert data.train_ops(config.dataset)[0] == train_ops  # the recipe's ops, by name
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=24):
        final = train.train_and_evaluate(config, workdir)
    assert 0.0 <= final["accuracy"] <= 1.0
    tree, meta, step = checkpoints.read_numpy(workdir)
    assert step == 2 and meta["image_shape"] == [size, size, 3]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    waits = [r["train/input_wait"] for r in records if "train/input_wait" in r]
    assert len(waits) == 2 and all(0.0 <= w <= 1.0 for w in waits)
