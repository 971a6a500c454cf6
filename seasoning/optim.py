"""Optimisers and learning-rate schedules from config sections, built with optax."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from seasoning import errors

# The names `make_optimizer` and `make_schedule` accept (config optimizer.name, schedule.name).
OPTIMIZER_NAMES = ("sgd", "adamw")
SCHEDULE_NAMES = ("constant", "piecewise", "cosine")


def make_schedule(
    schedule: ml_collections.ConfigDict, base_lr: float, total_steps: int
) -> optax.Schedule:
    """The learning rate at each step.

    - "constant": base_lr.
    - "piecewise": base_lr, multiplied by `decay_factor` at each of `boundaries` (fractions of
      the run); (1/3, 2/3) with 0.1 is the "piecewise-ft" schedule of the fine-tuning reference.
    - "cosine": cosine decay from base_lr to 0 at the end of the run.
    Each after a linear warm-up from 0 over `warmup_steps`.
    """
    warmup = int(schedule.warmup_steps)
    if schedule.name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, base_lr, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    if schedule.name == "piecewise":
        steps = {int(round(b * total_steps)): schedule.decay_factor for b in schedule.boundaries}
        main = optax.piecewise_constant_schedule(base_lr, steps)
    elif schedule.name == "constant":
        main = optax.constant_schedule(base_lr)
    else:
        raise errors.UserError(
            f"Unknown schedule {schedule.name!r}; expected one of {SCHEDULE_NAMES}."
        )
    if not warmup:
        return main
    # optax.join_schedules restarts `main` at 0 after the boundary; piecewise boundaries are
    # fractions of the whole run, so shift them back by the warm-up.
    ramp = optax.linear_schedule(0.0, base_lr, warmup)
    return lambda step: jax.numpy.where(step < warmup, ramp(step), main(step))


def decay_mask(params: Any, decay_bn_and_bias: bool) -> Any:
    """True for the leaves weight decay applies to: kernels and embeddings, not 1-d leaves."""
    return jax.tree.map(lambda p: decay_bn_and_bias or p.ndim > 1, params)


def make_optimizer(
    optimizer: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """SGD (momentum, Nesterov) or AdamW, with weight decay and optional gradient clipping.

    SGD adds weight_decay * params to the gradient before momentum (PyTorch's SGD, as in the
    references); AdamW decays decoupled. Both skip 1-d leaves unless `decay_bn_and_bias`.
    """
    mask = lambda params: decay_mask(params, optimizer.decay_bn_and_bias)  # noqa: E731
    parts = []
    if optimizer.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(optimizer.grad_clip_norm))
    if optimizer.name == "sgd":
        if optimizer.weight_decay:
            parts.append(optax.add_decayed_weights(optimizer.weight_decay, mask))
        parts.append(
            optax.sgd(schedule, momentum=optimizer.momentum or None, nesterov=optimizer.nesterov)
        )
    elif optimizer.name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=optimizer.b1,
                b2=optimizer.b2,
                weight_decay=optimizer.weight_decay,
                mask=mask,
            )
        )
    else:
        raise errors.UserError(
            f"Unknown optimizer {optimizer.name!r}; expected one of {OPTIMIZER_NAMES}."
        )
    return optax.chain(*parts)
