"""The exception for bad input, which the drivers turn into one line and exit status 2 (3 for
a training run that diverged, 4 for a checkpoint that could not be written, 5 for a run stopped
by SIGTERM after its checkpoint, 6 for a workdir that another live job holds).

Every check of something a user gives (a config value, a flag, a file, a dataset name, a run
directory) raises `UserError` (or `MissingInputError` for a file or dataset that is not
there), naming the value and what was expected. Any other exception is a bug and keeps its
traceback. Both subclass the built-in types they refine (`ValueError`, `FileNotFoundError`),
so library callers may catch either.
"""

from __future__ import annotations

from typing import Any


class UserError(ValueError):
    """Bad input: a config value, flag, name or file that the user can fix."""


class MissingInputError(UserError, FileNotFoundError):
    """A run, checkpoint, dataset or file that the user named is not there."""


class WriteError(UserError):
    """A checkpoint could not be written: disk full, quota, size limit, read-only or not
    permitted (exit status 4). Its message names the path and says what was kept."""

    exit_status = 4


class DivergedError(UserError):
    """Training reached a non-finite loss, gradient or parameter and stopped (exit status 3).

    Its message names the step, the quantity, the last (finite) checkpoint and how to go on.
    """

    exit_status = 3


class PreemptedError(UserError):
    """A training run stopped on SIGTERM after checkpointing the step it reached (exit status
    5): the same command resumes it."""

    exit_status = 5


class BusyError(UserError):
    """The workdir (or result file) is held by another live job (exit status 6): its lease
    (`seasoning.lease`) names that job."""

    exit_status = 6


def check_count(name: str, value: Any, low: int) -> int:
    """`value` as an int, after checking that it is an integer >= `low` (a size or budget).

    Raises:
      UserError: naming the value and what was expected (booleans are not counts).
    """
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{name}={value!r}: expected an integer >= {low}.")
    return int(value)
