"""One live job per workdir: a lease that a job takes before it writes anything, renews while
it runs and gives back when it ends.

The lease is a small JSON file (`lease.json` in a workdir; `<file>.lease` beside a result file
written elsewhere) naming its holder: host, pid, command, start time, and a heartbeat that a
thread of the holder renews every `RENEW_SECONDS`. A second job finds it and stops before
writing anything (`errors.BusyError`, exit status 6), naming the holder and what to do. A lease
is taken over, with a warning, when its holder is gone: its heartbeat is older than
`STALE_SECONDS`, or its process no longer runs on this very host (a job killed with SIGKILL
and started again at once). `force=True` (the drivers' `--force_lease`) takes it whatever the
holder's state.

Taking a lease is one atomic create-if-absent, so of two jobs starting together one wins:
locally a hard link of a complete file (fails if the name exists; where a file system has no
hard links, such as gcsfuse, an exclusive create); in an object store an
upload with the "create" precondition (`fsspec` mode "xb": on gs:// `ifGenerationMatch=0`).
Taking over a stale lease replaces it; should two jobs take over the same stale lease at once,
the one whose file was replaced learns it at its next renewal (`lost`) and stops before its
next write (`check`).

On several processes only process 0 holds the lease; it writes the job's files.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from seasoning import errors
from seasoning import workdir as workdir_lib

FILE = "lease.json"  # a workdir's lease
RENEW_SECONDS = 30.0
STALE_SECONDS = 150.0  # five renewals missed


def of_workdir(workdir: workdir_lib.PathLike, **kwargs: Any) -> Lease:
    """The lease of a workdir (train, the soup sweep, the shift run)."""
    return Lease(workdir_lib.path(workdir, FILE), what=os.fspath(workdir), **kwargs)


def of_file(file: workdir_lib.PathLike, **kwargs: Any) -> Lease:
    """The lease of one result file (evaluate's output: one evaluation per file, while training
    may still write the workdir)."""
    return Lease(workdir_lib.path(f"{os.fspath(file)}.lease"), what=os.fspath(file), **kwargs)


class Lease:
    """The claim of one job on what it writes; a context manager (acquire, then release).

    Attributes:
      file: the lease file.
      lost: the record of the job that took the lease over while this one held it (None while
        this job holds it).
    """

    def __init__(
        self,
        file: workdir_lib.PathLike,
        *,
        what: str = "",
        force: bool = False,
        stale_seconds: float = STALE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
    ):
        if not 0 < renew_seconds < stale_seconds:
            raise errors.UserError(
                f"lease renew_seconds={renew_seconds!r}, stale_seconds={stale_seconds!r}: "
                "expected 0 < renew_seconds < stale_seconds."
            )
        self.file = workdir_lib.path(file)
        self._what = what or os.fspath(self.file.parent)
        self._force = force
        self._stale_seconds = stale_seconds
        self._renew_seconds = renew_seconds
        self._token = uuid.uuid4().hex
        self._started = _utc_now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: dict[str, Any] | None = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lease, or raises `errors.BusyError` naming the live holder.

        Raises:
          BusyError: another job holds the lease and is alive (without `force`).
        """
        if not self._create():
            held = self._read()
            reason = "forced (--force_lease)" if self._force else self._stale_reason(held)
            if reason is None:
                raise errors.BusyError(self._busy_message(held))
            logging.warning(
                "Taking over the lease of %s from %s: %s.", self._what, _describe(held), reason
            )
            self._write()
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raises `errors.BusyError` if another job has taken the lease over from this one."""
        if self.lost is not None:
            raise errors.BusyError(
                f"{self._what}: another job took this job's lease over ({_describe(self.lost)}; "
                f"{self.file}); this job stops without writing more. Let one job run per "
                "workdir."
            )

    def release(self) -> None:
        """Stops renewing and deletes the lease file if this job still holds it."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        held = self._read()
        if held is not None and held.get("token") == self._token:
            self.file.unlink(missing_ok=True)

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "token": self._token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_started": _process_start(os.getpid()),
                "command": " ".join(sys.argv)[:500],
                "started": self._started,
                "heartbeat": now,
                "heartbeat_utc": _utc_now(),
            },
            indent=2,
        ).encode("utf-8")

    def _create(self) -> bool:
        """Writes the lease if there is none (atomically); False if there was one."""
        data = self._record()
        if workdir_lib.is_object_store(self.file):
            fs, key = fsspec.core.url_to_fs(os.fspath(self.file))
            try:
                with fs.open(key, "xb") as f:
                    f.write(data)
            except FileExistsError:
                return False
            return True
        folder = os.path.dirname(os.path.abspath(self.file))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lease.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.file)  # fails if the name exists
        except FileExistsError:
            return False
        except OSError:  # no hard links here (e.g. gcsfuse): an exclusive create instead
            return self._create_exclusive(data)
        finally:
            os.unlink(tmp)
        return True

    def _create_exclusive(self, data: bytes) -> bool:
        """`_create` where hard links fail: O_EXCL (for a moment the file is empty, which
        another job would read as an unreadable lease)."""
        try:
            fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _write(self) -> None:
        workdir_lib.write_bytes(self.file, self._record())

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.file.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # not a lease this code wrote: unreadable

    def _renew(self) -> None:
        while not self._stop.wait(self._renew_seconds):
            held = self._read()
            if held is None or held.get("token") != self._token:
                self.lost = held or {}
                logging.error("%s: the lease was taken over by %s.", self._what, _describe(held))
                return
            try:
                self._write()
            except (OSError, errors.WriteError) as e:  # a full disk must not end the renewals
                logging.warning("Could not renew the lease %s: %s", self.file, e)

    def _stale_reason(self, held: dict[str, Any] | None) -> str | None:
        """Why the lease `held` may be taken over (None: its holder is alive)."""
        if held is None:
            return "it was released meanwhile"
        if not held:
            return "the lease file is unreadable"
        age = time.time() - float(held.get("heartbeat", 0))
        if age > self._stale_seconds:
            limit = self._stale_seconds
            return f"its last heartbeat was {age:.0f} s ago (stale after {limit:.0f} s)"
        if held.get("host") == socket.gethostname() and not _running(held):
            return f"its process {held.get('pid')} no longer runs on this host"
        return None

    def _busy_message(self, held: dict[str, Any] | None) -> str:
        age = time.time() - float((held or {}).get("heartbeat", 0))
        return (
            f"{self._what} is in use by another job: {_describe(held)}, last heartbeat "
            f"{age:.0f} s ago ({self.file}). Wait for it to finish, or stop it, or write "
            f"elsewhere; a lease whose heartbeat is older than {self._stale_seconds:.0f} s is "
            "taken over on its own, and --force_lease takes it now (only when that job is "
            "surely gone, e.g. its machine died)."
        )


