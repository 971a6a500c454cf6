"""The CIFAR-10 and ImageNet shift configs end to end on TFDS mock data (a file of its own, so
that the test run's two workers can balance it against the long Fashion-MNIST shift tests)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from seasoning import config_lib, data, workdir
from seasoning.data import tfds_source
from seasoning.shift import report
from seasoning.shift import run as run_lib

pytestmark = pytest.mark.slow  # the shift configs end to end on mock data

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# One tiny run stands for each ingredient.


def _mock_run(tmp_path_factory, train_config: str, name: str, overrides: list[str]) -> str:
    from seasoning import train

    out = str(tmp_path_factory.mktemp(name))
    nominal = ["threat.norm=none", "threat.eps=0.0", "attack.name=none", "max_steps=1"]
    config = config_lib.load_config(os.path.join(CONFIGS, train_config), overrides + nominal)
    train.train_and_evaluate(config, out)
    return out


def _wider_label_lists(monkeypatch):
    """Mock ReaL label lists hold 5-49 labels (the real ones at most 9): let them through."""
    width = tfds_source._label_width
    monkeypatch.setattr(
        tfds_source,
        "_label_width",
        lambda tfds, feature, name, key, most: (
            64 if most else width(tfds, feature, name, key, most)
        ),
    )


@pytest.mark.parametrize(
    "config_file, train_config, train_overrides",
    # The ingredients are small CNNs (1000 classes for ImageNet): the test is about the configs'
    # datasets, not their models.
    [
        (
            "shift_cifar10_wrn28_10.py",
            "fmnist_cnn_linf.py:runlocal",
            ["dataset.name=cifar10", "dataset.image_size=0"],
        ),
        (
            "shift_imagenet_vitb16.py",
            "fmnist_cnn_linf.py:runlocal",
            ["dataset.name=imagenet2012", "dataset.image_size=32"],
        ),
    ],
)
def test_cifar10_and_imagenet_configs_run_on_mock_data(
    config_file, train_config, train_overrides, tmp_path_factory, monkeypatch
):
    _wider_label_lists(monkeypatch)
    with tfds.testing.mock_data(num_examples=80):
        ingredient = _mock_run(tmp_path_factory, train_config, "mock_run", train_overrides)
        # Grid selection only: learned and greedy compile a program per head (the FMNIST
        # tests run them); AutoAttack is tested there too.
        config = config_lib.load_config(
            os.path.join(CONFIGS, f"{config_file}:runlocal"),
            ["robust.enabled=False", "methods=('grid',)"],
        )
        config.ingredients = (ingredient,) * 4
        out = str(tmp_path_factory.mktemp("mock_shift"))
        result = run_lib.run_shift(config, out)
    expected_columns = {
        "shift_cifar10_wrn28_10.py": ["CIFAR-10", "CIFAR-10.1", "CIFAR-10-C"],
        "shift_imagenet_vitb16.py": ["IN", "IN-ReaL", "V2", "A", "R", "Sketch", "Conflict", "IN-C"],
    }[config_file]
    assert [c["name"] for c in result["columns"]] == expected_columns
    text = open(os.path.join(out, run_lib.REPORT_FILE)).read()
    assert re.search(r"\| setup \| #FP \| " + r" \| ".join(map(re.escape, expected_columns)), text)
    arrays = workdir.read_arrays(os.path.join(out, run_lib.ARRAYS_FILE))
    for column in result["columns"]:
        name = column["name"]
        predicted = arrays[f"unseen/{name}/row/ingredient/linf"]
        labels = arrays[f"unseen/{name}/labels"]
        if name == "Conflict":  # 16 shape categories, from the 1000 logits
            assert labels.max() < 16 and predicted.max() < 16
        if name in ("A", "R"):  # predictions stay inside the 200-class mask
            mask = (
                np.exp(
                    np.asarray(
                        data.DATASETS["imagenet_a" if name == "A" else "imagenet_r"].head(
                            np.zeros((1, 1000))
                        )
                    )
                )[0]
                > 0
            )
            assert mask.sum() == 200 and mask[predicted].all()
        if name == "IN-ReaL":
            assert labels.ndim == 2
        linf = next(r for r in result["rows"] if r["name"] == "linf")
        acc = report.shift_accuracy(predicted[None], labels, arrays[f"unseen/{name}/member"])
        assert 0 <= acc[0] <= 1 and acc[0] == linf["unseen"][name]
    if "IN-C" in expected_columns:
        assert len(result["columns"][-1]["members"]) == 75
