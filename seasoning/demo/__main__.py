"""The demo: the whole method on Fashion-MNIST, then report.md. `make demo` runs this.

    python -m seasoning.demo --config=configs/demo.py --workdir=runs/demo [--fresh]

Stages (`seasoning/demo/stages.py`): Linf adversarial training, fine-tuning to L2, L1 and
nominal training (side by side), one sweep of the paper's soup lines and simplex under a cheap
attack, then side by side the re-check of the ingredients and the selected soups under the
stronger attack on the same points and the shift soups, and the report
(`seasoning/demo/report.py`). Each stage prints a line with its expected time and the demo's
ETA, then its own progress. A finished stage is reused when the demo runs again; an
interrupted one resumes; `--fresh` deletes the demo's workdir first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import ml_collections
from absl import app, flags

from seasoning import cli, config_lib, errors
from seasoning import workdir as workdir_lib
from seasoning.demo import config as demo_config
from seasoning.demo import report, selection, stages

_FRESH = flags.DEFINE_bool("fresh", False, "Delete the demo's workdir first and start over.")


def _minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _relay(prefix: str, stream) -> None:
    """Prints a concurrent stage's output lines with its name in front."""
    for line in stream:
        print(f"[{prefix}] {line}", end="", flush=True)


def _run(group: list[stages.Stage], index: int, plan, record, env) -> None:
    """Runs the stages of one group (side by side), skipping those finished before with the
    same command."""
    todo = [s for s in group if not record.finished(s)]
    position = f"[{index + 1}/{len(plan) + 1}]"
    for stage in group:
        if stage not in todo:
            took = record.finished(stage)["seconds"]
            print(f"{position} {stage.title}: done before ({_minutes(took)}), reused", flush=True)
    if not todo:
        return
    eta = stages.eta_seconds(plan, record, index)
    titles = ", ".join(s.title for s in todo)
    together = " (side by side)" if len(todo) > 1 else ""
    print(
        f"{position} {titles}{together}: ~{_minutes(max(s.expected_seconds for s in todo))} "
        f"(demo ETA {_minutes(eta)})",
        flush=True,
    )
    for stage in todo:
        print(f"  $ {stages.command_line(stage)}", flush=True)
    start = time.monotonic()
    pipe = len(todo) > 1
    procs, relays = [], []
    for stage in todo:
        proc = subprocess.Popen(
            [sys.executable, *stage.argv],
            env=env,
            text=True,
            stdout=subprocess.PIPE if pipe else None,
            stderr=subprocess.STDOUT if pipe else None,
        )
        procs.append(proc)
        if pipe:
            relays.append(threading.Thread(target=_relay, args=(stage.name, proc.stdout)))
            relays[-1].start()
    failed, running = [], dict(zip(todo, procs, strict=True))
    try:
        while running:  # each stage timed to its own end
            for stage, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[stage]
                if proc.returncode:
                    failed.append(f"{stage.name!r} failed (exit status {proc.returncode})")
                else:
                    record.finish(stage, time.monotonic() - start)
            time.sleep(0.2)
    except KeyboardInterrupt:
        for proc in running.values():
            proc.terminate()
            proc.wait()
        raise errors.UserError(
            "Interrupted. Run the demo again to resume: finished stages are reused and the "
            "interrupted one continues from what it saved."
        ) from None
    for relay in relays:
        relay.join()
    if failed:
        raise errors.UserError(
            f"Stage {', '.join(failed)}; its log is above. Run the demo again to resume "
            "where it stopped, or with --fresh (make demo FRESH=1) to start over."
        )


def run_demo(config: ml_collections.ConfigDict, workdir: str, fresh: bool = False) -> str:
    """Every stage, then report.md; returns the report's path."""
    demo_config.validate_demo_config(config)
    if fresh:
        stages.check_clearable(workdir)
        if os.path.exists(workdir):
            print(f"--fresh: deleting {workdir}", flush=True)
            shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ)
    # Compiled programs are cached across the stages' processes (and a second demo).
    env.setdefault(
        "JAX_COMPILATION_CACHE_DIR", os.path.abspath(os.path.join(workdir, ".jax_cache"))
    )
    record = stages.Record(workdir)
    record.data.setdefault("machine", report.machine())
    record.data["config"] = config_lib.as_json(config)
    record.save()  # marks the workdir as the demo's before a stage can fail: --fresh may clear it
    start = time.monotonic()
    plan = stages.stage_groups(stages.plan(config, workdir))
    total = len(plan) + 1
    last = len(plan) - 1  # the re-check and the shift soups, side by side
    for i, group in enumerate(plan[:last]):
        _run(group, i, plan, record, env)
    # The re-check's command depends on the sweep: it replaces the plan's placeholder.
    sweep = workdir_lib.read_json(workdir_lib.path(workdir, stages.SWEEP_DIR, "grid.json"))
    chosen = selection.select(sweep, stages.LABELS)
    workdir_lib.write_json(workdir_lib.path(workdir, stages.SELECTION_FILE), {"soups": chosen})
    rows = selection.one_hot_rows(stages.LABELS) + [c["weights"] for c in chosen]
    plan[last] = [
        stages.recheck_stage(config, workdir, rows) if s.name == "recheck" else s
        for s in plan[last]
    ]
    _run(plan[last], last, plan, record, env)
    print(f"[{total}/{total}] report", flush=True)
    record.data["seconds_this_session"] = round(time.monotonic() - start, 2)
    record.save()
    return report.write(workdir)


def main(argv, config: ml_collections.ConfigDict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cli.WORKDIR.value:
        raise app.UsageError("--workdir is required.")

    def run():
        path = run_demo(config, cli.WORKDIR.value, fresh=_FRESH.value)
        print(f"The report: {path}", file=sys.stdout, flush=True)

    cli.exit_on_user_error(run)


if __name__ == "__main__":
    config_lib.main_with_config(main)
