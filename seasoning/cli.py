"""Flags and start-up shared by the command-line drivers (train, evaluate, soup, import).

Flags live here once, so that several drivers can be imported into one process (tests do).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from collections.abc import Callable, Mapping

import jax
from absl import flags, logging

from seasoning import errors, parallel

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
DATASET = flags.DEFINE_string(
    "dataset",
    "",
    "A dataset of the registry. evaluate: NAME[:split] to evaluate on (default: the run's own "
    "dataset and eval split; its class count must be the model's). import_weights: the "
    "imported run's dataset (default by class count: 10 cifar10, 100 cifar100, 1000 "
    "imagenet2012).",
)
DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"], "Start jax.distributed (multi-host jobs)."
)
CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    -1,
    "CPU only: JAX devices to split the host CPU into (-1: auto, 0: 1).",
    lower_bound=-1,
)
HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout",
    parallel.DEFAULT_HEARTBEAT_TIMEOUT,
    "Multi-host jobs: seconds after which a process that stopped answering is declared dead "
    "and every other process stops with an error (restart all to resume).",
    lower_bound=1,
)

RESUME = flags.DEFINE_bool(
    "resume",
    False,
    "Continue an unfinished job of the same settings in --workdir: a soup sweep, a shift run, "
    "or an evaluation stopped by SIGTERM (its finished threat models are kept).",
)
FORCE_LEASE = flags.DEFINE_bool(
    "force_lease",
    False,
    "Take the workdir's lease even from a job that looks alive (only when it is surely gone, "
    "e.g. its machine died less than a lease's stale time ago).",
)

COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    "auto",
    "JAX's persistent compilation cache, so that a command run again loads its compiled "
    "programs instead of compiling them: auto (JAX_COMPILATION_CACHE_DIR if set, else "
    "$XDG_CACHE_HOME/seasoning/jax, i.e. ~/.cache/seasoning/jax), off, or a folder.",
)


def compilation_cache_dir(setting: str, environ: Mapping[str, str]) -> str | None:
    """The folder of JAX's persistent compilation cache for `--compilation_cache=setting`
    (None: off); JAX's own variable wins under "auto"."""
    if setting == "off":
        return None
    if setting != "auto":
        return setting
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "seasoning", "jax")


class _QuietLibraries(std_logging.Filter):
    """Drops the INFO chatter of orbax (a dozen lines per checkpoint) and the tracebacks its
    threads log for a save that failed for lack of space or permission (the driver then says
    it in one line: `checkpoints.Checkpointer`); keeps its other warnings and errors."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        if record.exc_info and errors.write_error_reason(record.exc_info[1]):
            return False
        return record.levelno >= std_logging.WARNING


def start(batch_size: int) -> None:
    """Starts JAX for a command: the persistent compilation cache (`--compilation_cache`), the
    CPU split (see `parallel.split_cpu`), then jax.distributed.

    Also quiets the INFO logs of the libraries underneath, so that the progress lines show.
    """
    logging.get_absl_handler().addFilter(_QuietLibraries())
    cache = compilation_cache_dir(COMPILATION_CACHE.value, os.environ)
    jax.config.update("jax_enable_compilation_cache", cache is not None)
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", cache)
    count = parallel.split_cpu(CPU_DEVICES.value, batch_size)
    if count:
        logging.info("CPU split into %d JAX devices (--cpu_devices).", count)
    parallel.initialize_distributed(DISTRIBUTED.value, HEARTBEAT_TIMEOUT.value)


def exit_on_user_error(fn: Callable[[], object]) -> None:
    """Runs `fn`; a `errors.UserError` (bad input) becomes one line and exit 2, or its class's
    `exit_status` (`errors.DivergedError` 3, `errors.WriteError` 4, `errors.PreemptedError`
    5, `errors.BusyError` 6).

    Every other exception, a ValueError from a bug included, keeps its traceback; a failed
    computation of a multi-process job is preceded by a line saying what most likely happened
    (another process died) and how to resume.
    """
    try:
        fn()
    except errors.UserError as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_status", 2))
    except jax.errors.JaxRuntimeError:
        if jax.process_count() > 1:  # the likely cause first; the traceback follows
            message = (
                f"A computation failed on process {jax.process_index()} of "
                f"{jax.process_count()}: when a collective fails, another process of the job "
                "has most likely died (see its log). Start all processes again with the same "
                "command to resume from the last checkpoint."
            )
            logging.error("%s", message)
            print(f"error: {message}", file=sys.stderr)
        raise
