"""Training that reaches a NaN or infinity: stopped (or the step skipped), never saved.

The train step flags, inside the compiled program, each step whose loss, gradient norm or
updated weights are NaN or infinite (`training.train_step`'s `nonfinite` metric). The training
loop reads these flags when it fetches values anyway (each log window) and before every
checkpoint and evaluation, so no host synchronisation is added per step and a non-finite state
is never written. Policies (config key `nonfinite`):
- "stop" (the default): the run ends at the first such step with `errors.DivergedError`
  (exit status 3 on the command line), whose message names the step, the quantities, the last
  checkpoint (finite) and how to go on from it.
- "skip": the train step returns its input state at such steps (the update is discarded;
  counted in the `train/nonfinite` metric) and the run stops as above after
  `max_nonfinite_in_row` skipped steps in a row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from seasoning import errors

POLICIES = ("stop", "skip")
# The step's values a message reports, in this order.
QUANTITIES = ("loss", "grad_norm", "param_norm")


@dataclasses.dataclass
class Guard:
    """Reads the train step's `nonfinite` flags and stops the run as its policy says.

    Attributes:
      policy: one of `POLICIES`.
      max_in_row: "skip" stops after this many non-finite steps in a row.
      workdir: the run's directory (named in the message).
      lr: the configured learning rate (named in the message).
      last_saved: the step of the last checkpoint written (None: none yet); the loop updates it.
    """

    policy: str
    max_in_row: int
    workdir: str
    lr: float
    last_saved: int | None = None
    _in_row: int = dataclasses.field(default=0, init=False, repr=False)  # skipped steps in a row

    def check(self, first_step: int, metrics: Mapping[str, np.ndarray]) -> int:
        """Checks the steps `first_step`, `first_step + 1`, ... (1-based, as logged).

        Args:
          first_step: the step number of the first row of `metrics`.
          metrics: the train step's metrics of consecutive steps, stacked (one row per step).

        Returns:
          How many of these steps were skipped (always 0 under "stop").

        Raises:
          DivergedError: under "stop", at the first non-finite step; under "skip", once
            `max_in_row` steps in a row were non-finite.
        """
        skipped = 0
        for i, flag in enumerate(np.asarray(metrics["nonfinite"]).reshape(-1)):
            step = first_step + i
            if not flag:
                self._in_row = 0
                continue
            values = {k: float(np.asarray(metrics[k]).reshape(-1)[i]) for k in QUANTITIES}
            if self.policy == "stop":
                raise errors.DivergedError(self._message(step, values, cause=""))
            skipped += 1
            self._in_row += 1
            if self._in_row >= self.max_in_row:
                cause = (
                    f", {self._in_row} skipped steps in a row (nonfinite=skip stops after "
                    f"max_nonfinite_in_row={self.max_in_row})"
                )
                raise errors.DivergedError(self._message(step, values, cause=cause))
        return skipped

    def _message(self, step: int, values: dict[str, float], cause: str) -> str:
        found = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        what = " and ".join(bad) or "the BatchNorm statistics"
        text = (
            f"Training diverged: {what} not finite at step {step}{cause} ({found}); stopped, "
            f"and nothing from step {step} on was saved. "
        )
        lower_lr = f"a lower --config.optimizer.lr (this run: {self.lr:g})"
        skip = " or --config.nonfinite=skip (skip such steps)" if self.policy == "stop" else ""
        if self.last_saved is None:
            return text + f"No checkpoint had been written: start again with {lower_lr}{skip}."
        return text + (
            f"The last checkpoint, step {self.last_saved} of {self.workdir}, holds finite "
            f"weights. To go on from it, train a new run from those weights with {lower_lr}"
            f"{skip}: --config.init_from={self.workdir} --workdir=NEW_DIR."
        )
