"""What `pip install -e '.[EXTRA]'` asks for on an accelerator machine (setup.py, as installed):
a JAX range that keeps the versions the project was checked with, and the extras that
docs/training.md names. Resolving them against an index is `make check-extras` (by hand: it
needs the index)."""

import importlib.metadata
import os

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in importlib.metadata.requires("seasoning")]


def _pinned(name: str) -> Version:
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        for line in f:
            if line.startswith(f"{name}=="):
                return Version(line.split("==")[1].strip())
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_the_jax_range_keeps_the_versions_the_project_was_checked_with():
    """CI's pinned JAX and the GPU runs' 0.11.2 (docs/training.md "On a GPU or TPU machine") are
    in the range, so pip keeps a machine's JAX of either instead of replacing it."""
    (jax,) = [r for r in _requirements() if r.name == "jax" and r.marker is None]
    assert _pinned("jax") in jax.specifier and Version("0.11.2") in jax.specifier
    (flax,) = [r for r in _requirements() if r.name == "flax" and r.marker is None]
    assert _pinned("flax") in flax.specifier and Version("0.12.10") in flax.specifier


def test_each_accelerator_extra_brings_the_jax_build_for_it():
    expected = {"cuda": "cuda12", "cuda13": "cuda13", "tpu": "tpu"}
    for extra, jax_extra in expected.items():
        found = [
            r
            for r in _requirements()
            if r.marker is not None and r.marker.evaluate({"extra": extra})
        ]
        assert [(r.name, r.extras) for r in found] == [("jax", {jax_extra})], (extra, found)
