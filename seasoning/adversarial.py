"""The attack inside adversarial training, built from a config's `threat` and `attack` sections.

`make_training_attack` returns `attack(logits_fn, x, y, key) -> x_adv` with the threat model
and the settings bound, ready for `training.train_step(..., attack=...)`, or None for nominal
(clean) training. Both attacks train on the highest-loss point they find for every example,
misclassified ones included (Madry et al.; fra31/robust-finetuning). A config that names a
threat model but no usable attack, or an attack but no threat model, is an error: never a
silent fall-back to clean training.

`threat.norm='multi'` is E-AT (Croce & Hein 2022): each batch is attacked under one of
`threat.multi`. With `threat.sampling='adaptive'` (the reference's rule, fra31/robust-finetuning
`train.py`) threat model i is drawn with probability proportional to 1 - a_i, a_i the running
robust accuracy of the training attack's batches under it since the start of the run
(uniformly until each has been drawn once); `uniform` draws uniformly. The running counts are
a `training.AttackWithStats` and live in the TrainState, so they are checkpointed and resume.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seasoning import attacks, errors, threat
from seasoning.attacks.apgd import apgd_runs
from seasoning.attacks.losses import LOSSES
from seasoning.training import Attack, AttackWithStats

# The training attacks (config attack.name): "none" for nominal training.
ATTACK_NAMES = ("none", "pgd", "apgd")

# How E-AT draws each batch's threat model (see module doc); the first is the default.
MULTI_SAMPLING = ("adaptive", "uniform")

# fra31/robust-finetuning's L1-APGD training attack moves 5% of the coordinates at first
# (evaluation uses 20%).
L1_TRAINING_TOPK = 0.05


def make_training_attack(
    threat_cfg: ml_collections.ConfigDict, attack_cfg: ml_collections.ConfigDict
) -> Attack | AttackWithStats | None:
    """The training attack that `threat_cfg` (norm, eps) and `attack_cfg` describe.

    Args:
      threat_cfg: `norm` in linf, l2, l1, none and `eps`; or `norm` multi (E-AT), `multi`,
        the "norm:eps" threat models one of which attacks each batch, and `sampling` (adaptive
        or uniform, see module doc).
      attack_cfg: `name` (none, pgd, apgd), `loss` (ce, dlr), `steps`, `step_size` (PGD; 0 means
        2.5 eps / steps), `random_start`.

    Returns:
      `attack(logits_fn, x, y, key) -> x_adv`; an `AttackWithStats` for E-AT; None for nominal
      training (norm none).

    Raises:
      ValueError: an attack without a threat model, a threat model without an attack, or
        settings the attack cannot use.
    """
    if threat_cfg.norm == "multi":
        return _multi_norm_attack(threat_cfg, attack_cfg)
    tm = threat.ThreatModel(threat_cfg.norm, threat_cfg.eps)
    run = _attack_with_flags(tm, attack_cfg)
    if run is None:
        return None

    def attack(logits_fn: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        return run(logits_fn, x, y, key)[0]

    return attack


def _attack_with_flags(tm: threat.ThreatModel, attack_cfg: ml_collections.ConfigDict):
    """`run(logits_fn, x, y, key) -> (x_adv, robust [B])`, or None for nominal training.

    robust: the attack never misclassified the example (APGD: at any iterate; PGD: at x_adv).
    """
    name = attack_cfg.name
    if tm.norm == "none":
        if name != "none":
            raise errors.UserError(
                f"attack.name={name!r} but threat.norm='none': set threat.norm/eps for "
                "adversarial training, or attack.name='none' for nominal training."
            )
        return None
    if name == "none":
        raise errors.UserError(
            f"threat={tm.norm}:{tm.eps} needs an attack for adversarial training, got "
            "attack.name='none'; use 'apgd' or 'pgd' (or threat.norm='none' to train nominally)."
        )
    if attack_cfg.steps < 1:
        raise errors.UserError(f"attack.steps={attack_cfg.steps} must be >= 1.")
    if attack_cfg.loss not in LOSSES:
        raise errors.UserError(f"attack.loss={attack_cfg.loss!r}; expected one of {LOSSES}.")
    if name == "apgd":
        if attack_cfg.step_size:
            raise errors.UserError(
                f"attack.step_size={attack_cfg.step_size}: APGD adapts its own step size; "
                "leave it 0 (or use attack.name='pgd')."
            )

        def run(logits_fn, x, y, key):
            res = apgd_runs(
                logits_fn,
                x,
                y,
                tm,
                key=key,
                targets=None,
                n_runs=1,
                loss=attack_cfg.loss,
                n_iter=attack_cfg.steps,
                random_start=attack_cfg.random_start,
                init_topk=L1_TRAINING_TOPK,
            )
            # The highest-loss point, as the fine-tuning reference trains on.
            return tm.clamp(res.x_best_loss, x), ~res.fooled

        return run
    if name == "pgd":

        def run(logits_fn, x, y, key):
            x_adv = attacks.pgd(
                logits_fn,
                x,
                y,
                tm,
                key=key,
                loss=attack_cfg.loss,
                n_iter=attack_cfg.steps,
                step_size=attack_cfg.step_size or None,
                random_start=attack_cfg.random_start,
                best_loss=True,  # perturb every example, misclassified ones too (Madry et al.)
            )
            return x_adv, attacks.correct(logits_fn, x_adv, y)

        return run
    raise errors.UserError(f"Unknown attack.name={name!r}; expected one of {ATTACK_NAMES}.")


def _multi_norm_attack(
    threat_cfg: ml_collections.ConfigDict, attack_cfg: ml_collections.ConfigDict
) -> AttackWithStats:
    """E-AT (Croce & Hein 2022): per batch, the attack of one threat model (see module doc)."""
    if threat_cfg.sampling not in MULTI_SAMPLING:
        raise errors.UserError(
            f"threat.sampling={threat_cfg.sampling!r}; expected one of {MULTI_SAMPLING}."
        )
    tms = [threat.parse(spec) for spec in threat_cfg.multi]
    runs = [_attack_with_flags(tm, attack_cfg) for tm in tms]
    if len(runs) < 2 or any(run is None for run in runs):
        raise errors.UserError(
            f"threat.norm='multi' needs two or more adversarial threat models in threat.multi, "
            f"got {tuple(threat_cfg.multi)!r}."
        )
    adaptive = threat_cfg.sampling == "adaptive"

    def plan(key: jax.Array, counts: jax.Array) -> jax.Array:
        """The index of the batch's threat model."""
        return jax.random.categorical(key, jnp.log(draw_weights(counts, adaptive)))

    def perturb(logits_fn: Any, x: jax.Array, y: jax.Array, key: jax.Array, index: jax.Array):
        branches = [functools.partial(r, logits_fn) for r in runs]
        x_adv, robust = jax.lax.switch(index, branches, x, y, key)
        seen = jnp.stack([jnp.sum(robust, dtype=jnp.float32), jnp.float32(robust.shape[0])])
        return x_adv, jnp.zeros((len(runs), 2), jnp.float32).at[index].add(seen)

    # Per threat model: examples the training attack left robust, examples attacked.
    return AttackWithStats(
        plan=plan, perturb=perturb, initial_stats=np.zeros((len(runs), 2), np.float32)
    )


