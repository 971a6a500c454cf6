"""Metrics out of a run: JSON lines, TensorBoard events, and a progress line with ETA.

Both go to local workdirs and to object stores (`gs://bucket/run`). An object cannot be
appended to, so there metrics.jsonl and the event file are kept in memory and uploaded whole
(`workdir.open_append`): metrics.jsonl at most every `FLUSH_SECONDS` and at `close`, events at
TensorBoard's own flushes (every `FLUSH_SECONDS`) and at `close`. A job killed in between
loses at most that many seconds of records from the bucket; a resumed run appends to the
metrics.jsonl already there.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from typing import Any

from absl import logging

from seasoning import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"
FLUSH_SECONDS = 10.0


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported late (it pulls in protobuf) and without PyTorch.

    tensorboardX's writer module imports torch whenever it is installed (the `torch` and
    `test-torch` extras), only to accept torch tensors, which nothing here passes: that import
    slowed the start of every training process (docs/development.md, "How the suite is run").
    It is refused while tensorboardX loads (`sys.modules["torch"] = None` makes `import torch`
    raise ImportError, which tensorboardX expects), unless torch is already imported.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends `{"step": s, "time": t, **scalars}` lines to metrics.jsonl and TensorBoard.

    Only one process (index 0) of a multi-host job should write; others pass `enabled=False`.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self._enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        folder = workdir_lib.path(workdir)
        self._path = folder / METRICS_FILE
        self._jsonl = workdir_lib.open_append(self._path, every_s=FLUSH_SECONDS)
        if tensorboard:
            if workdir_lib.is_object_store(folder):
                _events_through_epath(str(folder).split("://", 1)[0])
            self._tb = _summary_writer_class()(logdir=str(folder), flush_secs=FLUSH_SECONDS)

    def write(self, step: int, scalars: dict[str, Any], *, prefix: str = "") -> None:
        """Writes scalar metrics for `step`, keys prefixed by `prefix` (e.g. "train/")."""
        if not self._enabled:
            return
        values = {f"{prefix}{k}": _to_python(v) for k, v in scalars.items()}
        self._write_line({"step": int(step), "time": round(time.time(), 3), **values})
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(key, value, int(step))

    def write_event(self, step: int, **fields: Any) -> None:
        """A non-scalar record (e.g. "resumed", "init_from") in metrics.jsonl only."""
        if self._enabled:
            self._write_line({"step": int(step), "time": round(time.time(), 3), **fields})

    def _write_line(self, record: dict[str, Any]) -> None:
        with workdir_lib.writing(self._path):
            self._jsonl.write((json.dumps(record) + "\n").encode("utf-8"))
            self._jsonl.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            with workdir_lib.writing(self._path):
                self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class _EpathEventFiles:
    """tensorboardX's writer factory for one URI scheme: event files through etils.epath.

    tensorboardX's own gs:// writer needs google-cloud-storage and s3:// needs boto3; this one
    writes wherever the workdir's other files go (`workdir.open_append`, uploaded whole at
    each flush), with the same backend.
    """

    def open(self, path: str):
        return workdir_lib.open_append(path)

    def directory_check(self, path: str) -> None:
        """Nothing to do: an object store has no folders."""


def _events_through_epath(scheme: str) -> None:
    """Makes tensorboardX write `scheme://` event files through `_EpathEventFiles`."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory(scheme, _EpathEventFiles())


def _to_python(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Progress:
    """Logs `step s/N (p%) | x steps/s | y img/s | ETA h:mm:ss` every `every_s` seconds.

    Set `input_wait` (a fraction of wall time) to add `input wait z%` to the line.
    """

    input_wait: float | None = None

    def __init__(
        self,
        total_steps: int,
        *,
        start_step: int = 0,
        batch_size: int = 0,
        every_s: float = 10.0,
        name: str = "train",
    ):
        self._total, self._batch, self._every, self._name = total_steps, batch_size, every_s, name
        self._t0 = self._last = time.monotonic()
        self._step0 = start_step

    def update(self, step: int, force: bool = False) -> str | None:
        """Call after finishing `step` steps in all; returns the line when it logged one."""
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return None
        self._last = now
        line = self.line(step, now)
        logging.info("%s", line)
        return line

    def line(self, step: int, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self._t0
        done = step - self._step0
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [
            f"{self._name} step {step}/{self._total} ({100 * step / max(self._total, 1):.1f}%)"
        ]
        parts.append(f"{rate:.2f} steps/s")
        if self._batch:
            parts.append(f"{rate * self._batch:.0f} img/s")
        if self.input_wait is not None:
            parts.append(f"input wait {100 * self.input_wait:.0f}%")
        if rate > 0:
            eta = datetime.timedelta(seconds=round((self._total - step) / rate))
            parts.append(f"ETA {eta}")
        return " | ".join(parts)
