"""One live job per workdir (seasoning/lease.py): a local folder and a gs:// folder in the fake
bucket (`root`, tests/buckets.py: an upload in mode "xb" fails on an existing object, as on
GCS), and a training job refused on a live workdir. The evaluate, sweep and shift refusals are
tested beside their drivers."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from seasoning import config_lib, errors, lease, train
from seasoning import workdir as workdir_lib

FMNIST = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs/fmnist_cnn_linf.py")


def _held_by(file, **fields) -> None:
    """Writes a lease file of another job (host, pid, heartbeat as given)."""
    record = {
        "token": "other",
        "host": "elsewhere",
        "pid": 1,
        "started": "2026-01-01",
        "heartbeat": time.time(),
        "command": "python -m seasoning.train",
    }
    record.update(fields)
    workdir_lib.write_json(file, record)


def _token(file) -> str:
    return json.loads(workdir_lib.path(file).read_bytes())["token"]


def test_a_live_lease_refuses_a_second_job_until_it_is_released(root):
    first = lease.of_workdir(f"{root}/w")
    first.acquire()
    held = json.loads(first.file.read_bytes())
    assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(errors.BusyError, match=rf"in use by another job: pid {os.getpid()} on"):
        lease.of_workdir(f"{root}/w").acquire()
    assert _token(first.file) == held["token"]  # the first job's lease is untouched
    first.release()
    assert not first.file.exists()
    with lease.of_workdir(f"{root}/w") as second:
        assert _token(second.file) != held["token"]
    assert not second.file.exists()


def test_a_stale_or_forced_lease_is_taken_over_with_a_warning(root, caplog):
    file = f"{root}/w/{lease.FILE}"
    _held_by(file, heartbeat=time.time() - 1000)
    with caplog.at_level(logging.WARNING), lease.of_workdir(f"{root}/w") as taken:
        assert _token(file) != "other"
    assert "its last heartbeat was 1000 s ago (stale after 150 s)" in caplog.text
    assert not taken.file.exists()

    _held_by(file)  # alive on another host
    with pytest.raises(errors.BusyError, match="pid 1 on elsewhere.*--force_lease"):
        lease.of_workdir(f"{root}/w").acquire()
    with lease.of_workdir(f"{root}/w", force=True):
        assert _token(file) != "other"
    assert "forced (--force_lease)" in caplog.text


def test_the_lease_of_a_process_gone_from_this_host_is_taken_over(tmp_path, caplog):
    """A job killed with SIGKILL and started again at once: no need to wait for staleness."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    file = tmp_path / "w" / lease.FILE
    _held_by(file, host=socket.gethostname(), pid=int(dead.stdout))
    with caplog.at_level(logging.WARNING), lease.of_workdir(tmp_path / "w"):
        pass
    assert f"its process {int(dead.stdout)} no longer runs on this host" in caplog.text


def test_a_job_whose_lease_was_taken_over_learns_it_and_stops_writing(root):
    first = lease.of_workdir(f"{root}/w", renew_seconds=0.05, stale_seconds=1.0)
    first.acquire()
    first.check()  # held: nothing to say
    second = lease.of_workdir(f"{root}/w", force=True)
    second.acquire()
    deadline = time.monotonic() + 10
    while first.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(errors.BusyError, match="another job took this job's lease over"):
        first.check()
    first.release()  # leaves the new holder's lease in place
    assert _token(second.file) == json.loads(second.file.read_bytes())["token"]
    assert second.file.exists()
    second.release()
    assert not second.file.exists()


def test_the_lease_timings_are_checked():
    with pytest.raises(errors.UserError, match="expected 0 < renew_seconds < stale_seconds"):
        lease.Lease("w/lease.json", renew_seconds=60, stale_seconds=30)


def test_training_on_a_live_workdir_is_refused_before_writing_anything(tmp_path):
    workdir = tmp_path / "run"
    config = config_lib.load_config(f"{FMNIST}:runlocal", ["max_steps=2"])
    with lease.of_workdir(workdir) as holder:
        with pytest.raises(errors.BusyError, match=f"{workdir} is in use by another job"):
            train.train_and_evaluate(config, str(workdir))
        assert os.listdir(workdir) == [lease.FILE] and holder.lost is None


def test_without_hard_links_the_lease_is_an_exclusive_create(tmp_path, monkeypatch):
    """Some file systems (gcsfuse, some network mounts) refuse hard links."""

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with lease.of_workdir(tmp_path / "w") as first:
        assert _token(first.file) and os.listdir(tmp_path / "w") == [lease.FILE]
        with pytest.raises(errors.BusyError, match="in use by another job"):
            lease.of_workdir(tmp_path / "w").acquire()
    assert os.listdir(tmp_path / "w") == []


def test_a_renewal_that_cannot_be_written_is_a_warning_and_renewing_goes_on(
    tmp_path, monkeypatch, caplog
):
    """A full disk during the job: the heartbeat thread says so and keeps trying."""
    held = lease.of_workdir(tmp_path / "w", renew_seconds=0.05, stale_seconds=1.0)
    held.acquire()

    def full(file, data):
        raise errors.WriteError(f"Could not write {file}: no space left on the device.")

    with caplog.at_level(logging.WARNING):
        monkeypatch.setattr(workdir_lib, "write_bytes", full)
        time.sleep(0.3)
        assert held._thread.is_alive() and held.lost is None
    monkeypatch.undo()
    held.release()
    assert "Could not renew the lease" in caplog.text and not held.file.exists()
