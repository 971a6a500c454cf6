"""`seasoning.shift` end to end on the Fashion-MNIST family with real Fashion-MNIST-C and the
offline shifts (the CIFAR-10 and ImageNet configs: test_shift_configs.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

from seasoning import config_lib, data, errors, lease, stats, workdir
from seasoning.shift import rows as rows_lib
from seasoning.shift import run as run_lib
from seasoning.shift import select, splits

pytestmark = pytest.mark.slow  # the shift driver end to end on the trained family

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.fixture(scope="module")
def cache_dir(family):
    """Fashion-MNIST-C's cache, shared by the test run's workers."""
    path = os.path.join(family.root, "corruption_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEASONING_CACHE_DIR", path)
        yield path


def _fmnist_config(family, *overrides: str):
    for name in ("", "_to_l2", "_to_l1", "_to_nominal"):
        family[f"fmnist_cnn_linf{name}"]
    spec = os.path.join(CONFIGS, f"shift_fmnist.py:runlocal,runs={family.root}")
    return config_lib.load_config(spec, list(overrides))


@pytest.fixture(scope="module")
def fmnist_run(family, cache_dir, tmp_path_factory):
    """The runlocal Fashion-MNIST shift run: every column, every method, AutoAttack."""
    out = str(tmp_path_factory.mktemp("shift_fmnist"))
    config = _fmnist_config(family)
    result = run_lib.run_shift(config, out)
    return out, config, result


def _correct_by_hand(predicted, labels):
    return np.asarray(predicted) == np.asarray(labels)


def _mean_over_members(predicted, labels, member):
    ok = _correct_by_hand(predicted, labels)
    return float(np.mean([ok[member == m].mean() for m in np.unique(member)]))


def test_report_numbers_are_recomputed_from_the_saved_predictions(fmnist_run):
    out, config, result = fmnist_run
    arrays = workdir.read_arrays(os.path.join(out, run_lib.ARRAYS_FILE))
    on_disk = workdir.read_json(os.path.join(out, run_lib.SHIFT_FILE))
    assert on_disk == json.loads(json.dumps(result)) and on_disk["complete"]
    with open(os.path.join(out, run_lib.REPORT_FILE)) as f:
        text = f.read()
    assert os.path.getsize(os.path.join(out, run_lib.WEIGHTS_PLOT)) > 1000
    columns = list(config.columns)
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(columns) + 3 and cells[1].startswith("x"):
            table[cells[0]] = cells[2:]
    assert len(table) == len(result["rows"]) == 4 + 2 + 2 * 3  # ingredients, ensembles, soups
    for row in result["rows"]:
        by_hand = []
        for column in columns:
            prefix = f"unseen/{column}/"
            predicted = arrays[f"{prefix}row/{row['id']}"]
            acc = _mean_over_members(
                predicted, arrays[prefix + "labels"], arrays[prefix + "member"]
            )
            assert acc == pytest.approx(row["unseen"][column], abs=1e-12)
            low, high = row["unseen_interval"][column]
            assert low <= round(acc, 4) <= high and 0 < high - low < 1
            by_hand.append(acc)
        low, high = row["mean_interval"]
        assert low <= round(row["mean"], 4) <= high
        mean = f"{100 * np.mean(by_hand):.2f}"
        expected = [f"{100 * a:.2f}" for a in by_hand]
        expected.append(f"({mean})" if row["kind"] == "specific" else mean)
        assert table[row["name"]] == expected, row["name"]
    # The chosen weights and their adaptation accuracies, from the chosen soups' predictions.
    for method in config.methods:
        chosen = result["selection"][method]
        singles = []
        for column in columns:
            prefix = f"adaptation/{column}/"
            single, specific = (
                _mean_over_members(p, arrays[prefix + "labels"], arrays[prefix + "member"])
                for p in arrays[f"{prefix}chosen/{method}"]
            )
            singles.append(single)
            w = " | ".join(f"{v:.2f}" for v in chosen["specific"][column])
            assert f"| {method} | for {column} | {w} | {100 * specific:.2f} |" in text
        w = " | ".join(f"{v:.2f}" for v in chosen["single"])
        assert f"| {method} | single | {w} | {100 * np.mean(singles):.2f} |" in text
    # The second table: every robust accuracy from the saved flags.
    robust = result["robust"]
    assert robust["rows"] and robust["metrics"][0] == "clean"
    for i in range(len(robust["rows"])):
        flags = arrays[f"robust/{i}"]
        cells = [f"{100 * v:.2f}" for v in flags.mean(axis=1)]
        assert f"| {' | '.join(cells)} |" in text
        assert flags.shape == (len(robust["metrics"]), config.robust.n_examples)
        n = config.robust.n_examples
        assert robust["rows"][i]["intervals"] == {
            m: stats.outwards(*stats.interval(int(f.sum()), n))
            for m, f in zip(robust["metrics"], flags, strict=True)
        }
        # union = robust under every threat model
        assert np.array_equal(flags[-1], flags[1:-1].all(axis=0))


def test_splits_are_disjoint_and_selection_follows_the_adaptation_accuracies(fmnist_run):
    out, config, result = fmnist_run
    arrays = workdir.read_arrays(os.path.join(out, run_lib.ARRAYS_FILE))
    grid = np.array(result["grid"]["weights"])
    assert len(grid) == 10 and np.allclose(grid.sum(axis=1), 1)  # 4 ingredients, step 0.5
    adaptation_acc = []
    for column in config.columns:
        adapt, unseen = arrays[f"adaptation/{column}/indices"], arrays[f"unseen/{column}/indices"]
        assert len(adapt) == config.n_adaptation and len(unseen) == config.n_unseen
        assert not set(adapt.tolist()) & set(unseen.tolist())
        acc = [
            _mean_over_members(
                p, arrays[f"adaptation/{column}/labels"], arrays[f"adaptation/{column}/member"]
            )
            for p in arrays[f"adaptation/{column}/grid"]
        ]
        assert np.allclose(acc, result["grid"]["adaptation"][column])
        adaptation_acc.append(acc)
        chosen = result["selection"]["grid"]["specific"][column]
        assert acc[int(np.flatnonzero((grid == chosen).all(axis=1))[0])] == max(acc)
    # Fashion-MNIST-C is the mean over its 75 sets, each given adaptation images.
    members = arrays["adaptation/FMNIST-C/member"]
    assert len(np.unique(members)) == 75
    single = result["selection"]["grid"]["single"]
    means = np.mean(adaptation_acc, axis=0)
    assert means[int(np.flatnonzero((grid == single).all(axis=1))[0])] == means.max()
    for method in ("learned", "greedy"):
        for w in [
            result["selection"][method]["single"],
            *result["selection"][method]["specific"].values(),
        ]:
            assert min(w) >= 0 and sum(w) == pytest.approx(1, abs=1e-5)


def test_resume_recomputes_a_lost_stage_identically(fmnist_run, tmp_path, monkeypatch):
    """Same seed, same selected weights: the learned selection and the unseen stage, lost from
    shift.json, come back the same under --resume (also when SIGTERM stops the resumed run
    after the first); a complete result is reused."""
    out, config, result = fmnist_run
    copy = tmp_path / "resumed"
    copy.mkdir()
    for name in (run_lib.SHIFT_FILE, run_lib.ARRAYS_FILE):
        (copy / name).write_bytes(open(os.path.join(out, name), "rb").read())
    partial = json.loads((copy / run_lib.SHIFT_FILE).read_text())
    del partial["selection"]["learned"], partial["robust"]
    partial.update(unseen_done=[], complete=False)
    (copy / run_lib.SHIFT_FILE).write_text(json.dumps(partial))
    with pytest.raises(Exception, match="--resume"):
        run_lib.run_shift(config, str(copy))
    # SIGTERM while it recomputes the learned selection: it stops after saving that stage
    # (exit 5 from the CLI). While it runs, it holds the workdir's lease.
    real_learn = select.learn

    def terminated_while_learning(*args, **kwargs):
        with pytest.raises(errors.BusyError, match="in use by another job"):
            run_lib.run_shift(config, str(copy), resume=True)
        signal.raise_signal(signal.SIGTERM)
        return real_learn(*args, **kwargs)

    monkeypatch.setattr(select, "learn", terminated_while_learning)
    with pytest.raises(errors.PreemptedError, match="Stopped by SIGTERM.*--resume"):
        run_lib.run_shift(config, str(copy), resume=True)
    monkeypatch.setattr(select, "learn", real_learn)
    partial = json.loads((copy / run_lib.SHIFT_FILE).read_text())
    assert "learned" in partial["selection"] and not partial["unseen_done"]
    assert not (copy / lease.FILE).exists()
    again = run_lib.run_shift(config, str(copy), resume=True)
    assert again["selection"] == result["selection"]
    assert [r["unseen"] for r in again["rows"]] == [r["unseen"] for r in result["rows"]]
    assert (copy / run_lib.REPORT_FILE).read_text().split("## Time")[0] == open(
        os.path.join(out, run_lib.REPORT_FILE)
    ).read().split("## Time")[0]
    assert run_lib.run_shift(config, str(copy)) == json.loads(
        (copy / run_lib.SHIFT_FILE).read_text()
    )
    other = config_lib.load_config(
        os.path.join(CONFIGS, "shift_fmnist.py:runlocal"), ["split_seed=1"]
    )
    other.ingredients = config.ingredients
    with pytest.raises(errors.UserError, match="(?s)split_seed: 0 -> 1.*--overwrite"):
        run_lib.run_shift(other, str(copy))


class _UnseenLabelsShifted:
    """A source whose labels at `unseen` indices are replaced by (label + 1) mod classes."""

    def __init__(self, source, unseen):
        self._source, self._unseen = source, np.asarray(unseen)
        self.num_classes, self.image_shape = source.num_classes, source.image_shape

    def __len__(self):
        return len(self._source)

    def get(self, indices):
        images, labels = self._source.get(indices)
        hit = np.isin(indices, self._unseen)
        return images, np.where(hit, (labels + 1) % self.num_classes, labels).astype(np.int32)


def test_selection_reads_only_the_adaptation_split(family, cache_dir, tmp_path, monkeypatch):
    """Corrupting every unseen label changes every unseen accuracy and no selected weight."""
    overrides = [
        "shifts=('fashion_mnist_rotated',)",
        "columns=('rotated',)",
        "robust.enabled=False",
        "methods=('grid','learned','greedy')",
    ]
    config = _fmnist_config(family, *overrides)
    clean = run_lib.run_shift(config, str(tmp_path / "clean"))
    (split,) = splits.split_shift(
        [("fashion_mnist_rotated:test", 10000)],
        config.n_adaptation,
        config.n_unseen,
        config.split_seed,
    )
    get_source = data.get_source

    def patched(section, split_name, seed=0):
        source = get_source(section, split_name, seed=seed)
        return (
            _UnseenLabelsShifted(source, split.unseen)
            if section.name.endswith("rotated")
            else source
        )

    monkeypatch.setattr(data, "get_source", patched)
    shifted = run_lib.run_shift(config, str(tmp_path / "shifted"))
    assert shifted["selection"] == clean["selection"]
    assert shifted["grid"] == clean["grid"]
    for a, b in zip(clean["rows"], shifted["rows"], strict=True):
        assert a["unseen"]["rotated"] != b["unseen"]["rotated"], a["name"]


def test_cli_bad_value_is_one_line(tmp_path):
    spec = os.path.join(CONFIGS, "shift_fmnist.py:runlocal")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seasoning.shift",
            f"--config={spec}",
            f"--workdir={tmp_path}",
            "--config.n_adaptation=-5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "n_adaptation=-5: expected an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.listdir(tmp_path)


def test_rows_are_keyed_by_stable_ids_and_older_runs_are_upgraded():
    """Files key a table row by its id (kind, method, members), never by the label a report
    shows; a run saved with name keys gets ids and renamed arrays on resume; an unknown
    selection method is a bug, not greedy."""
    rows = rows_lib.table_rows(["linf", "l2", "l1"], [[0, 2], [0, 1, 2]], ["grid", "greedy"])
    assert [r["id"] for r in rows] == [
        "ingredient/linf",
        "ingredient/l2",
        "ingredient/l1",
        "ensemble/0+2",
        "ensemble/0+1+2",
        "single/grid",
        "specific/grid",
        "single/greedy",
        "specific/greedy",
    ]
    assert rows[5]["name"] == "single soup (grid)"
    old_rows = [{k: v for k, v in r.items() if k != "id"} for r in rows]
    arrays = {f"unseen/c/row/{r['name']}": np.full(3, i) for i, r in enumerate(rows)}
    arrays["unseen/c/labels"] = np.zeros(3)
    saved = {"rows": old_rows, "columns": [{"name": "c"}]}
    rows_lib.upgrade_rows(saved, arrays)
    assert saved["rows"] == rows
    assert sorted(arrays) == sorted([f"unseen/c/row/{r['id']}" for r in rows] + ["unseen/c/labels"])
    np.testing.assert_array_equal(arrays["unseen/c/row/specific/greedy"], np.full(3, 8))
    with pytest.raises(ValueError, match="Unknown selection method 'best'"):
        run_lib._choose(types.SimpleNamespace(columns=[], ingredients=[]), "best")
