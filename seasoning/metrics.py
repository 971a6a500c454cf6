"""Metrics out of a run: JSON lines, TensorBoard events, and a progress line with ETA."""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"


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
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # late: pulls in protobuf

            self._tb = SummaryWriter(logdir=workdir, flush_secs=10)

    def write(self, step: int, scalars: dict[str, Any], *, prefix: str = "") -> None:
        """Writes scalar metrics for `step`, keys prefixed by `prefix` (e.g. "train/")."""
        if not self._enabled:
            return
        values = {f"{prefix}{k}": _to_python(v) for k, v in scalars.items()}
        line = {"step": int(step), "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(line) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._tb.add_scalar(key, value, int(step))

    def write_event(self, step: int, **fields: Any) -> None:
        """A non-scalar record (e.g. "resumed", "init_from") in metrics.jsonl only."""
        if self._enabled:
            line = {"step": int(step), "time": round(time.time(), 3), **fields}
            self._jsonl.write(json.dumps(line) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _to_python(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Progress:
    """Logs `step s/N (p%) | x steps/s | y img/s | ETA h:mm:ss` every `every_s` seconds."""

    def __init__(self, total_steps: int, *, start_step: int = 0, batch_size: int = 0,
                 every_s: float = 10.0, name: str = "train"):  # fmt: skip
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
        if rate > 0:
            eta = datetime.timedelta(seconds=round((self._total - step) / rate))
            parts.append(f"ETA {eta}")
        return " | ".join(parts)
