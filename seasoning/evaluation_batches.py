"""An evaluation's points in global batches: their size, each process's rows, the adversarial
points a process keeps, and sources that decode each point once.

The batches are the same whatever the number of processes: position k lies in batch k // size
at row k % size, and each process loads and feeds only its rows of every batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from seasoning import data, errors, parallel
from seasoning.data.pipeline import host_slice


def batch_size_for(batch_size: int, mesh: Mesh, num_points: int | None = None) -> int:
    """`batch_size` (at most `num_points`) rounded up to a multiple of the device count.

    Raises:
      UserError: batch_size is not an integer >= 1.
    """
    size = errors.check_count("batch_size", batch_size, 1)
    size = size if num_points is None else min(size, max(num_points, 1))
    return parallel.round_up_to_devices(size, mesh)


def chunks(positions: np.ndarray, size: int, quantum: int | None = None):
    """Yields (padded positions, number of real ones), `size` at a time.

    A last, shorter batch is padded (repeating its last position) only up to a multiple of
    `quantum` (default: `size`).
    """
    quantum = quantum or size
    for start in range(0, len(positions), size):
        part = positions[start : start + size]
        padded = min(size, -(-len(part) // quantum) * quantum)
        yield np.concatenate([part, np.repeat(part[-1:], padded - len(part))]), len(part)


def process_rows(global_size: int) -> slice:
    """The rows of a global batch of `global_size` that this process feeds."""
    return host_slice(global_size, jax.process_index(), jax.process_count())


def load_batch(
    source: data.Source, point_ids: np.ndarray, mesh: Mesh
) -> tuple[jax.Array, jax.Array]:
    """(images, labels): global arrays of the points `point_ids`, sharded over 'data'.

    This process loads only its rows of the batch (padding rows are real points repeated;
    callers keep the results of the first rows only).
    """
    return parallel.host_to_global(own_rows(source, point_ids), mesh)


def own_rows(source: data.Source, point_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float images, int32 labels) of this process's rows of the batch `point_ids` (host)."""
    images, labels = source.get(point_ids[process_rows(len(point_ids))])
    return data.to_float(images), np.asarray(labels, np.int32)


def replicated_jit(fn: Callable, mesh: Mesh, n_sharded: int, n_after: int = 0) -> Callable:
    """jit: first argument replicated, then `n_sharded` batch arguments sharded over 'data',
    then `n_after` replicated ones; every output replicated (the same on every process)."""
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharding(mesh)
    shardings = (replicated,) + (sharded,) * n_sharded + (replicated,) * n_after
    return jax.jit(fn, in_shardings=shardings, out_shardings=replicated)


class OwnAdversarial:
    """The adversarial points of the positions this process feeds in the evaluation batches.

    Position k of the evaluation lies in batch k // size at row k % size; this process feeds
    the rows `process_rows(size)` of every batch, and keeps the points of those positions.
    """

    def __init__(self, num_points: int, size: int):
        rows = process_rows(size)
        within = np.arange(num_points) % size
        self.owned = (within >= rows.start) & (within < rows.stop)
        self.slot = np.cumsum(self.owned) - 1
        self.points: np.ndarray | None = None
        self.stored = np.zeros(int(self.owned.sum()), bool)

    def put(self, positions: np.ndarray, points: np.ndarray) -> None:
        keep = self.owned[positions]
        if not keep.any():
            return
        if self.points is None:
            self.points = np.zeros((len(self.stored), *points.shape[1:]), np.float32)
        slots = self.slot[positions[keep]]
        self.points[slots] = points[keep]
        self.stored[slots] = True

    def get(self, positions: np.ndarray, clean: np.ndarray) -> np.ndarray:
        """The stored points of `positions` (all owned), `clean` where none was stored."""
        if self.points is None:
            return clean
        slots = self.slot[positions]
        return np.where(self.stored[slots][:, None, None, None], self.points[slots], clean)


# The most bytes of preprocessed images a process keeps so that an evaluation decodes each
# point once: 2 GiB holds 14,266 ImageNet images at 224 x 224 x 3.
DECODED_CACHE_BYTES = 2 << 30


def decoded_once(source: data.Source) -> data.Source:
    """`source`, made to decode each point once (up to DECODED_CACHE_BYTES) when it decodes
    images (`data.Preprocessed`); in-memory and already cached sources are returned as they
    are."""
    if isinstance(source, data.Preprocessed):
        return data.Cached(source, DECODED_CACHE_BYTES)
    return source
