"""Training batches on Grain: seeded order, named preprocessing ops in workers, prefetching.

Which examples form global batch `step`, and how they are augmented, is a pure function of
(seed, step): the order of an epoch is a permutation seeded by (seed, epoch), and the random
ops draw from a generator seeded by (seed, step) for the whole global batch (`data.ops`).
So a run resumed at step s reads exactly the batches an uninterrupted run would, whatever the
number of hosts and of workers, and the pipeline is rebuilt at any step in O(1): nothing of
the iterator needs saving beside the checkpoint's step.

The unit of work is one host's rows of one global batch. A Grain `MapDataset` over the steps
maps each step to its batch (read the records, run the ops, stack); with
`num_workers` > 0 Grain runs that map in worker processes, worker k making the batches of
steps k, k + workers, ... and the iterator handing them back in step order; with 0 workers a
background thread makes them in this process. `Batches` turns them into float arrays on the
devices a few steps ahead (device prefetch) and counts how long the training loop waited for
them (`input_wait`).
"""

from __future__ import annotations

import inspect
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from seasoning import errors
from seasoning.data import ops as ops_lib
from seasoning.data.source import read_records

Batch = dict[str, np.ndarray]

# Batches each worker keeps ready, and batches put on the devices ahead of the step.
WORKER_BUFFER = 2
DEVICE_PREFETCH = 2
# The largest step a training pipeline is built for (its MapDataset's length).
MAX_STEPS = 2**40


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]; float32 images (already in [0, 1]) as they are."""
    if images.dtype == np.float32:
        return images
    return images.astype(np.float32) * np.float32(1 / 255)


def host_slice(global_size: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that host `process_index` holds."""
    if global_size % process_count:
        raise errors.UserError(
            f"Global batch size {global_size} is not divisible by the {process_count} hosts."
        )
    local = global_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full batches per pass over `num_examples` examples (the remainder of each epoch is
    dropped)."""
    steps = num_examples // global_batch_size
    if steps == 0:
        raise errors.UserError(
            f"Batch size {global_batch_size} is larger than the dataset ({num_examples} examples)."
        )
    return steps


def default_workers(num_workers: int, decodes: bool) -> int:
    """The worker count for config value `num_workers` (-1: automatic).

    Automatic is every core of the host (`os.sched_getaffinity`) when the records are
    encoded images to decode, else 0: in-memory arrays are batched faster in this process
    than a worker process can hand them over.
    """
    if num_workers >= 0:
        return num_workers
    return len(os.sched_getaffinity(0)) if decodes else 0


class StepBatch:
    """step -> this host's rows of global batch `step`: {"image": uint8, "label": int32}.

    A plain, picklable callable (Grain ships it to its workers).
    """

    def __init__(
        self,
        source: Any,
        ops: Sequence[ops_lib.Op],
        spec: str,
        *,
        global_batch_size: int,
        seed: int,
        rows: slice,
    ):
        self.source, self.ops, self.spec = source, tuple(ops), spec
        self.global_size, self.seed, self.rows = global_batch_size, seed, rows
        self.per_epoch = steps_per_epoch(len(source), global_batch_size)
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """The shuffled example order of `epoch` (cached for the current one)."""
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
            self._epoch = epoch
        return self._order

    def indices(self, step: int) -> np.ndarray:
        """The global batch's example indices (all hosts' rows)."""
        epoch, within = divmod(step, self.per_epoch)
        return self.order(epoch)[within * self.global_size : (within + 1) * self.global_size]

    def __call__(self, step: int) -> Batch:
        images, labels = read_records(self.source, self.indices(step)[self.rows])
        draws = ops_lib.draw(self.ops, np.random.default_rng([self.seed, step]), self.global_size)
        images = ops_lib.apply(self.ops, images, draws, rows=self.rows, spec=self.spec)
        return {"image": images, "label": np.asarray(labels, np.int32)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_epoch": -1, "_order": np.zeros(0, np.int64)}


def _grain_flags_parsed() -> None:
    """Grain reads absl flags; outside an absl app (tests, notebooks) take their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _die_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker start-up: a thread that ends this worker within a second of the training
    process's death, so a training process killed with SIGKILL (or preempted) leaves no
    worker behind."""
    del worker_index, worker_count
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="seasoning-parent-watch").start()


def step_batches(make: StepBatch, start_step: int, num_workers: int) -> Any:
    """A Grain iterator over `make(step)` for step = start_step, start_step + 1, ...

    Args:
      make: step -> batch.
      start_step: the first step.
      num_workers: worker processes (0: a background thread of this process).
    """
    import grain  # late: only training reads batches through it

    _grain_flags_parsed()
    dataset = grain.MapDataset.range(start_step, MAX_STEPS).map(make)
    if num_workers == 0:
        options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=WORKER_BUFFER)
        return iter(dataset.to_iter_dataset(options))
    options = grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=WORKER_BUFFER
    )
    return iter(
        dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        ).mp_prefetch(options, worker_init_fn=_die_with_parent)
    )


def train_batches(
    source: Any,
    global_batch_size: int,
    *,
    seed: int,
    ops: Sequence[ops_lib.Op] = (),
    spec: str = "",
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
) -> Any:
    """This host's rows of global batches `start_step`, `start_step` + 1, ...: uint8 images
    after `ops`, int32 labels. The iterator has `close()` (it stops the workers).

    Args:
      source: the records (`data.get_records`).
      global_batch_size: the batch size over all hosts.
      seed: the run's seed (order and augmentation).
      ops, spec: the preprocessing ops and their spec (`data.train_ops`).
      start_step: the first global step.
      process_index, process_count: this host and the host count.
      num_workers: worker processes (0: a background thread).
    """
    make = StepBatch(
        source,
        ops,
        spec,
        global_batch_size=global_batch_size,
        seed=seed,
        rows=host_slice(global_batch_size, process_index, process_count),
    )
    return step_batches(make, start_step, num_workers)


class Batches:
    """The training loop's batches: `place(batch)` made `size` steps ahead in a thread.

    `next(batches)` times how long the loop waits; `take_wait()` returns the seconds waited
    since its last call. `close()` stops the thread and the workers.
    """

    def __init__(self, iterator: Any, place: Callable[[Batch], Any], size: int = DEVICE_PREFETCH):
        self._iterator, self._place = iterator, place
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._waited = 0.0
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for batch in self._iterator:
                if not self._put(("batch", self._place(batch))):
                    return
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self._put(("error", e))
            return
        self._put(("end", None))

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        start = time.monotonic()
        kind, item = self._queue.get()
        self._waited += time.monotonic() - start
        if kind == "error":
            raise item
        if kind == "end":
            raise StopIteration
        return item

    def take_wait(self) -> float:
        """Seconds the loop waited for batches since the last call."""
        waited, self._waited = self._waited, 0.0
        return waited

    def close(self) -> None:
        """Stops the workers (first: they unlink their shared memory) and the thread."""
        self._stop.set()
        close = getattr(self._iterator, "close", None)
        if close is not None and not inspect.isgenerator(self._iterator):
            close()  # (a generator cannot be closed while the thread runs it)
        self._thread.join(timeout=2)  # a daemon: one blocked in the iterator ends with us
