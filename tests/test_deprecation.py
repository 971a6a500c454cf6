"""Renamed public names: the old name warns, names the new one, and computes the same."""

import importlib

import numpy as np
import pytest

from seasoning.demo import stages
from seasoning.soup import grid

apgd = importlib.import_module("seasoning.attacks.apgd")  # (attacks.apgd is the function)


@pytest.mark.parametrize(
    "old, new, args",
    [
        (apgd.checkpoints, apgd.step_size_checkpoints, (100, "linf")),
        (grid.mix, grid.mix_stacked, ({"w": np.array([[1.0], [3.0]])}, np.array([0.25, 0.75]))),
        (stages.batches, stages.stage_groups, ([],)),
    ],
)
def test_old_names_warn_and_compute_the_same(old, new, args):
    with pytest.warns(DeprecationWarning, match=f"use {new.__module__}.{new.__qualname__}"):
        got = old(*args)
    want = new(*args)
    if isinstance(want, dict):
        np.testing.assert_allclose(got["w"], want["w"])
    else:
        assert got == want
    assert "Deprecated alias" in old.__doc__ and old.__name__ == new.__name__


def test_apgd_evaluate_is_loss_and_grad():
    assert apgd.evaluate.__wrapped__ is apgd.loss_and_grad


def test_the_pytorch_twins_moved_out_of_the_library():
    import seasoning.reference as old
    from seasoning.testing import torch_twins

    with pytest.warns(DeprecationWarning, match="use seasoning.testing.torch_twins"):
        to_torch = old.to_torch
    assert to_torch is torch_twins.to_torch


def test_soup_bn_prepare_for_run_moved_to_runs(monkeypatch):
    from seasoning import runs
    from seasoning.soup import bn

    calls = []
    monkeypatch.setattr(runs, "soup_prepare", lambda *a: calls.append(a) or "prepared")
    with pytest.warns(DeprecationWarning, match="use seasoning.runs.soup_prepare"):
        assert bn.prepare_for_run("interpolate", "run", 8) == "prepared"
    assert calls == [("run", "interpolate", 8)]


MOVED_SCHEMA_NAMES = [
    ("base_train_config", "seasoning.train_config"),
    ("validate_train_config", "seasoning.train_config"),
    ("base_soup_config", "seasoning.soup.config"),
    ("validate_soup_config", "seasoning.soup.config"),
    ("base_shift_config", "seasoning.shift.config"),
    ("validate_shift_config", "seasoning.shift.config"),
    ("base_demo_config", "seasoning.demo.config"),
    ("validate_demo_config", "seasoning.demo.config"),
]


@pytest.mark.parametrize("name, home", MOVED_SCHEMA_NAMES)
def test_config_lib_schemas_moved_beside_their_drivers(name, home):
    from seasoning import config_lib

    new = getattr(importlib.import_module(home), name)
    old = getattr(config_lib, name)
    assert old.__wrapped__ is new and old is getattr(config_lib, name)
    if name.startswith("base_"):
        with pytest.warns(DeprecationWarning, match=f"use {home}.{name}"):
            got = old()
        assert got.to_dict() == new().to_dict()


def test_config_lib_execution_keys_moved_to_train_config():
    from seasoning import config_lib, train_config

    with pytest.warns(DeprecationWarning, match="use seasoning.train_config.EXECUTION_KEYS"):
        assert config_lib.EXECUTION_KEYS is train_config.EXECUTION_KEYS
    with pytest.raises(AttributeError, match="no attribute 'base_eval_config'"):
        config_lib.base_eval_config  # noqa: B018


def test_the_soup_evaluation_modes_old_names_still_work(tmp_path):
    """`grid` / `per_soup` became `batched` / `one_by_one`: old configs validate and resolve to
    the new modes, and a grid.json recording an old name is reused (and resumed)."""
    from seasoning import config_lib, errors, workdir
    from seasoning.soup import config as soup_config

    assert grid.resolve_mode("grid") == "batched"
    assert grid.resolve_mode("per_soup") == "one_by_one"
    assert grid.resolve_mode("auto") == "one_by_one"  # on CPU
    config = config_lib.load_config("configs/soup_fmnist.py", ["evaluation=per_soup"])
    soup_config.validate_soup_config(config)
    config.evaluation = "loop"
    with pytest.raises(errors.UserError, match="evaluation 'loop'.*one_by_one"):
        soup_config.validate_soup_config(config)

    path = tmp_path / "grid.json"
    old = {"evaluation": "per_soup", "seed": 0}
    workdir.write_json(path, {"settings": old, "rows": [], "complete": False})
    today = {"evaluation": "one_by_one", "seed": 0}
    with pytest.raises(errors.UserError, match="other settings"):
        workdir.check_result_file(path, today, resume=True)
    kept = workdir.check_result_file(path, today, resume=True, upgrade=grid.upgrade_settings)
    assert kept["settings"] == old  # the file as it is; the sweep writes today's settings
    with pytest.raises(errors.UserError, match="other settings"):
        workdir.check_result_file(
            path, {"evaluation": "batched", "seed": 0}, upgrade=grid.upgrade_settings
        )
    with pytest.warns(DeprecationWarning, match="use seasoning.soup.grid.evaluate_one_by_one"):
        with pytest.raises(TypeError):
            grid.evaluate_per_soup()
    assert grid.evaluate_grid.__wrapped__ is grid.evaluate_batched
