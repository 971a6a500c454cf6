"""Checkpoints of a run: the only module that touches orbax.

A checkpoint holds the TrainState's pytree (restored with the target's shardings) and a small
JSON record of what it belongs to (the model config), so a run never resumes into a model
that differs from the one it saved.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from seasoning import errors
from seasoning import workdir as workdir_lib

CHECKPOINT_DIR = "checkpoints"


def directory(workdir: str) -> epath.Path:
    """The checkpoints' folder of `workdir`: absolute for a local workdir (orbax wants that of
    local paths), the URI itself for one in a bucket (orbax writes the arrays there with
    tensorstore's own gcs driver, its other files through etils.epath).

    Raises:
      UserError: an object store other than gs:// (orbax writes arrays only to local paths
        and gs://), or a gs:// workdir without google-cloud-storage, which orbax needs there
        (the message names the extra that installs it).
    """
    folder = workdir_lib.path(workdir, CHECKPOINT_DIR)
    if not workdir_lib.is_object_store(folder):
        return folder.resolve()
    if not str(folder).startswith("gs://"):
        raise errors.UserError(
            f"{folder}: orbax keeps checkpoints on local paths and in gs:// buckets only; "
            "use one of those for a run's --workdir."
        )
    if not _installed("google.cloud.storage"):
        raise errors.UserError(
            f"{folder}: orbax needs google-cloud-storage for checkpoints in gs://, which is "
            "not installed: pip install 'seasoning[gcs]'"
        )
    return folder


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class ModelMismatchError(errors.UserError):
    """A checkpoint was saved from a different model than the one asked for."""


class Checkpointer:
    """Keep-last-N checkpoints of one run directory, saved asynchronously.

    Orbax writes each save to a temporary folder and renames it when complete (on gs://,
    where a rename is a copy, it marks a finished save with a commit file instead), so a run
    killed mid-save (even with SIGKILL) leaves only whole checkpoints behind; the temporary
    folder of an unfinished save is deleted when a Checkpointer is made (so only the run's own
    job makes one; readers use `latest_step` and `read_numpy`). A save
    that fails for lack of space or permission (reported by the next save, `wait` or
    `close`, the saves being asynchronous) raises `errors.WriteError` naming the folder, the
    step and its size.
    """

    def __init__(self, workdir: str, *, keep: int = 2, use_async: bool = True):
        self._manager = ocp.CheckpointManager(
            directory(workdir),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=use_async,
                create=True,
                cleanup_tmp_directories=True,
            ),
        )
        self._saving: tuple[int, int] | None = None  # (step, bytes) of the save under way

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: Any, meta: dict[str, Any]) -> None:
        """Starts saving `tree` (and the JSON `meta`) as checkpoint `step`."""
        size = sum(
            int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
        )
        with self._write_errors():
            self._manager.wait_until_finished()  # an earlier save's failure surfaces here
            self._saving = (step, size)
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
                ),
            )

    @contextlib.contextmanager
    def _write_errors(self):
        """Turns a failed save's disk-full or permission error into `errors.WriteError`."""
        try:
            yield
        except (OSError, ValueError) as e:
            reason = errors.write_error_reason(e)
            if reason is None or self._saving is None:
                raise
            step, size = self._saving
            kept = [s for s in self._manager.all_steps() if s != step]
            raise errors.WriteError(
                f"Could not write checkpoint {step} to {self._manager.directory}: {reason} "
                f"(the checkpoint is {size / 2**20:.1f} MiB of arrays). "
                + (f"The previous checkpoint, step {max(kept)}, is intact. " if kept else "")
                + "Free space (or fix the permissions) and run the same command to resume"
                + (" from it." if kept else ".")
            ) from None

    def restore(self, abstract_tree: Any, expect_meta: dict[str, Any], step: int | None = None):
        """Restores checkpoint `step` (default: the latest) onto `abstract_tree`'s shardings.

        Args:
          abstract_tree: a pytree of `jax.ShapeDtypeStruct` with `.sharding` (e.g. from
            `jax.eval_shape` plus the shardings), giving structure, dtypes and placement.
          expect_meta: what the checkpoint's record must say about the model: every key of it
            must match.

        Returns:
          (the restored tree, the step).

        Raises:
          ModelMismatchError: the checkpoint records a different model; the message lists the
            differing fields.
          FileNotFoundError: no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise errors.MissingInputError(f"No checkpoint in {self._manager.directory}.")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        check_meta(meta["meta"], expect_meta, where=f"{self._manager.directory}/{step}")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree))
        )
        return restored["state"], step

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        with self._write_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        with self._write_errors():
            self._manager.wait_until_finished()
        self._manager.close()


def latest_step(workdir: str) -> int | None:
    """The step of a run's latest finished checkpoint (None: none), read without touching the
    folder: unlike a `Checkpointer`, which deletes the temporary folders of unfinished saves,
    this is safe while the run is writing one."""
    options = ocp.CheckpointManagerOptions(create=False)
    with ocp.CheckpointManager(directory(workdir), options=options) as manager:
        return manager.latest_step()


def read_numpy(workdir: str, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Reads a run's checkpoint as numpy arrays: (tree, meta, step).

    Works whatever the device count that saved it (the target is built from the checkpoint's
    own metadata, as host arrays). For inspecting, evaluating and mixing finished runs;
    training resumes through `Checkpointer.restore`.
    """
    path = directory(workdir)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    options = ocp.CheckpointManagerOptions(create=False)
    with ocp.CheckpointManager(path, options=options, item_handlers=handlers) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise errors.MissingInputError(f"No checkpoint in {path}.")
        layout = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), layout)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
    tree = jax.tree.map(np.asarray, restored["state"])
    return tree, restored["meta"], step


def check_meta(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raises ModelMismatchError naming each field of `expected` that differs.

    Each difference reads `field: checkpoint value -> config value`.
    """
    diffs = workdir_lib.diff_dicts({key: found.get(key) for key in expected}, expected)
    if diffs:
        raise ModelMismatchError(
            f"The checkpoint at {where} was saved from a different model:\n  " + "\n  ".join(diffs)
        )


def abstract_with_sharding(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or structs) placed with `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
