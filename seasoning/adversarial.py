"""The attack inside adversarial training, built from a config's `threat` and `attack` sections.

`make_training_attack` returns `attack(logits_fn, x, y, key) -> x_adv` with the threat model
and the settings bound, ready for `training.train_step(..., attack=...)`, or None for nominal
(clean) training. A config that names a threat model but no usable attack, or an attack but no
threat model, is an error: never a silent fall-back to clean training. `threat.norm='multi'`
is E-AT (Croce & Hein 2022): each batch is attacked under one of `threat.multi`, drawn
uniformly from the step's key.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections

from seasoning import attacks, threat
from seasoning.training import Attack

# fra31/robust-finetuning's L1-APGD training attack moves 5% of the coordinates at first
# (evaluation uses 20%).
L1_TRAINING_TOPK = 0.05


def make_training_attack(
    threat_cfg: ml_collections.ConfigDict, attack_cfg: ml_collections.ConfigDict
) -> Attack | None:
    """The training attack that `threat_cfg` (norm, eps) and `attack_cfg` describe.

    Args:
      threat_cfg: `norm` in linf, l2, l1, none and `eps`; or `norm` multi (E-AT) and `multi`,
        the "norm:eps" threat models one of which, drawn uniformly, attacks each batch.
      attack_cfg: `name` (none, pgd, apgd), `loss` (ce, dlr), `steps`, `step_size` (PGD; 0 means
        2.5 eps / steps), `random_start`.

    Returns:
      `attack(logits_fn, x, y, key) -> x_adv`, or None for nominal training (norm none).

    Raises:
      ValueError: an attack without a threat model, a threat model without an attack, or
        settings the attack cannot use.
    """
    if threat_cfg.norm == "multi":
        return _multi_norm_attack(threat_cfg, attack_cfg)
    tm = threat.ThreatModel(threat_cfg.norm, threat_cfg.eps)
    name = attack_cfg.name
    if tm.norm == "none":
        if name != "none":
            raise ValueError(
                f"attack.name={name!r} but threat.norm='none': set threat.norm/eps for "
                "adversarial training, or attack.name='none' for nominal training."
            )
        return None
    if name == "none":
        raise ValueError(
            f"threat={tm.norm}:{tm.eps} needs an attack for adversarial training, got "
            "attack.name='none'; use 'apgd' or 'pgd' (or threat.norm='none' to train nominally)."
        )
    if attack_cfg.steps < 1:
        raise ValueError(f"attack.steps={attack_cfg.steps} must be >= 1.")
    if attack_cfg.loss not in ("ce", "dlr"):
        raise ValueError(f"attack.loss={attack_cfg.loss!r}; expected 'ce' or 'dlr'.")
    if name == "apgd":
        if attack_cfg.step_size:
            raise ValueError(
                f"attack.step_size={attack_cfg.step_size}: APGD adapts its own step size; "
                "leave it 0 (or use attack.name='pgd')."
            )
        run = functools.partial(
            attacks.apgd,
            loss=attack_cfg.loss,
            n_iter=attack_cfg.steps,
            random_start=attack_cfg.random_start,
            init_topk=L1_TRAINING_TOPK,
            best_loss=True,  # train on the highest-loss point, as the fine-tuning reference
        )
    elif name == "pgd":
        run = functools.partial(
            attacks.pgd,
            loss=attack_cfg.loss,
            n_iter=attack_cfg.steps,
            step_size=attack_cfg.step_size or None,
            random_start=attack_cfg.random_start,
            best_loss=True,  # perturb every example, misclassified ones too (Madry et al.)
        )
    else:
        raise ValueError(f"Unknown attack.name={name!r}; expected one of 'none', 'pgd', 'apgd'.")

    def attack(logits_fn: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        return run(logits_fn, x, y, tm, key=key)

    return attack


def _multi_norm_attack(
    threat_cfg: ml_collections.ConfigDict, attack_cfg: ml_collections.ConfigDict
) -> Attack:
    """E-AT (Croce & Hein 2022): per batch, the attack of one threat model drawn uniformly."""
    runs = []
    for spec in threat_cfg.multi:
        tm = threat.parse(spec)
        single = ml_collections.ConfigDict({"norm": tm.norm, "eps": tm.eps, "multi": ()})
        runs.append(make_training_attack(single, attack_cfg))
    if len(runs) < 2 or any(run is None for run in runs):
        raise ValueError(
            f"threat.norm='multi' needs two or more adversarial threat models in threat.multi, "
            f"got {tuple(threat_cfg.multi)!r}."
        )

    def attack(logits_fn: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        draw_key, attack_key = jax.random.split(key)
        index = jax.random.randint(draw_key, (), 0, len(runs))
        branches = [functools.partial(run, logits_fn) for run in runs]
        return jax.lax.switch(index, branches, x, y, attack_key)

    return attack


def describe(threat_cfg: ml_collections.ConfigDict, attack_cfg: ml_collections.ConfigDict) -> str:
    """One line for logs: 'nominal' or e.g. 'linf eps=0.1, apgd-ce 10 steps'."""
    if threat_cfg.norm == "none":
        return "nominal (clean) training"
    start = ", random start" if attack_cfg.random_start else ""
    if threat_cfg.norm == "multi":
        threats = " / ".join(threat_cfg.multi)
        what = f"E-AT, one of {threats} per batch"
    else:
        what = f"{threat_cfg.norm} eps={threat_cfg.eps:g}"
    return (
        f"adversarial training: {what}, "
        f"{attack_cfg.name}-{attack_cfg.loss} {attack_cfg.steps} steps{start}"
    )
