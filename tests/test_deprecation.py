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
