"""The interfaces of a dataset: raw records, and preprocessed uint8 images with labels.

A dataset's loader returns its split's records: `read(indices)` gives the images as stored
(encoded bytes of any size for TFDS, one uint8 array for in-memory sets) with their labels.
The training pipeline runs its ops on them (`data.pipeline`); everything else reads a
`Source`, fixed-shape uint8 images after the deterministic evaluation ops (`Preprocessed`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from absl import logging

from seasoning import errors
from seasoning.data import ops as ops_lib


class Source(Protocol):
    """Random access to one split of a dataset.

    `get(indices)` returns (images uint8 [n, H, W, C], labels int32 [n]); every image of a
    source has the same shape `image_shape`.
    """

    num_classes: int
    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A split held in memory as arrays."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]
    num_classes: int

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise errors.UserError(
                f"images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}."
            )
        if len(self.images) != len(self.labels):
            raise errors.UserError(f"{len(self.images)} images but {len(self.labels)} labels.")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]

    def read(self, indices: np.ndarray, *, labels: bool = True) -> tuple[np.ndarray, Any]:
        """The records at `indices` (as `get`; labels None when not asked for)."""
        return self.images[indices], self.labels[indices] if labels else None

    def take(self, indices: np.ndarray) -> ArraySource:
        """A new source holding only the examples at `indices`."""
        return ArraySource(self.images[indices], self.labels[indices], self.num_classes)


# `load(dataset_config, split, seed) -> Source`.
Loader = Callable[[Any, str, int], Source]
# logits [..., C] -> log-probabilities [..., L] over a dataset's label space (see data.shifts).
Head = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset (`data.DATASETS`).

    Attributes:
      load: `load(dataset_config, split, seed) -> Source`, the split of the dataset that the
        config section `dataset` (data_dir, image_size, ...) describes; None for a group.
      tfds_name: the TFDS name it is read under (with its config, e.g. "cifar10_corrupted/
        fog_3"), or None for datasets read otherwise.
      threats: the threat models it is usually evaluated under, or None when it has no usual
        radii (evaluation then needs them named explicitly).
      default_split: the split read when none is named.
      head: how a model's logits score this dataset's labels (`data.shifts.label_log_probs`):
        logits -> log-probabilities over the label space; None: log-softmax of all logits
        (the labels are the model's classes). E.g. ImageNet-A's 200-class mask.
      model_classes: the logit count a model needs to score this dataset, when it differs
        from the labels' class count (Conflict Stimuli: 1000 ImageNet logits, 16 labels).
      members: a group (ImageNet-C, Fashion-MNIST-C): the registry names of its members; its
        accuracy is the mean of theirs. Empty for a dataset read by `load`.
    """

    load: Loader | None
    tfds_name: str | None = None
    threats: tuple[Any, ...] | None = None
    default_split: str = "test"
    head: Head | None = None
    model_classes: int | None = None
    members: tuple[str, ...] = ()


class ConcatSource:
    """Several sources of one image shape and label space read as one (index = offset + i).

    `member_of(indices)` says which source each index falls in (a group's members, e.g. the
    75 corruption x severity sets of ImageNet-C).
    """

    def __init__(self, sources: list[Source]):
        if not sources:
            raise errors.UserError("ConcatSource needs at least one source.")
        shapes = {tuple(s.image_shape) for s in sources}
        classes = {s.num_classes for s in sources}
        if len(shapes) != 1 or len(classes) != 1:
            raise errors.UserError(
                f"Sources to concatenate differ in image shape {sorted(shapes)} or class count "
                f"{sorted(classes)}."
            )
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in sources])
        self.image_shape = tuple(sources[0].image_shape)
        self.num_classes = sources[0].num_classes

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def member_of(self, indices: np.ndarray) -> np.ndarray:
        """int [n]: the source each global index belongs to."""
        return np.searchsorted(self.offsets, np.asarray(indices), side="right") - 1

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise errors.UserError(
                f"Indices must lie in [0, {len(self)}); got {indices.min()}..{indices.max()}."
            )
        member = self.member_of(indices)
        images = np.zeros((len(indices), *self.image_shape), np.uint8)
        labels = None
        for m in np.unique(member):
            where = np.flatnonzero(member == m)
            x, y = self.sources[m].get(indices[where] - self.offsets[m])
            if labels is None:
                labels = np.zeros((len(indices), *np.shape(y)[1:]), np.int32)
            images[where], labels[where] = x, y
        if labels is None:
            labels = np.zeros((0,), np.int32)
        return images, labels


