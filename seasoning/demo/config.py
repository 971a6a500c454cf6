"""The demo config schema (`python -m seasoning.demo`): every key, its default, its checks.

`configs/demo.py` starts from `base_demo_config()`; the demo checks it with
`validate_demo_config`, which rejects keys it does not know, values of the wrong type,
missing config files, unknown names and numbers out of range, each with a message naming the
key, the value and what is expected. The allowed names come from the modules that own them
(`soup.grid.MODES`, `autoattack.VERSIONS`, `shift.select.METHODS`), imported when they are
needed: importing this module imports no JAX (`base_demo_config` does, for AutoAttack's
budget names).

Loading, overrides and the checks every schema shares are in `seasoning.config_lib`.
"""

from __future__ import annotations

import os

import ml_collections

from seasoning import config_lib, errors


def base_demo_config() -> ml_collections.ConfigDict:
    """Every key a demo config (`python -m seasoning.demo`) may set, with its default.

    The demo runs the shipped configs (`parent_config`, its `_to_l2`, `_to_l1`, `_to_nominal`
    children, `soup_config`, `shift_config`) with the sizes set here; 0 keeps a config's own.
    """
    c = ml_collections.ConfigDict()
    c.parent_config = "configs/fmnist_cnn_linf.py"  # the root ingredient; children beside it
    c.soup_config = "configs/soup_fmnist.py"
    c.shift_config = "configs/shift_fmnist.py"
    c.runlocal = False  # the training configs' `runlocal` variant (a few steps: tests)
    # The threat models, "norm:eps" for linf, l2 and l1 in this order: the parent trains for
    # the first, each child for its own, every robust number is measured under all three.
    c.threats = ("linf:0.1", "l2:0.8", "l1:10")
    c.parent = dict(max_steps=0, attack_steps=0, lr=0.0)  # Linf adversarial training
    # Each fine-tune (the child configs: 1 epoch, APGD 10 steps, lr 0.01); the three run side
    # by side.
    c.children = dict(max_steps=0, attack_steps=0, lr=0.0)
    # The fixed test points every robust number of the demo is computed on (the first
    # `n_examples` of the test split), in batches of `batch_size`.
    c.points = dict(n_examples=100, batch_size=100)
    # The sweep (many soups per compiled program, evaluation "batched"): the Linf/L2 and
    # Linf/nominal lines in steps of `line_step`, the Linf/L2/L1 simplex in steps of
    # `simplex_step`, under a cheaper attack. Attack keys: the version and its budgets as the
    # soup config's `eval` section names them (0: the version's).
    from seasoning.attacks import autoattack  # late: it imports JAX

    budgets = {key: 0 for key in autoattack.BUDGETS}
    c.sweep = dict(
        line_step=0.1,
        simplex_step=0.2,
        evaluation="batched",
        attack=dict(version="fast", **budgets),
    )
    # The re-check of the ingredients and the selected soups (evaluation "one_by_one").
    c.recheck = dict(attack=dict(version="standard", **budgets))
    c.shift = dict(
        grid_step=0.2, n_adaptation=1000, n_unseen=0, learned_steps=200, methods=("grid", "learned")
    )
    # Seconds each stage is expected to take (for the ETA line); measured, see the config.
    c.expected_seconds = dict(
        parent=60.0,
        children=60.0,
        sweep=60.0,
        recheck=60.0,
        shift=60.0,
    )
    return c


def validate_demo_config(config: ml_collections.ConfigDict) -> None:
    """Checks a demo config against `base_demo_config()`.

    Raises:
      UserError: naming the first unknown key, wrongly typed value, unknown name or value out
        of range, with what is expected.
    """
    from seasoning import soup
    from seasoning.attacks import autoattack
    from seasoning.shift import select
    from seasoning.soup import grid as soup_grid

    config_lib.check_against_schema(config, base_demo_config(), prefix="")
    for key in ("parent_config", "soup_config", "shift_config"):
        path = config[key]
        if not os.path.isfile(path):
            raise errors.UserError(f"Config {key}={path!r}: no such config file.")
    config_lib.check_threats("threats", config.threats)
    norms = tuple(spec.split(":")[0].strip() for spec in config.threats)
    if norms != ("linf", "l2", "l1"):
        raise errors.UserError(
            f"Config threats={config.threats!r}: expected one linf, one l2 and one l1 threat "
            "model, in this order (the parent's and the children's)."
        )
    for key in (
        "parent.max_steps",
        "parent.attack_steps",
        "children.max_steps",
        "children.attack_steps",
    ):
        config_lib.check_int(config, key, 0)
    for key in ("parent.lr", "children.lr"):
        config_lib.check_number(config, key, 0)
    for key in ("points.n_examples", "points.batch_size"):
        config_lib.check_int(config, key, 1)
    for key in ("sweep.line_step", "sweep.simplex_step", "shift.grid_step"):
        config_lib.check_number(config, key, 0, 1, low_open=True, high_closed=True)
        soup.simplex_grid(2, config_lib.value_at(config, key))  # 1 / step must be an integer
    config_lib.check_choice(
        "sweep.evaluation", soup_grid.current_mode_name(config.sweep.evaluation), soup_grid.MODES
    )
    for section in ("sweep.attack", "recheck.attack"):
        attack = config_lib.value_at(config, section)
        config_lib.check_choice(f"{section}.version", attack.version, autoattack.VERSIONS)
        for key in attack:
            if key != "version":
                config_lib.check_int(config, f"{section}.{key}", 0)
    config_lib.check_int(config, "shift.n_adaptation", 1)
    config_lib.check_int(config, "shift.n_unseen", 0)
    config_lib.check_int(config, "shift.learned_steps", 1)
    if not config.shift.methods:
        raise errors.UserError("Config shift.methods=(): name at least one selection method.")
    for method in config.shift.methods:
        config_lib.check_choice("shift.methods", method, select.METHODS)
    for key in config.expected_seconds:
        config_lib.check_number(config, f"expected_seconds.{key}", 0, low_open=True)
