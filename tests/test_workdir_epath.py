"""Workdirs in object stores: every workdir file goes through etils.epath, so `gs://bucket/run`
works as a local folder does.

The bucket here is an in-memory fsspec file system (`tests/buckets.py`, fixtures `bucket` and
`root` in conftest.py) through etils' real fsspec backend.

Not covered: saving and restoring an orbax checkpoint in the bucket. Orbax writes the arrays
with tensorstore, whose own gcs driver talks HTTP to Google Cloud Storage (not through epath
or fsspec), and on gs:// its CheckpointManager asks the real bucket (google-cloud-storage)
whether it has a hierarchical namespace. What runs here is orbax finding no checkpoint in the
bucket through epath, and the checkpoint folder it is given (the URI, not an absolute local
path).
"""

import importlib.machinery
import json
import struct
import sys
import types

import buckets
import numpy as np
import pytest
from fsspec.registry import _registry as fsspec_registry  # what register_implementation fills
from tensorboardX.proto import event_pb2

from seasoning import checkpoints, errors, metrics, plots, report, runs
from seasoning import workdir as workdir_lib
from seasoning.soup import sweep


def test_path_joins_as_os_path_join_does_and_a_uri_starts_afresh():
    assert str(workdir_lib.path("runs/x", "eval.json")) == "runs/x/eval.json"
    assert str(workdir_lib.path("runs/x", "/tmp/eval.json")) == "/tmp/eval.json"
    assert not workdir_lib.is_object_store("runs/x")


def test_paths_in_the_bucket(bucket):
    assert str(workdir_lib.path("gs://bucket/run/", "eval.json")) == "gs://bucket/run/eval.json"
    assert str(workdir_lib.path("runs/x", "gs://b/e.json")) == "gs://b/e.json"
    assert workdir_lib.is_object_store(workdir_lib.path("gs://bucket/run"))


def test_a_gs_workdir_without_its_backend_names_the_extra_to_install(monkeypatch):
    monkeypatch.setenv("EPATH_USE_TF", "0")
    monkeypatch.delitem(fsspec_registry, "gcs", raising=False)
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # import gcsfs fails
    with pytest.raises(
        errors.UserError, match=r"gs://b/run: .*gcsfs.*pip install 'seasoning\[gcs\]'"
    ):
        workdir_lib.claim("gs://b/run", {"seed": 0})
    with pytest.raises(errors.UserError, match="unsupported scheme ftp://"):
        workdir_lib.path("ftp://host/run")


def test_the_guard_writes_refuses_and_overwrites(root):
    """The one guard for result files reads the file first: reuse, refuse, resume, overwrite."""
    file = workdir_lib.path(root, "eval.json")
    settings = {"n": 10, "threats": ["linf:0.1"]}
    assert workdir_lib.check_result_file(file, settings) is None  # nothing there yet
    workdir_lib.write_json(file, {"settings": settings, "acc": 0.5, "complete": False})
    before = workdir_lib.read_text(file)
    with pytest.raises(errors.UserError, match="unfinished job.*--resume"):
        workdir_lib.check_result_file(file, settings)
    assert workdir_lib.check_result_file(file, settings, resume=True)["acc"] == 0.5
    with pytest.raises(errors.UserError, match=r"other settings.*\n  n: 10 -> 20"):
        workdir_lib.check_result_file(file, {**settings, "n": 20}, resume=True)
    assert workdir_lib.read_text(file) == before  # a refusal writes nothing
    assert workdir_lib.check_result_file(file, {**settings, "n": 20}, overwrite=True) is None
    workdir_lib.write_json(file, {"settings": settings, "acc": 0.75})  # complete
    assert workdir_lib.check_result_file(file, settings)["acc"] == 0.75


def test_claim_a_workdir(root):
    run = f"{root}/run"
    assert workdir_lib.claim(run, {"seed": 1}) is False
    assert workdir_lib.read_json(workdir_lib.path(run, "config.json")) == {"seed": 1}
    assert workdir_lib.claim(run, {"seed": 1}) is True
    with pytest.raises(workdir_lib.WorkdirConflictError, match="seed: 1 -> 2"):
        workdir_lib.claim(run, {"seed": 2})
    assert workdir_lib.read_json(workdir_lib.path(run, "config.json")) == {"seed": 1}


