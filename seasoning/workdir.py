"""A run's directory: its files, atomic writes, and the guard against mixing two runs.

A workdir holds `config.json`, `checkpoints/`, `metrics.jsonl`, TensorBoard events and
results, and a workdir that belongs to a different config is never written into silently. It
is a local folder or a folder in an object store (`gs://bucket/run`, `s3://bucket/run`): every
read and write of its files goes through `etils.epath` (what orbax uses), from `path`.

Writes are atomic: a reader sees the previous file or the new one, never part of one.

- Local file system: the bytes go to a temporary file in the target's folder, are fsynced,
  and the temporary file is renamed over the target (a rename is atomic within a file
  system).
- Object store: a single object upload is already atomic (the object appears whole, or not
  at all, and replaces the previous version whole), while a "rename" is a copy and a delete,
  neither atomic nor cheap. So the object is written directly, in one upload of bytes that
  were rendered in memory first (a failure while rendering uploads nothing).

On both, the guard (`claim`, `check_result_file`) reads the existing file before anything is
written, so another run's config or result is never silently replaced. Check and write are
not one transaction; what keeps two jobs from writing one workdir at once is its lease
(`seasoning.lease`), which every driver takes first.

Objects cannot be appended to: `open_append` on an object store keeps the file's bytes in
memory and uploads the whole object again at each flush (metrics.jsonl, TensorBoard events).

`gs://` needs a backend: etils uses TensorFlow's `tf.io.gfile` when TensorFlow is installed,
else fsspec's `gcsfs` (`pip install 'seasoning[gcs]'`); `s3://` needs `s3fs`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from etils import epath

from seasoning import errors

CONFIG_FILE = "config.json"

PathLike = str | os.PathLike
# For each URI scheme etils supports: the fsspec file system etils asks for, and what
# installs it (etils uses TensorFlow's gfile instead when TensorFlow is installed).
_BACKENDS = {
    "gs": ("gcs", "gcsfs", "pip install 'seasoning[gcs]'"),
    "s3": ("s3", "s3fs", "pip install s3fs"),
    "az": ("az", "adlfs", "pip install adlfs"),
    "hf": ("hf", "huggingface_hub", "pip install huggingface_hub"),
}


def is_object_store(p: PathLike) -> bool:
    """Whether `p` is a URI (`gs://bucket/...`, `s3://...`) rather than a local path."""
    return "://" in os.fspath(p)


def path(*parts: PathLike) -> epath.Path:
    """The path of `parts` joined, for reading and writing a workdir's files.

    As with `os.path.join`, an absolute part starts the path afresh, and so does a URI
    (`path("runs/x", "gs://b/eval.json")` is the URI).

    Raises:
      UserError: a URI of a scheme etils does not support, or whose file system has no
        backend installed (the message says what to install).
    """
    start = max((i for i, p in enumerate(parts) if is_object_store(p)), default=0)
    if is_object_store(parts[start]):
        _check_backend(os.fspath(parts[start]))
    out = epath.Path(parts[start])
    for part in parts[start + 1 :]:
        out = out / part
    return out


def _check_backend(uri: str) -> None:
    """Raises UserError unless etils can reach `uri`'s file system (see module doc)."""
    scheme = uri.split("://", 1)[0]
    if scheme not in _BACKENDS:
        raise errors.UserError(
            f"{uri}: unsupported scheme {scheme}://; a workdir is a local path or a URI of "
            + ", ".join(f"{s}://" for s in _BACKENDS)
            + "."
        )
    use_tf = os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")
    if use_tf and importlib.util.find_spec("tensorflow") is not None:
        return  # etils then reads and writes every URI through tf.io.gfile
    import fsspec  # late: only object stores need it

    protocol, package, install = _BACKENDS[scheme]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        raise errors.UserError(
            f"{uri}: {scheme}:// paths need {package} (the file system etils.epath uses "
            f"for them), which is not installed: {install}"
        ) from None


def _ensure_folder(folder: epath.Path) -> None:
    """Creates a local folder; an object store has no folders to create."""
    if not is_object_store(folder):
        folder.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def writing(file: PathLike) -> Iterator[None]:
    """Turns a disk-full, quota, size-limit, read-only or permission error of a write to
    `file` into `errors.WriteError` (exit status 4), naming the file; other errors pass."""
    try:
        yield
    except OSError as e:
        reason = errors.write_error_reason(e)
        if reason is None:
            raise
        raise errors.WriteError(
            f"Could not write {file}: {reason}. Its earlier content is kept (a result file is "
            "replaced whole or not at all). Free space (or fix the permissions) and run the "
            "same command again (with --resume where the command has one)."
        ) from None


def write_bytes(file: PathLike, data: bytes) -> None:
    """Writes `data` to `file` atomically: locally a rename, in an object store one upload.

    Raises:
      WriteError: no space, quota, size limit, read-only, no permission (`writing`).
    """
    with writing(file):
        _write_bytes(path(file), data)


