"""A checkpoint that cannot be written (disk full, quota, size limit, read-only, permission):
one line naming the folder, the step, its size and the checkpoint kept (exit status 4:
tests/test_divergence.py); the unfinished save's temporary folder deleted at the next start."""

from __future__ import annotations

import contextlib
import os
import resource
import signal

import numpy as np
import pytest

from seasoning import checkpoints, errors

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
    assert checkpoints.write_error_reason(ValueError("shape mismatch")) is None
    disk = ValueError("RESOURCE_EXHAUSTED: Failed writing [os_error_code='28']")
    assert checkpoints.write_error_reason(disk) == "no space left on the device"
    try:
        try:
            raise PermissionError(13, "Permission denied")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert checkpoints.write_error_reason(outer) == "permission denied"
