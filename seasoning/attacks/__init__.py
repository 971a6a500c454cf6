"""Adversarial attacks on any `logits_fn(x) -> logits`: pure, jit-able, vmap-able functions.

Every attack takes `(logits_fn, x, y, tm, *, key, ...)` with x [B, ...] float32 in [0, 1],
y int [B] and a `threat.ThreatModel`, and returns x_adv inside the threat model, per example the
worst case it found (a misclassified point if any, else the highest-loss point).
"""

from seasoning.attacks import losses
from seasoning.attacks.apgd import apgd, apgd_targeted
from seasoning.attacks.autoattack import (
    AutoAttackInfo,
    auto_attack,
    correct,
    robust_accuracy,
    run_standard_evaluation,
    union_robust,
)
from seasoning.attacks.fab import FabResult, fab, fab_targeted_runs
from seasoning.attacks.pgd import pgd
from seasoning.attacks.square import square

__all__ = [
    "AutoAttackInfo",
    "apgd",
    "apgd_targeted",
    "auto_attack",
    "correct",
    "fab",
    "fab_targeted_runs",
    "FabResult",
    "losses",
    "pgd",
    "robust_accuracy",
    "run_standard_evaluation",
    "square",
    "union_robust",
]
