"""The shift config schema (`python -m seasoning.shift`): every key, its default, its checks.

Shift configs (`configs/shift_*.py`, through `recipes.paper_shift_config`) start from
`base_shift_config()`; `shift.run.run_shift` checks them with `validate_shift_config`, which
rejects keys it does not know, values of the wrong type, unknown names (shifted dataset,
selection method, BatchNorm policy, AutoAttack version, ...) and numbers out of range, each
with a message naming the key, the value and what is expected. The allowed names come from
the modules that own them (`shift.select.METHODS`, `soup.BN_POLICIES`, `data.parse_dataset`,
...), imported when a config is validated: this module imports no JAX, so loading a shift
config stays fast.

Loading, overrides and the checks every schema shares are in `seasoning.config_lib`.
"""

from __future__ import annotations

import ml_collections

from seasoning import config_lib, errors


def base_shift_config() -> ml_collections.ConfigDict:
    """Every key a shift config (`python -m seasoning.shift`) may set, with its default."""
    c = ml_collections.ConfigDict()
    # Run dirs of `seasoning.train`, fine-tuned from one parent; the paper's four: Linf,
    # Linf->L2, Linf->L1, Linf->nominal.
    c.ingredients = ()
    c.labels = ()  # short names for tables and plots (default: the run dirs' names)
    # The shifted test sets, "NAME[:split]" of the registry (`data.DATASETS`); a group (e.g.
    # "fashion_mnist_corrupted") scores the mean over its members. One column each.
    c.shifts = ()
    c.columns = ()  # the columns' names (default: the shifts' names)
    c.n_adaptation = 1000  # adaptation images per shift (spread over a group's members)
    c.n_unseen = 0  # unseen images per shift reported on; 0: every other image
    c.split_seed = 0
    c.grid_step = 0.1  # the simplex grid of soups (286 for 4 ingredients at 0.1)
    c.methods = ("grid", "learned", "greedy")  # selection methods (`shift.select.METHODS`)
    # The learned soup: Adam on the soup weights (softmax over the simplex, or unconstrained
    # with `extrapolate`), `batch_size` adaptation images a step (the single soup: an equal
    # share from each shift).
    c.learned = dict(steps=200, batch_size=64, learning_rate=0.1, extrapolate=False)
    # Logit ensembles, each "a+b" of ingredient labels; () = first + last (Linf + nominal in
    # the paper's order) and all of them.
    c.ensembles = ()
    c.batch_size = 500  # images per compiled call of the clean predictions
    c.bn_policy = "interpolate"  # or "recalibrate" on `calibration_examples` training images
    c.calibration_examples = 512
    c.compute_dtype = "float32"
    # AutoAttack of every selected soup (and each ingredient) on the ingredients' test set.
    c.robust = dict(
        enabled=True,
        dataset="",  # "": the ingredients' own dataset; else "NAME[:split]"
        split="",
        n_examples=500,
        batch_size=250,
        version="fast",
        n_iter=0,  # 0: the version's
        n_target_classes=0,  # 0: the version's
        threats=(),  # "norm:eps"; default: the dataset's usual radii
    )
    c.seed = 0
    return c


def validate_shift_config(config: ml_collections.ConfigDict) -> None:
    """Checks a shift config against `base_shift_config()`.

    Raises:
      UserError: naming the first unknown key, wrongly typed value, unknown name or value out
        of range, with what is expected.
    """
    from seasoning import data, models, soup
    from seasoning.attacks import autoattack
    from seasoning.shift import select

    config_lib.check_against_schema(config, base_shift_config(), prefix="")
    k = config_lib.check_ingredients(config)
    if not config.shifts:
        raise errors.UserError("Config shifts=(): name at least one dataset (NAME[:split]).")
    for spec in config.shifts:
        try:
            data.parse_dataset(spec)
        except errors.UserError as e:
            raise errors.UserError(f"Config shifts: {e}") from None
    if config.columns and len(config.columns) != len(config.shifts):
        raise errors.UserError(
            f"Config columns has {len(config.columns)} names for {len(config.shifts)} shifts."
        )
    names = list(config.columns) or list(config.shifts)
    if len(set(names)) != len(names) or any("/" in n and config.columns for n in names):
        raise errors.UserError(f"Config columns={names}: expected distinct names without '/'.")
    config_lib.check_int(config, "n_adaptation", 1)
    config_lib.check_int(config, "n_unseen", 0)
    config_lib.check_int(config, "split_seed", 0)
    config_lib.check_number(config, "grid_step", 0, 1, low_open=True, high_closed=True)
    if not config.methods:
        raise errors.UserError(f"Config methods=(): expected some of {select.METHODS}.")
    for method in config.methods:
        config_lib.check_choice("methods", method, select.METHODS)
    config_lib.check_int(config, "learned.steps", 1)
    config_lib.check_int(config, "learned.batch_size", 1)
    config_lib.check_number(config, "learned.learning_rate", 0, low_open=True)
    labels = list(config.labels) or [str(i) for i in range(k)]
    for spec in config.ensembles:
        parts = spec.split("+")
        if len(parts) < 2 or any(p not in labels for p in parts) or len(set(parts)) != len(parts):
            raise errors.UserError(
                f"Config ensembles entry {spec!r}: expected two or more distinct ingredient "
                f"labels joined by '+', labels being {labels}."
            )
    config_lib.check_int(config, "batch_size", 1)
    config_lib.check_choice("bn_policy", config.bn_policy, soup.BN_POLICIES)
    config_lib.check_int(config, "calibration_examples", 1)
    config_lib.check_choice("compute_dtype", config.compute_dtype, models.COMPUTE_DTYPES)
    config_lib.check_choice("robust.version", config.robust.version, autoattack.VERSIONS)
    config_lib.check_threats("robust.threats", config.robust.threats)
    if config.robust.dataset:
        try:
            data.parse_dataset(config.robust.dataset)
        except errors.UserError as e:
            raise errors.UserError(f"Config robust.dataset: {e}") from None
    for key in ("n_examples", "n_iter", "n_target_classes"):
        config_lib.check_int(config, f"robust.{key}", 0)
    config_lib.check_int(config, "robust.batch_size", 1)
    config_lib.check_int(config, "seed", 0)