def test_text_json_arrays_and_bytes_round_trip(root):
    arrays = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": np.array([0.5], np.float32)}
    workdir_lib.write_arrays(workdir_lib.path(root, "predictions.npz"), arrays)
    back = workdir_lib.read_arrays(workdir_lib.path(root, "predictions.npz"))
    assert back.keys() == arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])
        assert back[key].dtype == arrays[key].dtype
    workdir_lib.write_atomic(workdir_lib.path(root, "report.md"), "| a |\n")
    assert workdir_lib.read_text(workdir_lib.path(root, "report.md")) == "| a |\n"
    workdir_lib.write_json(f"{root}/sub/grid.json", {"rows": [1]})  # a new folder is made
    assert workdir_lib.read_json(f"{root}/sub/grid.json") == {"rows": [1]}
    with pytest.raises(FileNotFoundError):
        workdir_lib.read_json(f"{root}/absent.json")


def test_a_failed_write_leaves_the_previous_file_whole(root):
    file = workdir_lib.path(root, "eval.json")
    workdir_lib.write_json(file, {"acc": 1})
    with pytest.raises(TypeError):
        workdir_lib.write_json(file, {"acc": object()})  # not JSON: fails while rendering
    assert workdir_lib.read_json(file) == {"acc": 1}
    folder = workdir_lib.path(root)
    assert sorted(p.name for p in folder.iterdir()) == ["eval.json"]  # no temporary left


def test_an_object_is_written_in_one_upload_without_a_rename(bucket):
    """On a bucket each write is one upload of the whole object (buckets.FakeBucket fails on renames
    and appends); rewriting it replaces the object."""
    workdir_lib.write_json("gs://bucket/run/eval.json", {"acc": 1})
    workdir_lib.write_arrays("gs://bucket/run/predictions.npz", {"x": np.zeros(3)})
    workdir_lib.write_json("gs://bucket/run/eval.json", {"acc": 2})
    assert dict(bucket.uploads) == {"bucket/run/eval.json": 2, "bucket/run/predictions.npz": 1}
    assert json.loads(buckets.objects()["bucket/run/eval.json"]) == {"acc": 2}
    assert sorted(buckets.objects()) == ["bucket/run/eval.json", "bucket/run/predictions.npz"]


def _read_events(data: bytes) -> list:
    """The Event protos of a TFRecord event file."""
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        out.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
        pos += 12 + length + 4
    return out


def test_metrics_and_tensorboard_events_go_to_the_bucket(bucket, tmp_path, monkeypatch):
    """metrics.jsonl is uploaded whole at most every FLUSH_SECONDS and at close; a resumed run
    appends to it; TensorBoard's event file is uploaded through epath too; nothing is written
    locally; `report.training_seconds` reads it back."""
    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 3600.0)
    writer = metrics.MetricWriter("gs://bucket/run")
    writer.write_event(0, event="start")
    writer.write(10, {"loss": np.float32(0.5), "accuracy": 0.25}, prefix="train/")
    assert "bucket/run/metrics.jsonl" not in buckets.objects()  # not yet: at most every hour
    writer.close()
    lines = [json.loads(x) for x in buckets.objects()["bucket/run/metrics.jsonl"].splitlines()]
    assert [x["step"] for x in lines] == [0, 10] and lines[1]["train/loss"] == 0.5
    events = [k for k in buckets.objects() if k.startswith("bucket/run/events.out.tfevents.")]
    assert len(events) == 1
    scalars = {
        v.tag: (e.step, v.simple_value)
        for e in _read_events(buckets.objects()[events[0]])
        for v in e.summary.value
    }
    assert scalars == {"train/loss": (10, 0.5), "train/accuracy": (10, 0.25)}

    monkeypatch.setattr(metrics, "FLUSH_SECONDS", 0.0)  # now every write is uploaded
    resumed = metrics.MetricWriter("gs://bucket/run", tensorboard=False)
    resumed.write_event(10, event="resumed")
    text = buckets.objects()["bucket/run/metrics.jsonl"].decode()
    assert [json.loads(x)["step"] for x in text.splitlines()] == [0, 10, 10]
    resumed.write(20, {"loss": 0.25}, prefix="train/")
    resumed.close()
    records = [json.loads(x) for x in buckets.objects()["bucket/run/metrics.jsonl"].splitlines()]
    assert [x["step"] for x in records] == [0, 10, 10, 20]
    expected = (records[1]["time"] - records[0]["time"]) + (records[3]["time"] - records[2]["time"])
    assert report.training_seconds("gs://bucket/run") == pytest.approx(expected)
    assert list(tmp_path.iterdir()) == []  # nothing went to a local "gs:" folder