def draw_weights(counts: jax.Array, adaptive: bool = True) -> jax.Array:
    """E-AT's unnormalised probabilities of drawing each threat model, [T].

    Args:
      counts: [T, 2]: per threat model, the examples its training attacks left robust and the
        examples it attacked, since the start of the run.
      adaptive: 1 - running robust accuracy (uniform until every threat model was drawn, or if
        the model is robust under all); False: uniform.
    """
    uniform = jnp.ones(counts.shape[:1], jnp.float32)
    if not adaptive:
        return uniform
    robust_accuracy = counts[:, 0] / jnp.maximum(counts[:, 1], 1.0)
    weights = 1.0 - robust_accuracy
    usable = jnp.all(counts[:, 1] > 0) & (jnp.sum(weights) > 0)
    return jnp.where(usable, weights, uniform)


def describe(threat_cfg: ml_collections.ConfigDict, attack_cfg: ml_collections.ConfigDict) -> str:
    """One line for logs: 'nominal' or e.g. 'linf eps=0.1, apgd-ce 10 steps'."""
    if threat_cfg.norm == "none":
        return "nominal (clean) training"
    start = ", random start" if attack_cfg.random_start else ""
    if threat_cfg.norm == "multi":
        threats = " / ".join(threat_cfg.multi)
        how = "by 1 - running robust accuracy" if threat_cfg.sampling == "adaptive" else "uniformly"
        what = f"E-AT, one of {threats} per batch, drawn {how}"
    else:
        what = f"{threat_cfg.norm} eps={threat_cfg.eps:g}"
    return (
        f"adversarial training: {what}, "
        f"{attack_cfg.name}-{attack_cfg.loss} {attack_cfg.steps} steps{start}"
    )
