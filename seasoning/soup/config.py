"""The soup config schema (`python -m seasoning.soup`): every key, its default, its checks.

Soup configs (`configs/soup_*.py`, through `recipes.paper_soup_config`) start from
`base_soup_config()`; `soup.sweep.run_sweep` checks them with `validate_soup_config`, which
rejects keys it does not know, values of the wrong type, unknown names (grid kind, BatchNorm
policy, AutoAttack version, evaluation mode, dataset, ...) and numbers out of range, each with
a message naming the key, the value and what is expected. The allowed names come from the
modules that own them (`soup.GRID_KINDS`, `soup.BN_POLICIES`, `soup.grid.MODES`,
`autoattack.VERSIONS`, ...), imported when a config is validated: this module imports no JAX,
so loading a soup config stays fast.

Loading, overrides and the checks every schema shares are in `seasoning.config_lib`.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from seasoning import config_lib, errors


def base_soup_config() -> ml_collections.ConfigDict:
    """Every key a soup config (`python -m seasoning.soup`) may set, with its default."""
    c = ml_collections.ConfigDict()
    c.ingredients = ()  # run dirs of `seasoning.train`, fine-tuned from one parent
    c.labels = ()  # short names for tables and plots (default: the run dirs' names)
    # simplex: all weights in steps of `step` summing to 1; line (two ingredients): alpha from
    # `low` to `high` in steps of `step`, weights (1 - alpha, alpha); outside [0, 1] it
    # extrapolates; list: the soups of `weights`, one row of K weights (summing to 1) a soup.
    c.grid = dict(kind="simplex", step=0.1, low=0.0, high=1.0, weights=())
    c.bn_policy = "interpolate"  # or "recalibrate" on `calibration_examples` training images
    c.calibration_examples = 512
    c.eval = dict(
        # "": the ingredients' own dataset; else "NAME[:split]" of another registered dataset
        # (`data.parse_dataset`), e.g. "cifar10:test".
        dataset="",
        split="",  # default: the ingredients' eval split (or the split that `dataset` names)
        n_examples=500,
        batch_size=250,
        version="fast",
        n_iter=0,  # 0: the version's
        n_target_classes=0,  # 0: the version's
        # The rest of the version's budgets (0: the version's): APGD restarts, FAB-T's
        # iterations and target classes, Square's queries.
        n_restarts=0,
        fab_n_iter=0,
        fab_n_target_classes=0,
        n_queries=0,
        threats=(),  # "norm:eps" strings; default: the dataset's usual radii
        compute_dtype="float32",  # the soups' compute dtype under attack (not the training's)
    )
    # How soups are evaluated (soup/grid.py): "batched", many soups per compiled program, every
    # attack on every point; "one_by_one", each soup attacked as seasoning.evaluate attacks a
    # model (later attacks only on the points still robust); "auto": one_by_one on CPU (measured
    # faster there), batched on accelerators. Old names: "grid", "per_soup".
    c.evaluation = "auto"
    c.chunk = 4  # batched: soups per compiled call (and per save of grid.json)
    c.vectorize = 1  # batched: soups vmapped side by side (>1 only if a batch cannot fill the GPU)
    c.seed = 0
    c.front = ()  # two metrics for the trade-off plot, e.g. ("linf:0.1", "l2:0.8")
    return c


def validate_soup_config(config: ml_collections.ConfigDict) -> None:
    """Checks a soup config against `base_soup_config()`.

    Names are checked against the modules that own them (soup, soup.grid, models, data,
    attacks.autoattack, threat), numbers against their ranges.

    Raises:
      UserError: naming the first unknown key, wrongly typed value, unknown name or value out
        of range, with what is expected.
    """
    # Late: these import JAX, which config loading does not need.
    from seasoning import data, models, soup
    from seasoning.attacks import autoattack
    from seasoning.soup import grid as soup_grid

    config_lib.check_against_schema(config, base_soup_config(), prefix="")
    k = config_lib.check_ingredients(config)
    config_lib.check_choice("grid.kind", config.grid.kind, soup.GRID_KINDS)
    if config.grid.kind == "line" and k != 2:
        raise errors.UserError(f"Config grid.kind='line' needs 2 ingredients, got {k}.")
    config_lib.check_number(config, "grid.step", 0, 1, low_open=True, high_closed=True)
    if config.grid.kind == "list":
        _check_weight_list(config.grid.weights, k)
    config_lib.check_number(config, "grid.low", -math.inf)
    config_lib.check_number(config, "grid.high", -math.inf)
    if config.grid.kind == "line" and not config.grid.low < config.grid.high:
        raise errors.UserError(
            f"Config grid.low={config.grid.low!r}, grid.high={config.grid.high!r}: expected "
            "low < high for grid.kind='line'."
        )
    config_lib.check_choice("bn_policy", config.bn_policy, soup.BN_POLICIES)
    config_lib.check_choice("eval.version", config.eval.version, autoattack.VERSIONS)
    config_lib.check_choice("eval.compute_dtype", config.eval.compute_dtype, models.COMPUTE_DTYPES)
    config_lib.check_choice(
        "evaluation", soup_grid.current_mode_name(config.evaluation), soup_grid.MODES
    )
    config_lib.check_threats("eval.threats", config.eval.threats)
    if config.eval.dataset:
        try:
            name, split = data.parse_dataset(config.eval.dataset)
            if not config.eval.threats:
                data.default_threats(name)
        except errors.UserError as e:
            raise errors.UserError(f"Config eval.dataset={config.eval.dataset!r}: {e}") from None
        if split and config.eval.split and split != config.eval.split:
            raise errors.UserError(
                f"Config eval.dataset={config.eval.dataset!r} names split {split!r} and "
                f"eval.split={config.eval.split!r} another: expected one of the two."
            )
    for key in ("n_examples", *autoattack.BUDGETS):
        config_lib.check_int(config, f"eval.{key}", 0)
    config_lib.check_int(config, "eval.batch_size", 1)
    for key in ("chunk", "vectorize", "calibration_examples"):
        config_lib.check_int(config, key, 1)
    config_lib.check_int(config, "seed", 0)
    if config.front and len(config.front) != 2:
        raise errors.UserError(f"Config front={config.front!r}: expected two metrics.")


def _check_weight_list(weights: Any, k: int) -> None:
    """grid.weights of grid.kind 'list': one or more rows of k convex weights."""
    from seasoning import soup

    rows = [tuple(r) if isinstance(r, tuple | list) else r for r in weights]
    if not rows or any(not isinstance(r, tuple) or len(r) != k for r in rows):
        raise errors.UserError(
            f"Config grid.weights={weights!r}: grid.kind='list' expects one or more rows of "
            f"{k} weights (one per ingredient), e.g. (({', '.join(['1.0'] + ['0.0'] * (k - 1))}),)."
        )
    try:
        soup.check_weights([[float(w) for w in r] for r in rows], k)
    except (TypeError, ValueError) as e:
        raise errors.UserError(f"Config grid.weights: {e}") from None
