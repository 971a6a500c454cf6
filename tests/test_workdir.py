"""The workdir guard: config.json is claimed once, a different config is refused."""

import json
import os

import pytest

from seasoning import workdir as workdir_lib


def test_a_key_added_since_the_run_counts_as_its_default(tmp_path):
    """A run written before `threat.multi` existed resumes when the new config keeps the
    default, and is refused when it does not."""
    defaults = {"threat": {"norm": "none", "eps": 0.0, "multi": []}, "seed": 0}
    old = {"threat": {"norm": "linf", "eps": 0.1}, "seed": 0}
    (tmp_path / "config.json").write_text(json.dumps(old))
    same = {"threat": {"norm": "linf", "eps": 0.1, "multi": []}, "seed": 0}
    assert workdir_lib.claim(str(tmp_path), same, defaults) is True
    other = {"threat": {"norm": "linf", "eps": 0.1, "multi": ["l2:0.5"]}, "seed": 0}
    with pytest.raises(
        workdir_lib.WorkdirConflictError, match=r"threat.multi: \[\] -> \['l2:0.5'\]"
    ):
        workdir_lib.claim(str(tmp_path), other, defaults)
    # Without defaults a missing key is a difference, and config.json is left as it was.
    with pytest.raises(workdir_lib.WorkdirConflictError, match="threat.multi: '<absent>' -> "):
        workdir_lib.claim(str(tmp_path), same)
    assert json.loads((tmp_path / "config.json").read_text()) == old


def test_a_new_workdir_is_claimed(tmp_path):
    config = {"seed": 1}
    assert workdir_lib.claim(str(tmp_path / "run"), config) is False
    assert workdir_lib.claim(str(tmp_path / "run"), config) is True


def test_execution_keys_may_differ_on_resume_and_nothing_else(tmp_path):
    """A resume may read its batches with another worker count (they do not change what is
    computed); any other difference is refused, and config.json keeps the first run's."""
    run = str(tmp_path / "run")
    first = {"seed": 1, "dataset": {"name": "cifar10", "num_workers": -1}}
    free = ("dataset.num_workers", "absent.key")
    assert workdir_lib.claim(run, first, free=free) is False
    other_workers = {"seed": 1, "dataset": {"name": "cifar10", "num_workers": 8}}
    assert workdir_lib.claim(run, other_workers, free=free) is True
    with pytest.raises(workdir_lib.WorkdirConflictError, match="dataset.num_workers: -1 -> 8"):
        workdir_lib.claim(run, other_workers)  # not free without being named
    with pytest.raises(workdir_lib.WorkdirConflictError, match="dataset.name: 'cifar10' -> 'x'"):
        workdir_lib.claim(run, {"seed": 1, "dataset": {"name": "x", "num_workers": 8}}, free=free)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == first


def test_a_local_write_is_a_temporary_file_renamed_over_the_target(tmp_path, monkeypatch):
    """Locally the bytes go to a temporary file in the target's folder, then a rename (atomic
    within a file system); an object store gets one upload instead (test_workdir_epath.py)."""
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((src, dst))
        with open(src) as f:
            assert json.load(f) == {"acc": 1}  # whole before it is renamed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "run" / "eval.json"
    workdir_lib.write_json(str(target), {"acc": 1})
    [(src, dst)] = renames
    assert dst == str(target) and os.path.dirname(src) == str(target.parent)
    assert os.path.basename(src).startswith(".eval.json.")
    assert sorted(os.listdir(target.parent)) == ["eval.json"]
