"""SIGTERM (a preempted or maintained VM, a cancelled job) ends a long job at the next step
boundary, after the work up to that step is saved, instead of killing it mid-step.

One process: a Python handler notes the signal. Several processes (`jax.distributed`): JAX's
preemption service catches SIGTERM on whichever processes receive it, tells every process
through the coordination service, and picks the step at which all of them stop together
(`jax.experimental.multihost_utils.reached_preemption_sync_point`, what orbax's
`CheckpointManager.reached_preemption` asks); every process must then ask at every step.
Without that question a multi-process job would ignore SIGTERM altogether, as the service
swallows it.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

from seasoning import errors


class Watcher:
    """Whether a job should stop after its current step, between `start` and `stop` (or in a
    `with` block).

    Call `reached(step)` after every step (on every process, with increasing steps); it turns
    True at the step where the job stops: the first step after SIGTERM on one process, the
    step the preemption service agreed on over several.
    """

    def __init__(self):
        self.requested = False  # SIGTERM noted by this process's handler (one process)
        self._installed = False
        self._previous = None

    def start(self) -> None:
        """Notes SIGTERM instead of dying of it (one process, main thread; elsewhere a no-op:
        several processes have JAX's service, other threads cannot set handlers)."""
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
            self._installed = True

    def stop(self) -> None:
        """Puts the previous SIGTERM handler back."""
        if self._installed:
            # None: the handler was not set from Python; the default action is what it did.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (see the class doc; call it at every step)."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def stop_if_reached(self, step: int, *, finished: bool, progress: str, saved_in) -> None:
        """At save number `step` of a job that `--resume` continues (the soup sweep, the shift
        run, an evaluation): stops it there if `reached(step)` and it is not `finished`.

        Raises:
          PreemptedError: naming `progress` (what is done) and where it was saved.
        """
        if self.reached(step) and not finished:  # reached first: every process asks
            raise errors.PreemptedError(
                f"Stopped by SIGTERM after {progress}, saved in {saved_in}: run the same "
                "command with --resume to go on."
            )

    def _note(self, signum, frame) -> None:
        del signum, frame
        self.requested = True
