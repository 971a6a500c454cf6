"""Sweep soups of fine-tuned ingredients: `python -m seasoning.soup --config=... --workdir=...`.

    python -m seasoning.soup --config=configs/soup_fmnist.py:soup=l2 --workdir=runs/soup_l2

Flags -> config -> `soup.sweep.run_sweep` (see there for what is written); prints the best
soup per metric. `--resume` continues an interrupted sweep in the same workdir.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import app

from seasoning import cli, config_lib
from seasoning.soup import sweep


def main(argv, config: ml_collections.ConfigDict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cli.WORKDIR.value:
        raise app.UsageError("--workdir is required.")

    def run():
        cli.start(max(config.eval.batch_size, 1))
        result = sweep.run_sweep(
            config, cli.WORKDIR.value, resume=cli.RESUME.value, force_lease=cli.FORCE_LEASE.value
        )
        if jax.process_index() == 0:
            settings = result["settings"]
            print(sweep.summary(result, settings["labels"], settings["metrics"]))
            print(f"Wrote {cli.WORKDIR.value}/{{{sweep.GRID_FILE},{sweep.CSV_FILE}}} and plots.")

    cli.exit_on_user_error(run)


if __name__ == "__main__":
    config_lib.main_with_config(main)
