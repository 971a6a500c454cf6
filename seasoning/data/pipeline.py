"""Batches from a Source: seeded shuffling and augmentation, one host's shard, prefetching.

Which examples form global batch `step`, and how they are augmented, is a pure function of
(seed, step): a run resumed at step s reads exactly the batches an uninterrupted run would,
and the result does not depend on how many hosts share the work. Each host reads only its
slice of every global batch.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator

import numpy as np

from seasoning import errors
from seasoning.data.source import Source

Batch = dict[str, np.ndarray]


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]."""
    return images.astype(np.float32) * np.float32(1 / 255)


def host_slice(global_size: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that host `process_index` holds."""
    if global_size % process_count:
        raise errors.UserError(
            f"Global batch size {global_size} is not divisible by the {process_count} hosts."
        )
    local = global_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def steps_per_epoch(source: Source, global_batch_size: int) -> int:
    """Full batches per pass over `source` (the remainder of each epoch is dropped)."""
    steps = len(source) // global_batch_size
    if steps == 0:
        raise errors.UserError(
            f"Batch size {global_batch_size} is larger than the dataset ({len(source)} examples)."
        )
    return steps


class _EpochOrder:
    """The shuffled order of each epoch, cached for the current one."""

    def __init__(self, size: int, seed: int):
        self._size, self._seed, self._epoch, self._order = size, seed, -1, None

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = np.random.default_rng([self._seed, epoch]).permutation(self._size)
            self._epoch = epoch
        return self._order


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_padding: int,
    flip: bool,
    rows: slice,
    global_size: int,
) -> np.ndarray:
    """Random crop after zero padding and random horizontal flip, vectorised.

    The draws are made for the whole global batch and `rows` picks this host's, so every
    example is augmented the same way whatever the number of hosts.
    """
    p = crop_padding
    dy = rng.integers(0, 2 * p + 1, size=global_size)[rows]
    dx = rng.integers(0, 2 * p + 1, size=global_size)[rows]
    flips = (rng.random(global_size) < 0.5)[rows] & flip
    n, h, w, _ = images.shape
    if p:
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        r = dy[:, None, None] + np.arange(h)[None, :, None]
        c = dx[:, None, None] + np.arange(w)[None, None, :]
        images = padded[np.arange(n)[:, None, None], r, c]
    return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


def train_batches(
    source: Source,
    global_batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    crop_padding: int = 0,
    flip: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Endless training batches (this host's rows), starting at global step `start_step`.

    Yields:
      {"image": float32 [local, H, W, C] in [0, 1], "label": int32 [local]}.
    """
    per_epoch = steps_per_epoch(source, global_batch_size)
    rows = host_slice(global_batch_size, process_index, process_count)
    order = _EpochOrder(len(source), seed)
    for step in itertools.count(start_step):
        epoch, within = divmod(step, per_epoch)
        indices = order(epoch)[within * global_batch_size : (within + 1) * global_batch_size]
        images, labels = source.get(indices[rows])
        if crop_padding or flip:
            rng = np.random.default_rng([seed, step])
            images = augment(
                images,
                rng,
                crop_padding=crop_padding,
                flip=flip,
                rows=rows,
                global_size=global_batch_size,
            )
        yield {"image": to_float(images), "label": labels}


def prefetch(iterator: Iterator[Batch], size: int = 2) -> Iterator[Batch]:
    """Runs `iterator` in a background thread, `size` batches ahead."""
    buffer: queue.Queue = queue.Queue(maxsize=size)
    end = object()

    def work():
        try:
            for item in iterator:
                buffer.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            buffer.put(e)
        buffer.put(end)

    threading.Thread(target=work, daemon=True).start()
    while (item := buffer.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item
