"""Data parallelism: one 'data' mesh axis over every device of every host.

Batches are sharded `P('data')` along their leading axis and the train state is replicated;
`jax.jit` with these shardings does what `pmap` did, and the same code runs on one CPU, on 8
fake CPU devices in the tests, on a GPU, and on a multi-host TPU pod or GPU cluster after
`initialize_distributed()`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seasoning import errors

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several" to jax.distributed.
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS")
# jax.distributed's own default.
DEFAULT_HEARTBEAT_TIMEOUT = 100
# XLA:CPU's collectives between the CPU devices of one process wait for every device's thread
# at a rendezvous, warn after 20 s and abort the process after 40 more. A busy machine's
# scheduler can hold one thread back that long (seen: the demo beside a 2-worker pytest on 2
# cores died in its first all-reduce), so a split CPU waits longer, still ending a true hang.
CPU_COLLECTIVE_TIMEOUTS = {
    "xla_cpu_collective_call_warn_stuck_timeout_seconds": 120,
    "xla_cpu_collective_call_terminate_timeout_seconds": 1800,
}


def initialize_distributed(
    mode: str = "auto", heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
) -> None:
    """Starts `jax.distributed` on a multi-host job; a no-op on a single host.

    When one process dies (killed, preempted, crashed), the others are blocked in the next
    collective; the coordination service notices the missing heartbeats after
    `heartbeat_timeout` seconds and stops every other process with an error that names the
    dead one ("tasks are unhealthy (stopped sending heartbeats)"). Starting all processes again
    with the same command resumes from the last checkpoint.

    Args:
      mode: "auto" (start when the environment names several processes: a TPU pod slice,
        SLURM with several tasks, or JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and
        JAX_PROCESS_ID), "on" (always start; jax.distributed auto-detects the cluster) or
        "off".
      heartbeat_timeout: seconds without a heartbeat after which a process counts as dead.
    """
    if heartbeat_timeout < 1:
        raise errors.UserError(f"heartbeat_timeout={heartbeat_timeout} must be >= 1 second.")
    if mode not in ("auto", "on", "off"):
        raise errors.UserError(f"Unknown distributed mode {mode!r}; expected auto, on or off.")
    if mode == "off" or (mode == "auto" and not _looks_multi_process()):
        return
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # asking jax would start its backends
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat_timeout)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices. Should a process "
        "die, the others stop within %d s (--heartbeat_timeout); start them all again with the "
        "same command to resume from the last checkpoint.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        heartbeat_timeout,
    )


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the coordinator of a job of local processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_process_env(process_id: int, num_processes: int, port: int) -> dict[str, str]:
    """The environment of process `process_id` of a job of local CPU processes (tests, benchmarks,
    trying on one machine what a pod does): this environment plus the variables that make
    `initialize_distributed` start jax.distributed with a coordinator on 127.0.0.1:`port`."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    env.pop("JAX_NUM_CPU_DEVICES", None)  # each process takes its count from --cpu_devices
    if num_processes > 1:
        env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
        env["JAX_NUM_PROCESSES"] = str(num_processes)
        env["JAX_PROCESS_ID"] = str(process_id)
    return env


def _looks_multi_process() -> bool:
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        return True
    if len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def lengthen_cpu_collective_timeouts(timeouts: dict[str, int] | None = None) -> None:
    """Adds XLA:CPU's collective timeouts to XLA_FLAGS, keeping any the user set there.

    Only where JAX has no GPU or TPU plugin: XLA ends the process at a flag it does not know,
    and a plugin's own XLA reads XLA_FLAGS too (the flags are in jaxlib 0.10.2 and 0.11.2;
    accelerator runs do not split the CPU anyway). Call before JAX starts its backends (XLA
    reads XLA_FLAGS once); child processes inherit the flags.

    Args:
      timeouts: flag name -> seconds (default `CPU_COLLECTIVE_TIMEOUTS`).
    """
    if any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu")):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    timeouts = CPU_COLLECTIVE_TIMEOUTS if timeouts is None else timeouts
    missing = [f"--{name}={s}" for name, s in timeouts.items() if f"--{name}=" not in flags]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()


def split_cpu(requested: int, batch_size: int) -> int:
    """Splits the host CPU into several JAX devices; call before JAX starts its backends.

    On CPU, XLA runs the shards of a batch on separate threads, which keeps every core of a
    small machine busy (the speed-up: docs/benchmarks.md, "Speed"). GPU and TPU runs
    are not affected (their devices are the accelerators).

    Args:
      requested: CPU devices wanted; 0 leaves JAX's default (1); -1 (auto) takes
        min(8, 2 * cores), reduced to a divisor of `batch_size`, unless JAX_NUM_CPU_DEVICES or
        XLA_FLAGS already say how many.
      batch_size: the global batch, which must split evenly over the devices.

    Returns:
      The CPU device count set, or 0 when it was left alone.
    """
    if requested == 0:
        return 0
    lengthen_cpu_collective_timeouts()  # several CPU devices: their all-reduces may wait
    if requested < 0:
        if "JAX_NUM_CPU_DEVICES" in os.environ or "device_count" in os.environ.get("XLA_FLAGS", ""):
            return 0
        requested = math.gcd(min(8, 2 * (os.cpu_count() or 1)), batch_size)
    jax.config.update("jax_num_cpu_devices", requested)
    return requested


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-d mesh with axis 'data' over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """Raises unless the global batch splits evenly over the mesh's devices."""
    if global_batch_size % mesh.size:
        raise errors.UserError(
            f"{name}={global_batch_size} is not divisible by the {mesh.size} devices; "
            f"use a multiple of {mesh.size}."
        )


def round_up_to_devices(batch_size: int, mesh: Mesh) -> int:
    """The smallest multiple of the device count >= `batch_size` (for padded eval batches)."""
    return -(-batch_size // mesh.size) * mesh.size


def host_to_global(batch: Any, mesh: Mesh) -> Any:
    """Assembles each host's rows into global arrays sharded over 'data'."""
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def global_to_host(tree: Any) -> Any:
    """Fully replicated (or fully addressable) arrays -> numpy on this host."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def runtime_info(mesh: Mesh | None = None) -> dict[str, Any]:
    """What ran a result, for its JSON: JAX version, backend, device count, matmul precision.

    The precision matters on GPUs: float32 matmuls and convolutions default to TF32 there
    (about 3 decimal digits), which can flip the prediction at an adversarial point lying
    within ~1e-3 of the decision boundary. `JAX_DEFAULT_MATMUL_PRECISION=highest` gives full
    float32, as on CPU.
    """
    return {
        "version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count() if mesh is None else mesh.size,
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
    }