def _write_bytes(target: epath.Path, data: bytes) -> None:
    if is_object_store(target):
        target.write_bytes(data)
        return
    local = os.path.abspath(target)
    folder = os.path.dirname(local)
    _ensure_folder(epath.Path(folder))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(local)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, local)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(file: PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `file` atomically."""
    write_bytes(file, text.encode("utf-8"))


def write_json(file: PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically."""
    write_atomic(file, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_arrays(file: PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Writes named arrays as an .npz file, atomically (read back with `read_arrays`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(file, buffer.getvalue())


def read_arrays(file: PathLike) -> dict[str, np.ndarray]:
    """The arrays of an .npz file; never unpickles (a file read never runs code)."""
    with np.load(io.BytesIO(path(file).read_bytes()), allow_pickle=False) as f:
        return {key: f[key] for key in f.files}


def read_text(file: PathLike) -> str:
    """The UTF-8 text of `file` (FileNotFoundError when there is none)."""
    return path(file).read_text(encoding="utf-8")


def read_json(file: PathLike) -> Any:
    """The JSON content of `file` (FileNotFoundError when there is none)."""
    return json.loads(read_text(file))


def open_append(file: PathLike, *, every_s: float = 0.0) -> io.BufferedWriter | _AppendedObject:
    """`file` opened to append bytes: locally a file in mode "ab", in an object store an
    `_AppendedObject` (the whole object is uploaded again at each flush, at most every
    `every_s` seconds, and at close)."""
    target = path(file)
    if not is_object_store(target):
        _ensure_folder(target.parent)
        return open(target, "ab")  # the caller closes it
    try:
        existing = target.read_bytes()
    except FileNotFoundError:
        existing = b""
    return _AppendedObject(target, existing, every_s)


class _AppendedObject:
    """A file appended to in an object store: its bytes are kept here, and each upload
    replaces the object whole (objects cannot be appended to). Thread-safe (TensorBoard's
    writer flushes from its own thread)."""

    def __init__(self, target: epath.Path, existing: bytes, every_s: float):
        self._target, self._every_s = target, every_s
        self._data = bytearray(existing)
        self._uploaded = len(existing)  # how many bytes the object holds
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self.closed = False

    def write(self, data: bytes) -> int:
        with self._lock:
            self._data += data
        return len(data)

    def flush(self) -> None:
        """Uploads the object if it changed and `every_s` passed since the last upload."""
        if time.monotonic() - self._last >= self._every_s:
            self._upload()

    def close(self) -> None:
        """Uploads what is not uploaded yet."""
        if not self.closed:
            self._upload()
            self.closed = True

    def __enter__(self) -> _AppendedObject:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _upload(self) -> None:
        with self._lock:
            if len(self._data) != self._uploaded:
                data = bytes(self._data)
                self._target.write_bytes(data)
                self._uploaded = len(data)
            self._last = time.monotonic()


class WorkdirConflictError(errors.UserError):
    """The workdir already belongs to a run with a different config."""


def claim(
    workdir: PathLike,
    config: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    free: tuple[str, ...] = (),
) -> bool:
    """Makes `workdir` this run's: writes config.json, or checks the one there.

    Args:
      workdir: the run's directory.
      config: the run's config as JSON-like dicts.
      defaults: the schema's defaults (same form). A key missing from an existing config.json
        (written before the key existed) counts as its default, so a run made by an older
        version resumes as long as the new config keeps that default.
      free: dotted keys that may differ from config.json's (how the run executes, not what
        it computes, e.g. "dataset.num_workers"); config.json keeps the first run's values.

    Returns:
      True when the workdir already held this very config (a resumed run).

    Raises:
      WorkdirConflictError: config.json holds a different config; lists the differences.
    """
    config_path = path(workdir, CONFIG_FILE)
    try:
        existing = with_defaults(read_json(config_path), defaults or {})
    except FileNotFoundError:
        existing = None
    if existing is None:
        write_json(config_path, config)
        return False
    if _without(existing, free) == _without(config, free):
        return True
    diffs = "\n  ".join(diff_dicts(existing, config))
    raise WorkdirConflictError(
        f"{workdir} holds a run with a different config; not overwriting it.\n  {diffs}\n"
        "Use a new --workdir, or delete that one if it is no longer wanted."
    )


def _without(config: dict[str, Any], dotted: tuple[str, ...]) -> dict[str, Any]:
    """`config` without the dotted keys `dotted` (a copy; absent keys are skipped)."""
    out = json.loads(json.dumps(config))
    for key in dotted:
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.get(parent, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


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
    file: PathLike,
    settings: dict[str, Any],
    *,
    overwrite: bool = False,
    resume: bool = False,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The one guard for result files (eval.json, grid.json, shift.json).

    A result file records the `settings` that produced it (and `complete: false` while a long
    job is still writing it). Same settings and complete: the result is reused. Same settings
    and unfinished: continued with `resume`, else refused. Other settings: refused unless
    `overwrite`, naming each difference.

    Args:
      file: the result file.
      settings: everything that determines the result (JSON-like).
      overwrite: replace a file holding other settings (or an unfinished job).
      resume: continue an unfinished job with the same settings.
      upgrade: maps the settings a file of an earlier version recorded to today's names
        before they are compared (e.g. a renamed value); the caller writes today's.

    Returns:
      The file's content to reuse (complete) or continue (resume), or None to start afresh.

    Raises:
      UserError: the file holds other settings, or an unfinished job, and neither flag says
        what to do with it.
    """
    try:
        existing = read_json(file)
    except FileNotFoundError:
        return None
    if overwrite:
        return None
    old = existing.get("settings", {})
    if upgrade is not None:
        old = upgrade(old)
    if old != settings:
        diffs = "\n  ".join(diff_dicts(old, settings))
        raise errors.UserError(
            f"{file} holds a result of other settings; not overwriting it.\n  {diffs}\n"
            "Write elsewhere (--output / another --workdir), or pass --overwrite to replace it."
        )
    if existing.get("complete", True) or resume:
        return existing
    raise errors.UserError(
        f"{file} holds an unfinished job with these settings: pass --resume to continue it "
        "(or --overwrite to start again)."
    )
