"""The exception for bad input, which the drivers turn into one line and exit status 2 (3 for
a training run that diverged, 4 for a checkpoint or result that could not be written, 5 for a
job stopped by SIGTERM after saving its work, 6 for a workdir that another live job holds).

Every check of something a user gives (a config value, a flag, a file, a dataset name, a run
directory) raises `UserError` (or `MissingInputError` for a file or dataset that is not
there), naming the value and what was expected. Any other exception is a bug and keeps its
traceback. Both subclass the built-in types they refine (`ValueError`, `FileNotFoundError`),
so library callers may catch either.
"""

from __future__ import annotations

import errno
import re
from typing import Any

# The errors of a write that a user fixes on the machine (tensorstore reports the OS error's
# number as `[os_error_code='28']`, Python as OSError.errno).
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "a file larger than the file system or the process's limit allows",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


class UserError(ValueError):
    """Bad input: a config value, flag, name or file that the user can fix."""


class MissingInputError(UserError, FileNotFoundError):
    """A run, checkpoint, dataset or file that the user named is not there."""


class WriteError(UserError):
    """A checkpoint or result could not be written: disk full, quota, size limit, read-only or
    not permitted (exit status 4). Its message names the path and says what was kept."""

    exit_status = 4


class DivergedError(UserError):
    """Training reached a non-finite loss, gradient or parameter and stopped (exit status 3).

    Its message names the step, the quantity, the last (finite) checkpoint and how to go on.
    """

    exit_status = 3


class PreemptedError(UserError):
    """A job stopped on SIGTERM after saving its work: training after checkpointing the step
    it reached, the soup sweep and the shift run after their next save (exit status 5). The
    same command (with --resume where it has one) goes on."""

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


def write_error_reason(error: BaseException) -> str | None:
    """What a user must fix, when `error` (or an error it was raised from) is a disk-full,
    quota, size-limit, read-only or permission error (an OSError's errno, or tensorstore's
    `os_error_code` in the message); else None."""
    while error is not None:
        codes = re.findall(r"os_error_code='(\d+)'", str(error))
        number = getattr(error, "errno", None)
        for code in [number, *map(int, codes)]:
            if code in _WRITE_ERRORS:
                return _WRITE_ERRORS[code]
        error = error.__cause__ or error.__context__
    return None
