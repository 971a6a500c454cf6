"""The workdir guard: config.json is claimed once, a different config is refused."""

import json

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