def test_metrics_append_locally(tmp_path):
    for step in (1, 2):
        writer = metrics.MetricWriter(str(tmp_path / "run"), tensorboard=False)
        writer.write(step, {"loss": 1.0 / step})
        writer.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in lines] == [1.0, 0.5]


def test_plots_and_a_report_table_from_the_bucket(bucket):
    path = plots.weight_bars({"grid": {"single": [0.5, 0.5]}}, ["a", "b"], "gs://bucket/s/w.png")
    assert path == "gs://bucket/s/w.png"
    rows = [{"weights": [1 - w, w], "clean": 0.9 - w / 2, "linf": 0.2 + w / 4} for w in (0, 0.5, 1)]
    paths = sweep.make_plots({"rows": rows}, ["a", "b"], ["clean", "linf"], [], "gs://bucket/s")
    assert paths == ["gs://bucket/s/line.png", "gs://bucket/s/front.png"]
    for name in ("w.png", "line.png", "front.png"):
        assert buckets.objects()[f"bucket/s/{name}"].startswith(b"\x89PNG")
    run = "gs://bucket/runs/linf"
    workdir_lib.claim(run, {"threat": {"norm": "linf", "eps": 0.1}})
    result = {
        "settings": {"threats": ["linf:0.1"], "split": "test", "version": "fast"},
        "threat_models": {"linf:0.1": {"robust_accuracy": 0.25}},
        "clean_accuracy": 0.5,
        "union": {"robust_accuracy": 0.25},
        "n_examples": 8,
        "dataset": "d",
    }
    workdir_lib.write_json(f"{run}/eval.json", result)
    workdir_lib.write_atomic(
        f"{run}/metrics.jsonl",
        '{"step": 0, "time": 0, "event": "start"}\n{"step": 9, "time": 120.0}\n',
    )
    assert "| linf | linf 0.1 | 50.0 | 25.0 | 25.0 | 2.0 min |" in report.table([run])
    with pytest.raises(errors.MissingInputError, match="evaluate the run first"):
        report.table([run], eval_file="absent.json")


def _fake_google_cloud_storage(monkeypatch):
    """Makes `google.cloud.storage` look installed (orbax needs it on gs://)."""
    module = types.ModuleType("google.cloud.storage")
    module.__spec__ = importlib.machinery.ModuleSpec("google.cloud.storage", None)
    monkeypatch.setitem(sys.modules, "google.cloud.storage", module)


def test_orbax_is_given_the_bucket_uri(bucket, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # not installed
    with pytest.raises(errors.UserError, match=r"google-cloud-storage.*seasoning\[gcs\]"):
        checkpoints.directory("gs://bucket/run")
    _fake_google_cloud_storage(monkeypatch)
    assert str(checkpoints.directory("gs://bucket/run/")) == "gs://bucket/run/checkpoints"
    assert str(checkpoints.directory("run")) == str(tmp_path.resolve() / "run" / "checkpoints")
    monkeypatch.setitem(fsspec_registry, "s3", buckets.FakeBucket)  # s3fs "installed"
    with pytest.raises(errors.UserError, match="local paths and in gs:// buckets only"):
        checkpoints.directory("s3://bucket/run")


def test_runs_load_reads_the_bucket(bucket, monkeypatch):
    """config.json is read from the bucket, and orbax looks for checkpoints there."""
    _fake_google_cloud_storage(monkeypatch)
    with pytest.raises(errors.MissingInputError, match="gs://bucket/none/config.json not found"):
        runs.load("gs://bucket/none")
    workdir_lib.claim("gs://bucket/run", {"seed": 0})
    with pytest.raises(errors.MissingInputError, match="'gs://bucket/run' holds no checkpoint"):
        runs.load("gs://bucket/run")


def test_an_appended_object_uploads_only_what_changed(bucket):
    with workdir_lib.open_append("gs://bucket/log.txt") as f:
        f.write(b"a\n")
        f.flush()  # every_s=0: uploads now
        f.flush()  # unchanged: no upload
    assert bucket.uploads["bucket/log.txt"] == 1
    with workdir_lib.open_append("gs://bucket/log.txt") as f:
        f.write(b"b\n")
    assert buckets.objects()["bucket/log.txt"] == b"a\nb\n"
    assert bucket.uploads["bucket/log.txt"] == 2
