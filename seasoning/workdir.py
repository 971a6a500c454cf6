"""A run's directory: its files, atomic writes, and the guard against mixing two runs.

A workdir holds `config.json`, `checkpoints/`, `metrics.jsonl`, TensorBoard events and
results. Files are written atomically (temporary file, then rename), and a workdir that
belongs to a different config is never written into silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from seasoning import errors

CONFIG_FILE = "config.json"


def _replace_atomically(path: str, write: Callable[[Any], None], mode: str) -> None:
    """Writes `path` through `write(file)` on a temporary file in its folder, then a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    _replace_atomically(path, lambda f: f.write(text), "w")


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes named arrays as an .npz file, atomically (read back with `read_arrays`)."""
    _replace_atomically(path, lambda f: np.savez(f, **arrays), "wb")


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file; never unpickles (a file read never runs code)."""
    with np.load(path, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class WorkdirConflictError(errors.UserError):
    """The workdir already belongs to a run with a different config."""


def claim(workdir: str, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> bool:
    """Makes `workdir` this run's: writes config.json, or checks the one there.

    Args:
      workdir: the run's directory.
      config: the run's config as JSON-like dicts.
      defaults: the schema's defaults (same form). A key missing from an existing config.json
        (written before the key existed) counts as its default, so a run made by an older
        version resumes as long as the new config keeps that default.

    Returns:
      True when the workdir already held this very config (a resumed run).

    Raises:
      WorkdirConflictError: config.json holds a different config; lists the differences.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        existing = with_defaults(read_json(path), defaults or {})
        if existing == config:
            return True
        diffs = "\n  ".join(diff_dicts(existing, config))
        raise WorkdirConflictError(
            f"{workdir} holds a run with a different config; not overwriting it.\n  {diffs}\n"
            "Use a new --workdir, or delete that one if it is no longer wanted."
        )
    os.makedirs(workdir, exist_ok=True)
    write_json(path, config)
    return False


def with_defaults(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`config` with every key of `defaults` that it lacks added, recursively."""
    out = dict(config)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = with_defaults(out[key], value)
    return out


def diff_dicts(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences `key: old -> new` between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += diff_dicts(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_result_file(
    path: str, settings: dict[str, Any], *, overwrite: bool = False, resume: bool = False
) -> dict[str, Any] | None:
    """The one guard for result files (eval.json, grid.json, shift.json).

    A result file records the `settings` that produced it (and `complete: false` while a long
    job is still writing it). Same settings and complete: the result is reused. Same settings
    and unfinished: continued with `resume`, else refused. Other settings: refused unless
    `overwrite`, naming each difference.

    Args:
      path: the result file.
      settings: everything that determines the result (JSON-like).
      overwrite: replace a file holding other settings (or an unfinished job).
      resume: continue an unfinished job with the same settings.

    Returns:
      The file's content to reuse (complete) or continue (resume), or None to start afresh.

    Raises:
      UserError: the file holds other settings, or an unfinished job, and neither flag says
        what to do with it.
    """
    try:
        existing = read_json(path)
    except FileNotFoundError:
        return None
    if overwrite:
        return None
    old = existing.get("settings", {})
    if old != settings:
        diffs = "\n  ".join(diff_dicts(old, settings))
        raise errors.UserError(
            f"{path} holds a result of other settings; not overwriting it.\n  {diffs}\n"
            "Write elsewhere (--output / another --workdir), or pass --overwrite to replace it."
        )
    if existing.get("complete", True) or resume:
        return existing
    raise errors.UserError(
        f"{path} holds an unfinished job with these settings: pass --resume to continue it "
        "(or --overwrite to start again)."
    )
