"""`seasoning.parallel`'s CPU set-up: XLA:CPU's collectives between the CPU devices of one
process, which abort the whole process when one device's thread is held back too long."""

import importlib.util
import os
import subprocess
import sys

import jax
import pytest

from seasoning import parallel

WARN, TERMINATE = parallel.CPU_COLLECTIVE_TIMEOUTS

# 4 CPU devices; device 0's thread sleeps `late` seconds before an all-reduce the others
# already wait at (a busy machine's scheduler holding one thread back).
_STRAGGLER = """
import os, sys, time
from seasoning import parallel
parallel.lengthen_cpu_collective_timeouts({timeouts})
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
jax.config.update("jax_num_cpu_devices", 4)

def late(i):
    if int(i) == 0:
        time.sleep({late})
    return np.float32(1.0)

def total(x):
    w = jax.pure_callback(late, jax.ShapeDtypeStruct((), jnp.float32), jax.lax.axis_index("d"))
    return jax.lax.psum(x * w, "d")

mesh = Mesh(np.array(jax.devices()), ("d",))
summed = jax.jit(jax.shard_map(total, mesh=mesh, in_specs=P("d"), out_specs=P()))
print(float(summed(jnp.ones(4))[0]))
"""


def _straggler(timeouts, late):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = _STRAGGLER.format(timeouts=timeouts, late=late)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_timeouts_are_added_once_and_the_users_own_are_kept(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=false --{TERMINATE}=7")
    parallel.lengthen_cpu_collective_timeouts()
    parallel.lengthen_cpu_collective_timeouts()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags == [
        "--xla_cpu_multi_thread_eigen=false",
        f"--{TERMINATE}=7",
        f"--{WARN}={parallel.CPU_COLLECTIVE_TIMEOUTS[WARN]}",
    ]
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # backends started here
    parallel.split_cpu(2, 8)  # what every driver calls on a CPU
    assert f"--{TERMINATE}={parallel.CPU_COLLECTIVE_TIMEOUTS[TERMINATE]}" in os.environ["XLA_FLAGS"]


def test_no_flag_is_added_where_a_gpu_or_tpu_plugin_is_installed(monkeypatch):
    """A plugin's own XLA reads XLA_FLAGS too, and ends the process at a flag it lacks."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: name == "jax_plugins" or real(name)
    )
    parallel.lengthen_cpu_collective_timeouts()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"


@pytest.mark.slow
def test_the_timeout_is_the_one_xla_cpu_aborts_a_late_all_reduce_on():
    """With 1 s limits a device 4 s late aborts the process, which shows XLA:CPU reads the
    flags (under its defaults, 20 s and 40 s, the same program waits for the device; under
    ours, as the drivers and the tests set them, far longer)."""
    aborted = _straggler({WARN: 1, TERMINATE: 1}, late=4)
    assert aborted.returncode != 0 and not aborted.stdout.strip()
    assert "Termination timeout for `all reduce" in aborted.stderr, aborted.stderr[-2000:]
