"""Multi-process jobs for the tests: local processes of one jax.distributed job.

Each process gets `devices // processes` CPU devices (4 in all, the device count the tests'
1-process comparisons use), CPU collectives over localhost and its output in a log file (a
pipe would block a chatty process that nobody reads while it runs).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax

from seasoning import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600
DEVICES = 4  # in all, over a job's processes


@dataclasses.dataclass
class Process:
    """One process of a job: the running process and the file its output goes to."""

    popen: subprocess.Popen
    log: str

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()


def one_process_mesh():
    """This process's mesh of a job's device count, to compare a job with (the tests' process
    has 4 CPU devices: all of them)."""
    return parallel.make_mesh(jax.devices()[:DEVICES])


def start(
    module: str, args: list[str], log_dir: str, processes: int = 2, devices: int = DEVICES
) -> list[Process]:
    """Starts `python -m module args --cpu_devices=...` as `processes` processes of one job."""
    port = parallel.free_local_port()
    os.makedirs(log_dir, exist_ok=True)
    started = []
    for i in range(processes):
        env = parallel.local_process_env(i, processes, port)
        argv = [sys.executable, "-m", module, *args, f"--cpu_devices={devices // processes}"]
        log = os.path.join(log_dir, f"{module}.{port}.{i}.log")
        with open(log, "w") as out:
            popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(Process(popen, log))
    return started


def wait(job: list[Process], timeout: float = TIMEOUT) -> list[int]:
    """Waits for every process of `job` (killing all of them after `timeout` s); return codes."""
    try:
        return [p.popen.wait(timeout=timeout) for p in job]
    finally:
        for p in job:
            p.popen.kill()


def run(module: str, args: list[str], log_dir: str, processes: int = 2) -> list[str]:
    """Runs a job to the end; asserts every process succeeded; returns their outputs."""
    job = start(module, args, log_dir, processes)
    codes = wait(job)
    for i, (p, code) in enumerate(zip(job, codes, strict=True)):
        assert code == 0, f"process {i} exited with {code}:\n{p.output()[-4000:]}"
    return [p.output() for p in job]
