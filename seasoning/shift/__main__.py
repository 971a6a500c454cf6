"""Soups for distribution shifts: `python -m seasoning.shift --config=... --workdir=...`.

    python -m seasoning.shift --config=configs/shift_fmnist.py --workdir=runs/shift_fmnist

Flags -> config -> `shift.run.run_shift` (see there for what is written); prints the table.
`--resume` continues an interrupted run in the same workdir; `--overwrite` replaces a run of
other settings.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import app, flags

from seasoning import cli, config_lib
from seasoning import workdir as workdir_lib
from seasoning.shift import run as run_lib

_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace a shift.json of other settings (or an unfinished run)."
)


def main(argv, config: ml_collections.ConfigDict) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cli.WORKDIR.value:
        raise app.UsageError("--workdir is required.")

    def go():
        cli.start(max(config.batch_size, 1))
        run_lib.run_shift(
            config,
            cli.WORKDIR.value,
            resume=cli.RESUME.value,
            overwrite=_OVERWRITE.value,
            force_lease=cli.FORCE_LEASE.value,
        )
        if jax.process_index() == 0:
            print(workdir_lib.read_text(workdir_lib.path(cli.WORKDIR.value, run_lib.REPORT_FILE)))
            print(
                f"Wrote {cli.WORKDIR.value}/{{{run_lib.SHIFT_FILE},{run_lib.ARRAYS_FILE},"
                f"{run_lib.REPORT_FILE},{run_lib.WEIGHTS_PLOT}}}."
            )

    cli.exit_on_user_error(go)


if __name__ == "__main__":
    config_lib.main_with_config(main)