def read_records(source: Any, indices: np.ndarray, *, labels: bool = True) -> tuple[Any, Any]:
    """(images, labels) of a source's records: `read` (raw records) when it has one, else
    `get`. With labels=False a `read` may skip the labels (None)."""
    if hasattr(source, "read"):
        return source.read(indices, labels=labels)
    return source.get(indices)


_THREADS: concurrent.futures.ThreadPoolExecutor | None = None


def _threads() -> concurrent.futures.ThreadPoolExecutor:
    """Decoding threads of this process (the decoders release the GIL)."""
    global _THREADS
    if _THREADS is None:
        _THREADS = concurrent.futures.ThreadPoolExecutor(len(os.sched_getaffinity(0)))
    return _THREADS


class Preprocessed:
    """A `Source`: the records of `records` after deterministic ops (decode, resize, crop).

    Records that are encoded images are preprocessed one per thread, in parallel: in `threads`
    threads of its own, or (0) in this process's pool of one thread per core.
    """

    def __init__(self, records: Any, ops: Sequence[ops_lib.Op], spec: str, *, threads: int = 0):
        if ops_lib.is_random(ops):
            raise errors.UserError(
                f"Preprocessing {spec!r} is random; evaluation needs deterministic ops."
            )
        self.records, self.ops, self.spec = records, tuple(ops), spec
        threads = errors.check_count("threads", threads, 0)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads) if threads else None
        self.num_classes = records.num_classes
        for name in ("label_names", "label_width", "member_of"):
            if hasattr(records, name):
                setattr(self, name, getattr(records, name))
        first, _ = read_records(records, np.zeros(1, np.int64), labels=False)
        self.image_shape = tuple(ops_lib.apply(self.ops, first, spec=spec).shape[1:])

    def __len__(self) -> int:
        return len(self.records)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = read_records(self.records, np.asarray(indices))
        if isinstance(images, np.ndarray) or len(images) < 2:
            return ops_lib.apply(self.ops, images, spec=self.spec), labels
        one = lambda image: ops_lib.apply(self.ops, [image], spec=self.spec)[0]  # noqa: E731
        pool = self._pool or _threads()
        return ops_lib.stack(list(pool.map(one, images)), self.spec), labels


class Cached:
    """A `Source` that keeps what it read of `source`, up to `max_bytes` of images.

    An evaluation reads each point several times (clean pass, each attack, final check); with
    this it decodes each point once. Points beyond the bound are read again each time.
    """

    def __init__(self, source: Any, max_bytes: int):
        self.source, self.max_bytes = source, errors.check_count("max_bytes", max_bytes, 0)
        self._points: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> (image, label)
        self._bytes, self._warned = 0, False

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name: str) -> Any:  # num_classes, image_shape, ... of the source
        return getattr(self.__dict__["source"], name)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        missing = sorted(set(indices) - self._points.keys())
        read = {}
        if missing:
            images, labels = self.source.get(np.asarray(missing, np.int64))
            read = dict(zip(missing, zip(images, np.asarray(labels), strict=True), strict=True))
        for i, point in read.items():
            if self._bytes + point[0].nbytes > self.max_bytes:
                if not self._warned:
                    logging.warning(
                        "Decoded-image cache full (%d bytes): later points are "
                        "decoded each time they are read.",
                        self.max_bytes,
                    )
                    self._warned = True
                break
            self._points[i] = point
            self._bytes += point[0].nbytes
        points = [self._points[i] if i in self._points else read[i] for i in indices]
        if not points:
            return np.zeros((0, *self.image_shape), np.uint8), np.zeros((0,), np.int32)
        return np.stack([p[0] for p in points]), np.stack([p[1] for p in points])
