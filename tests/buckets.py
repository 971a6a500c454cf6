"""gs:// in memory for the tests: an fsspec file system registered as fsspec's `gcs` and `gs`
protocols, which is what etils.epath asks fsspec for on gs:// paths (without TensorFlow), so
the library's real code runs through etils' real fsspec backend. Like a bucket, it has no
appends and no renames (either fails the test), an object appears at the end of its upload,
whole, and an upload in mode "xb" fails if the object exists (as gcsfs's does, with GCS's
`ifGenerationMatch=0` precondition).
"""

import collections

from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem
from fsspec.registry import _registry as fsspec_registry  # what register_implementation fills
from fsspec.utils import stringify_path
from tensorboardX import record_writer


class FakeBucket(MemoryFileSystem):
    """gs:// in memory, with an object store's rules: no appends, no renames, and an object
    appears whole when its upload ends (or not at all when the writer fails)."""

    protocol = ("gs", "gcs")
    root_marker = ""  # keys as gcsfs names objects: "bucket/path/to/object"
    store: dict = {}
    pseudo_dirs = [""]
    uploads: collections.Counter = collections.Counter()

    @classmethod
    def _strip_protocol(cls, path):
        return stringify_path(path).removeprefix("gs://").removeprefix("gcs://").strip("/")

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode or "+" in mode:
            raise AssertionError(f"mode {mode!r}: objects in a bucket cannot be appended to")
        if "x" in mode and self._strip_protocol(path) in self.store:
            raise FileExistsError(path)  # GCS: the precondition ifGenerationMatch=0 failed
        if "w" in mode or "x" in mode:
            return _Upload(self, self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)

    def mv(self, *args, **kwargs):
        raise AssertionError("a rename in a bucket is a copy and a delete, not atomic")


class _Upload(MemoryFile):
    """An object being uploaded: in the bucket once closed (the first time) without an error."""

    ended = False

    def close(self):
        if not self.ended:
            self.ended = True
            self.fs.store[self.path] = MemoryFile(self.fs, self.path, self.getvalue())
            FakeBucket.uploads[self.path] += 1

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        self.ended = True  # an upload that failed leaves nothing


def objects() -> dict[str, bytes]:
    """Every object in the bucket: key -> bytes."""
    return {key: f.getvalue() for key, f in FakeBucket.store.items()}


def use(monkeypatch, tmp_path):
    """Makes gs:// the fake bucket (cleared) for one test; the working directory becomes an
    empty folder, so a test can check that nothing meant for the bucket was written locally.
    Returns a function that undoes etils' and fsspec's caching afterwards."""
    monkeypatch.setenv("EPATH_USE_TF", "0")  # etils' fsspec backend even where TF is installed
    monkeypatch.setitem(fsspec_registry, "gcs", FakeBucket)
    monkeypatch.setitem(fsspec_registry, "gs", FakeBucket)
    # tensorboardX's writer factories, restored after the test (MetricWriter registers one).
    monkeypatch.setattr(
        record_writer, "REGISTERED_FACTORIES", dict(record_writer.REGISTERED_FACTORIES)
    )
    FakeBucket.store.clear()
    FakeBucket.pseudo_dirs[:] = [""]
    FakeBucket.uploads.clear()
    FakeBucket.clear_instance_cache()
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # etils caches per protocol
    monkeypatch.chdir(tmp_path)

    def undo():
        epath_backend.fsspec_backend._get_filesystem.cache_clear()
        FakeBucket.clear_instance_cache()

    return undo
