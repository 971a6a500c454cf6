"""SIGTERM (a preempted or maintained VM, a cancelled job) ends a training run at the next
step boundary, after a checkpoint of that step, instead of killing it mid-step.

Single-process runs only, for now: on several processes SIGTERM keeps its default action (the
process dies, the others stop within the heartbeat timeout, and the same command resumes from
the last periodic checkpoint), as JAX's own preemption service would have to agree on the step
to save across processes.
"""

from __future__ import annotations

import signal
import threading

import jax


class Watcher:
    """Notes SIGTERM instead of dying of it, between `start` and `stop` (single process, main
    thread).

    `requested` turns True once SIGTERM arrived; `stop` puts the previous handler back.
    Elsewhere (several processes, another thread) it changes nothing and `requested` stays
    False.
    """

    def __init__(self):
        self.requested = False
        self._installed = False
        self._previous = None

    def start(self) -> None:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)
            self._installed = True

    def stop(self) -> None:
        if self._installed:
            # None: the handler was not set from Python; the default action is what it did.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    def _note(self, signum, frame) -> None:
        del signum, frame
        self.requested = True
