"""A checkpoint that cannot be written (disk full, quota, size limit, read-only, permission):
one line naming the folder, the step, its size and the checkpoint kept (exit status 4:
tests/test_divergence.py); the unfinished save's temporary folder deleted at the next start.
The same for a result file and metrics.jsonl: one line naming the file, its earlier content
kept."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal

import numpy as np
import pytest

from seasoning import checkpoints, errors, metrics
from seasoning import workdir as workdir_lib

META = {"model": {"name": "test"}}


@contextlib.contextmanager
def _file_size_limit(max_bytes: int):
    """Files this process writes may not grow past `max_bytes` (a write beyond fails with
    EFBIG, as a full disk fails with ENOSPC: the same path through tensorstore and orbax)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("use_async", [True, False])
def test_a_save_that_cannot_be_written_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, use_async
):
    workdir = str(tmp_path / "run")
    ckpt = checkpoints.Checkpointer(workdir, use_async=use_async)
    ckpt.save(1, {"w": np.ones(8, np.float32)}, META)
    ckpt.wait()
    big = {"w": np.random.default_rng(0).random(2**20, np.float32)}  # 4 MiB: over the limit
    with _file_size_limit(2**20), pytest.raises(errors.WriteError) as info:
        ckpt.save(2, big, META)
        ckpt.wait()  # an asynchronous save fails here
    message = str(info.value)
    assert f"Could not write checkpoint 2 to {checkpoints.directory(workdir)}" in message
    assert "larger than the file system or the process's limit allows" in message
    assert "4.0 MiB of arrays" in message and "previous checkpoint, step 1, is intact" in message
    folder = checkpoints.directory(workdir)
    assert any(name.startswith("2.") for name in os.listdir(folder))  # the unfinished save
    again = checkpoints.Checkpointer(workdir)  # the next start
    assert again.latest_step() == 1
    again.save(3, {"w": np.ones(8, np.float32)}, META)  # orbax deletes them before a save
    again.wait()
    assert sorted(os.listdir(folder)) == ["1", "3"]
    again.close()


def test_other_errors_are_not_taken_for_write_errors():
    assert errors.write_error_reason(ValueError("shape mismatch")) is None
    disk = ValueError("RESOURCE_EXHAUSTED: Failed writing [os_error_code='28']")
    assert errors.write_error_reason(disk) == "no space left on the device"
    try:
        try:
            raise PermissionError(13, "Permission denied")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert errors.write_error_reason(outer) == "permission denied"


def test_a_result_or_metrics_file_that_cannot_be_written_is_one_line(tmp_path):
    result = tmp_path / "eval.json"
    workdir_lib.write_json(result, {"accuracy": 0.5})
    with _file_size_limit(1024), pytest.raises(errors.WriteError) as info:
        workdir_lib.write_json(result, {"rows": ["x" * 4096]})
    assert str(info.value).startswith(f"Could not write {result}: a file larger than")
    assert json.loads(result.read_text()) == {"accuracy": 0.5}  # the previous version
    assert os.listdir(tmp_path) == ["eval.json"]  # no temporary file left

    writer = metrics.MetricWriter(str(tmp_path / "run"), tensorboard=False)
    writer.write(1, {"loss": 1.0}, prefix="train/")
    size = (tmp_path / "run" / metrics.METRICS_FILE).stat().st_size
    with _file_size_limit(size + 64), pytest.raises(errors.WriteError, match="metrics.jsonl"):
        writer.write_event(2, event="note", message="x" * 4096)
    lines = (tmp_path / "run" / metrics.METRICS_FILE).read_text().splitlines()
    assert json.loads(lines[0])["train/loss"] == 1.0