def _describe(held: dict[str, Any] | None) -> str:
    if not held:
        return "an unknown job"
    return (
        f"pid {held.get('pid')} on {held.get('host')}, started {held.get('started')}, "
        f"command: {held.get('command')}"
    )


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None elsewhere: with
    the pid, it names one process (pids are reused)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat(5), counted after the command name
    except (OSError, IndexError, ValueError):
        return None


def _running(held: dict[str, Any]) -> bool:
    """Whether the process of `held` (on this host) still runs."""
    pid = int(held.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    started = held.get("pid_started")
    return started is None or _process_start(pid) in (None, started)


@contextlib.contextmanager
def hold(lease: Lease) -> Iterator[Lease]:
    """Holds `lease` for the block on process 0 (the job's writer), released at its end.

    On several processes every process enters it: if process 0 is refused, every process
    raises (the others saying that process 0 was refused), so that none waits in a collective.

    Raises:
      BusyError: another live job holds the lease.
    """
    refusal = None
    if jax.process_index() == 0:
        try:
            lease.acquire()
        except errors.BusyError as e:
            refusal = e
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
        if refused and refusal is None:
            refusal = errors.BusyError(
                f"{lease.file}: process 0 found it held by another live job (see its log)."
            )
    if refusal is not None:
        raise refusal
    try:
        yield lease
    finally:
        lease.release()
