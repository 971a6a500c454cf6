"""Experiment configs: load `path[:arg]`, apply `--config.a.b=v` overrides, validate.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`. `arg` is a
`key=value,key2,...` string (big_vision style) read with `parse_arg`; the bare key `runlocal`
shrinks any experiment to seconds. Training configs start from `base_train_config()`, soup
configs from `base_soup_config()`; each is also the schema: `validate_train_config` and
`validate_soup_config` reject keys they do not know, values of the wrong type, unknown names
(model, dataset, optimizer, ...) and numbers out of range, each with a message naming the key,
the value and what is expected. The allowed names come from the modules that own them
(`data.DATASET_NAMES`, `models.COMPUTE_DTYPES`, `soup.BN_POLICIES`, ...), never copied here.

This module only loads and validates configs; the paper's recipes built on these schemas
(fine-tuning children, the paper's soups) are in `seasoning.recipes`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from seasoning import errors

# Keys whose contents are free-form (keyword arguments of a model constructor).
_OPEN_KEYS = frozenset({"model"})


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config's `arg` string against typed defaults.

    Args:
      arg: `"key=value,flag,..."` or None. A bare `flag` sets a boolean default to True.
      **defaults: every accepted key with its default value; the default's type is the type
        the value is converted to.

    Returns:
      A ConfigDict holding the defaults overridden by `arg`.

    Raises:
      ValueError: an unknown key or a value that does not convert.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise errors.UserError(
                f"Unknown config arg {key!r} in {arg!r}. {_valid_keys(key, defaults)}"
            )
        if not sep:
            if not isinstance(defaults[key], bool):
                raise errors.UserError(
                    f"Config arg {key!r} needs a value ({key}=...), got {arg!r}."
                )
            out[key] = True
        else:
            out[key] = convert_value(raw.strip(), defaults[key], key)
    return out


def convert_value(raw: str, like: Any, name: str) -> Any:
    """Converts the string `raw` to the type of `like` (the current value of key `name`)."""
    try:
        if isinstance(like, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(like, int):
            return int(raw)
        if isinstance(like, float):
            return _to_float(raw)
        if isinstance(like, str):
            return raw
        if isinstance(like, tuple | list):
            value = ast.literal_eval(raw)
            value = value if isinstance(value, tuple | list) else (value,)
            return type(like)(value)
        if like is None:
            try:
                return ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                return raw
    except (ValueError, SyntaxError, ZeroDivisionError):
        pass
    raise errors.UserError(
        f"Config value {name}={raw!r} is not a valid {type(like).__name__} "
        f"(current value: {like!r})."
    )


def _to_float(raw: str) -> float:
    """Parses `0.03`, `8/255` or `1e-3`."""
    num, sep, den = raw.partition("/")
    return float(num) / float(den) if sep else float(raw)


def _valid_keys(key: str, valid: Any) -> str:
    names = sorted(valid)
    near = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    return f"Valid keys: {', '.join(names)}.{hint}"


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path[:arg]`, applies `a.b=v` overrides and locks the config.

    Args:
      spec: a config file path, optionally followed by `:arg` for its `get_config`.
      overrides: strings `a.b=value` (what `--config.a.b=value` flags carry).

    Returns:
      The locked ConfigDict.

    Raises:
      ValueError: the file is missing or has no `get_config`, or an override names an unknown
        key or holds a value of the wrong type.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise errors.UserError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location(
        f"_seasoning_config_{abs(hash(path))}", path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise errors.UserError(f"Config file {path!r} defines no get_config(arg=None).")
    config = module.get_config(arg or None)
    for override in overrides:
        apply_override(config, override)
    config.lock()
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one `a.b.c=value` override in place, typed by the current value."""
    dotted, sep, raw = override.partition("=")
    if not sep:
        raise errors.UserError(f"Config override {override!r} is not of the form key=value.")
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            where = ".".join(parents[:i]) or "config"
            raise errors.UserError(
                f"Unknown config key {dotted!r}: {where} has no section {part!r}. "
                f"{_valid_keys(part, _sections(node))}"
            )
        node = node[part]
    if leaf not in node:
        raise errors.UserError(f"Unknown config key {dotted!r}. {_valid_keys(leaf, node.keys())}")
    with node.unlocked():
        node[leaf] = convert_value(raw, node[leaf], dotted)


def _sections(node: ml_collections.ConfigDict) -> list[str]:
    return [k for k, v in node.items() if isinstance(v, ml_collections.ConfigDict)]


def split_config_flags(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """Separates `--config=...` and `--config.a.b=v` from the other command-line arguments.

    Returns:
      (remaining argv, the config spec or None, the overrides as `a.b=v` strings).
    """
    rest, spec, overrides = [], None, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config",) and args:
            spec = args.pop(0)
        elif arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" not in body and args:
                body = f"{body}={args.pop(0)}"
            overrides.append(body)
        else:
            rest.append(arg)
    return rest, spec, overrides


# --------------------------------------------------------------------------------------------
# The schemas.


# Training config keys that say how a run executes, not what it computes: a run resumes with
# other values of these (its config.json keeps the first ones).
EXECUTION_KEYS = ("dataset.num_workers",)


def base_train_config() -> ml_collections.ConfigDict:
    """Every key a training config may hold, with defaults (SGD, piecewise, nominal)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = dict(
        name="fashion_mnist",
        data_dir="",  # "" = the dataset's default location
        train_split="train",
        eval_split="test",
        # Preprocessing as '|'-separated named ops (seasoning.data.ops), e.g.
        # "decode|inception_crop(224)|flip_lr"; "" = decode, then image_size, crop_padding, flip.
        pp_train="",
        pp_eval="",  # e.g. "decode|resize_small(256)|central_crop(224)"
        image_size=0,  # 0 = native resolution; else resize (shorter side) + centre crop
        crop_padding=0,  # random crop after zero padding by this many pixels; 0 = off
        flip=False,  # random horizontal flip
        # Input worker processes: -1 = automatic (every core for encoded images, else 0);
        # 0 = a background thread of the training process.
        num_workers=-1,
        num_eval_examples=0,  # 0 = the whole eval split
        num_classes=10,  # for "synthetic" only; other datasets know theirs
        num_train_examples=2048,  # for "synthetic" only
    )
    c.model = dict(name="cnn-small")  # + keyword arguments of models.get_model
    # norm linf/l2/l1 with eps: adversarial training; none: nominal; multi: E-AT (Croce & Hein
    # 2022), each batch attacked under one of `multi` ("norm:eps" strings), drawn by `sampling`:
    # "adaptive" (the reference: probability 1 - running robust accuracy) or "uniform".
    c.threat = dict(norm="none", eps=0.0, multi=(), sampling="adaptive")
    # chunks: the attack runs on this many parts of each (micro-)batch one after another, to
    # bound its memory; x_adv is the same (training.perturb_batch).
    c.attack = dict(name="none", loss="ce", steps=10, step_size=0.0, random_start=False, chunks=1)
    c.optimizer = dict(
        name="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        b1=0.9,
        b2=0.999,
        weight_decay=5e-4,
        decay_bn_and_bias=False,  # weight decay on 1-d leaves (BN scales, biases)
        grad_clip_norm=0.0,  # 0 = off
    )
    c.schedule = dict(
        name="piecewise",
        boundaries=(0.5, 0.75),  # fractions of the run
        decay_factor=0.1,
        warmup_steps=0,
    )
    c.label_smoothing = 0.0
    c.compute_dtype = "float32"
    c.batch_size = 128  # global, over all devices and hosts
    # Gradient accumulation: the batch is split into this many micro-batches, each attacked and
    # differentiated in turn, for one update with their mean gradient (training.train_step).
    c.accumulate_steps = 1
    c.eval_batch_size = 500
    c.num_epochs = 10
    c.max_steps = 0  # 0 = num_epochs decides; else at most this many steps
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = once per epoch and at the end
    c.checkpoint_every_steps = 0  # 0 = once per epoch and at the end
    c.keep_checkpoints = 2
    # A step with a NaN or infinite loss, gradient or weights: "stop" the run (no state of it
    # saved, exit status 3) or "skip" its update, stopping after this many in a row
    # (seasoning.divergence).
    c.nonfinite = "stop"
    c.max_nonfinite_in_row = 10
    c.init_from = ""  # a finished run's workdir: fine-tune from its weights
    # A run written by `seasoning.import_weights`: the source file, its format and SHA-256,
    # and where the model's input statistics came from ("checkpoint", "flags", "default").
    c.imported_from = dict(format="", file="", sha256="", normalization="")
    return c


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as it reads back from config.json (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


def validate_train_config(config: ml_collections.ConfigDict) -> None:
    """Checks a training config against `base_train_config()`.

    Names are checked against the modules that own them (data, models, optim, adversarial),
    numbers against their ranges.

    Raises:
      UserError: naming the first unknown key, wrongly typed value, unknown name or value out
        of range, with what is expected.
    """
    _check_against_schema(config, base_train_config(), prefix="")
    # Late: these import JAX, which config loading does not need.
    from seasoning import adversarial, data, divergence, models, optim, threat
    from seasoning.attacks import losses

    check_choice("dataset.name", config.dataset.name, data.DATASET_NAMES)
    try:
        models.check_name(config.model.name)
    except ValueError as e:
        raise errors.UserError(f"Config model.name: {e}") from None
    check_choice("optimizer.name", config.optimizer.name, optim.OPTIMIZER_NAMES)
    check_choice("schedule.name", config.schedule.name, optim.SCHEDULE_NAMES)
    check_choice("attack.name", config.attack.name, adversarial.ATTACK_NAMES)
    check_choice("compute_dtype", config.compute_dtype, models.COMPUTE_DTYPES)
    if config.threat.norm == "multi":
        if len(config.threat.multi) < 2 or config.threat.eps:
            raise errors.UserError(
                f"Config threat.norm='multi' (E-AT) needs threat.multi with two or more "
                f"'norm:eps' threat models and threat.eps=0, got multi={config.threat.multi!r}, "
                f"eps={config.threat.eps}."
            )
        for spec in config.threat.multi:
            try:
                trivial = threat.parse(spec).trivial
            except errors.UserError as e:
                raise errors.UserError(f"Config threat.multi: {e}") from None
            if trivial:
                raise errors.UserError(
                    f"Config threat.multi: {spec!r} is not an adversarial threat."
                )
        check_choice("threat.sampling", config.threat.sampling, adversarial.MULTI_SAMPLING)
    else:
        try:
            threat.ThreatModel(config.threat.norm, config.threat.eps)
        except errors.UserError as e:
            raise errors.UserError(f"Config threat (norm, eps): {e}") from None
        if config.threat.multi:
            raise errors.UserError(
                f"Config threat.multi={config.threat.multi!r} is used only with "
                f"threat.norm='multi' (E-AT), not with norm={config.threat.norm!r}."
            )
    if config.attack.name != "none":
        check_choice("attack.loss", config.attack.loss, losses.LOSSES)
        _check_int(config, "attack.steps", 1)
        _check_number(config, "attack.step_size", 0)
    _check_int(config, "attack.chunks", 1)
    _check_int(config, "seed", 0)
    for key in ("image_size", "crop_padding", "num_eval_examples", "num_train_examples"):
        _check_int(config, f"dataset.{key}", 0)
    _check_int(config, "dataset.num_classes", 2)
    _check_int(config, "dataset.num_workers", -1)
    for key, make_ops in (("pp_train", data.train_ops), ("pp_eval", data.eval_ops)):
        try:
            make_ops(config.dataset)
        except errors.UserError as e:
            raise errors.UserError(f"Config dataset.{key}: {e}") from None
    for key in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
        _check_int(config, key, 1)
    check_choice("nonfinite", config.nonfinite, divergence.POLICIES)
    _check_int(config, "max_nonfinite_in_row", 1)
    _check_int(config, "accumulate_steps", 1)
    if config.batch_size % config.accumulate_steps:
        raise errors.UserError(
            f"Config batch_size={config.batch_size} is not divisible by "
            f"accumulate_steps={config.accumulate_steps}: micro-batches are equal slices of the "
            "batch (and each must also split evenly over the devices)."
        )
    for key in ("num_epochs", "max_steps", "eval_every_steps", "checkpoint_every_steps"):
        _check_int(config, key, 0)
    if config.num_epochs == 0 and config.max_steps == 0:
        raise errors.UserError("Config sets num_epochs=0 and max_steps=0: nothing to train.")
    for key in ("lr", "weight_decay", "grad_clip_norm"):
        _check_number(config, f"optimizer.{key}", 0)
    for key in ("momentum", "b1", "b2"):
        _check_number(config, f"optimizer.{key}", 0, 1)
    boundaries = tuple(config.schedule.boundaries)
    if any(not 0 < b < 1 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise errors.UserError(
            f"Config schedule.boundaries={boundaries}: expected increasing fractions in (0, 1)."
        )
    _check_number(config, "schedule.decay_factor", 0, low_open=True)
    _check_int(config, "schedule.warmup_steps", 0)
    _check_number(config, "label_smoothing", 0, 1)


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
    # How soups are evaluated (soup/grid.py): "grid", many soups per compiled program, every
    # attack on every point; "per_soup", each soup attacked as seasoning.evaluate attacks a
    # model (later attacks only on the points still robust); "auto": per_soup on CPU (measured
    # faster there), grid on accelerators.
    c.evaluation = "auto"
    c.chunk = 4  # grid: soups per compiled call (and per save of grid.json)
    c.vectorize = 1  # grid: soups vmapped side by side (>1 only if a batch cannot fill the GPU)
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

    _check_against_schema(config, base_soup_config(), prefix="")
    k = _check_ingredients(config)
    check_choice("grid.kind", config.grid.kind, soup.GRID_KINDS)
    if config.grid.kind == "line" and k != 2:
        raise errors.UserError(f"Config grid.kind='line' needs 2 ingredients, got {k}.")
    _check_number(config, "grid.step", 0, 1, low_open=True, high_closed=True)
    if config.grid.kind == "list":
        _check_weight_list(config.grid.weights, k)
    _check_number(config, "grid.low", -math.inf)
    _check_number(config, "grid.high", -math.inf)
    if config.grid.kind == "line" and not config.grid.low < config.grid.high:
        raise errors.UserError(
            f"Config grid.low={config.grid.low!r}, grid.high={config.grid.high!r}: expected "
            "low < high for grid.kind='line'."
        )
    check_choice("bn_policy", config.bn_policy, soup.BN_POLICIES)
    check_choice("eval.version", config.eval.version, autoattack.VERSIONS)
    check_choice("eval.compute_dtype", config.eval.compute_dtype, models.COMPUTE_DTYPES)
    check_choice("evaluation", config.evaluation, soup_grid.MODES)
    _check_threats("eval.threats", config.eval.threats)
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
        _check_int(config, f"eval.{key}", 0)
    _check_int(config, "eval.batch_size", 1)
    for key in ("chunk", "vectorize", "calibration_examples"):
        _check_int(config, key, 1)
    _check_int(config, "seed", 0)
    if config.front and len(config.front) != 2:
        raise errors.UserError(f"Config front={config.front!r}: expected two metrics.")


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
    # The sweep (many soups per compiled program, evaluation "grid"): the Linf/L2 and
    # Linf/nominal lines in steps of `line_step`, the Linf/L2/L1 simplex in steps of
    # `simplex_step`, under a cheaper attack. Attack keys: the version and its budgets as the
    # soup config's `eval` section names them (0: the version's).
    from seasoning.attacks import autoattack  # late: it imports JAX

    budgets = {key: 0 for key in autoattack.BUDGETS}
    c.sweep = dict(
        line_step=0.1, simplex_step=0.2, evaluation="grid", attack=dict(version="fast", **budgets)
    )
    # The re-check of the ingredients and the selected soups (evaluation "per_soup").
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

    _check_against_schema(config, base_demo_config(), prefix="")
    for key in ("parent_config", "soup_config", "shift_config"):
        path = config[key]
        if not os.path.isfile(path):
            raise errors.UserError(f"Config {key}={path!r}: no such config file.")
    _check_threats("threats", config.threats)
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
        _check_int(config, key, 0)
    for key in ("parent.lr", "children.lr"):
        _check_number(config, key, 0)
    for key in ("points.n_examples", "points.batch_size"):
        _check_int(config, key, 1)
    for key in ("sweep.line_step", "sweep.simplex_step", "shift.grid_step"):
        _check_number(config, key, 0, 1, low_open=True, high_closed=True)
        soup.simplex_grid(2, _get(config, key))  # 1 / step must be an integer
    check_choice("sweep.evaluation", config.sweep.evaluation, soup_grid.MODES)
    for section in ("sweep.attack", "recheck.attack"):
        attack = _get(config, section)
        check_choice(f"{section}.version", attack.version, autoattack.VERSIONS)
        for key in attack:
            if key != "version":
                _check_int(config, f"{section}.{key}", 0)
    _check_int(config, "shift.n_adaptation", 1)
    _check_int(config, "shift.n_unseen", 0)
    _check_int(config, "shift.learned_steps", 1)
    if not config.shift.methods:
        raise errors.UserError("Config shift.methods=(): name at least one selection method.")
    for method in config.shift.methods:
        check_choice("shift.methods", method, select.METHODS)
    for key in config.expected_seconds:
        _check_number(config, f"expected_seconds.{key}", 0, low_open=True)


def validate_shift_config(config: ml_collections.ConfigDict) -> None:
    """Checks a shift config against `base_shift_config()`.

    Raises:
      UserError: naming the first unknown key, wrongly typed value, unknown name or value out
        of range, with what is expected.
    """
    from seasoning import data, models, soup
    from seasoning.attacks import autoattack
    from seasoning.shift import select

    _check_against_schema(config, base_shift_config(), prefix="")
    k = _check_ingredients(config)
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
    _check_int(config, "n_adaptation", 1)
    _check_int(config, "n_unseen", 0)
    _check_int(config, "split_seed", 0)
    _check_number(config, "grid_step", 0, 1, low_open=True, high_closed=True)
    if not config.methods:
        raise errors.UserError(f"Config methods=(): expected some of {select.METHODS}.")
    for method in config.methods:
        check_choice("methods", method, select.METHODS)
    _check_int(config, "learned.steps", 1)
    _check_int(config, "learned.batch_size", 1)
    _check_number(config, "learned.learning_rate", 0, low_open=True)
    labels = list(config.labels) or [str(i) for i in range(k)]
    for spec in config.ensembles:
        parts = spec.split("+")
        if len(parts) < 2 or any(p not in labels for p in parts) or len(set(parts)) != len(parts):
            raise errors.UserError(
                f"Config ensembles entry {spec!r}: expected two or more distinct ingredient "
                f"labels joined by '+', labels being {labels}."
            )
    _check_int(config, "batch_size", 1)
    check_choice("bn_policy", config.bn_policy, soup.BN_POLICIES)
    _check_int(config, "calibration_examples", 1)
    check_choice("compute_dtype", config.compute_dtype, models.COMPUTE_DTYPES)
    check_choice("robust.version", config.robust.version, autoattack.VERSIONS)
    _check_threats("robust.threats", config.robust.threats)
    if config.robust.dataset:
        try:
            data.parse_dataset(config.robust.dataset)
        except errors.UserError as e:
            raise errors.UserError(f"Config robust.dataset: {e}") from None
    for key in ("n_examples", "n_iter", "n_target_classes"):
        _check_int(config, f"robust.{key}", 0)
    _check_int(config, "robust.batch_size", 1)
    _check_int(config, "seed", 0)


def _check_threats(key: str, specs: Sequence[str]) -> None:
    """Raises UserError unless every "norm:eps" of config value `key` parses."""
    from seasoning import threat

    for spec in specs:
        try:
            threat.parse(spec)
        except errors.UserError as e:
            raise errors.UserError(f"Config {key}: {e}") from None


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


def _check_ingredients(config: ml_collections.ConfigDict) -> int:
    """The number of ingredients of a soup or shift config, checked with their labels."""
    k = len(config.ingredients)
    if k < 2 or not all(isinstance(d, str) and d for d in config.ingredients):
        raise errors.UserError(
            f"Config ingredients={config.ingredients!r}: give two or more run dirs."
        )
    if config.labels and len(config.labels) != k:
        raise errors.UserError(f"Config labels has {len(config.labels)} names for {k} ingredients.")
    return k


def _check_against_schema(config: Any, schema: Any, prefix: str) -> None:
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise errors.UserError(
                f"Unknown config key {path!r}. {_valid_keys(key, schema.keys())}"
            )
        expected = schema[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise errors.UserError(f"Config {path!r} must be a section, got {value!r}.")
            if key not in _OPEN_KEYS or prefix:
                _check_against_schema(value, expected, prefix=f"{path}.")
                missing = sorted(set(expected.keys()) - set(value.keys()))
                if missing:
                    raise errors.UserError(
                        f"Config section {path!r} lacks {', '.join(missing)}. (Replacing a "
                        f"section with a dict drops its defaults: use `c.{path}.update(...)`.)"
                    )
        elif not _same_kind(value, expected):
            raise errors.UserError(
                f"Config {path}={value!r} has type {type(value).__name__}, "
                f"expected {type(expected).__name__} (like the default {expected!r})."
            )


def _same_kind(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, int | float)
    if isinstance(expected, tuple | list):
        return isinstance(value, tuple | list)
    return isinstance(value, type(expected))


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raises UserError unless `value` (of config key or arg `name`) is one of `choices`."""
    if value not in choices:
        near = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise errors.UserError(
            f"Unknown {name} {value!r}; expected one of: {', '.join(choices)}.{hint}"
        )


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_int(config: ml_collections.ConfigDict, key: str, minimum: int) -> None:
    """Raises UserError unless config value `key` (dotted) is >= `minimum`."""
    value = _get(config, key)
    if not value >= minimum:
        raise errors.UserError(f"Config {key}={value!r}: expected an integer >= {minimum}.")


def _check_number(
    config: ml_collections.ConfigDict,
    key: str,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_closed: bool = False,
) -> None:
    """Raises UserError unless config value `key` (dotted) is finite and in [low, high).

    `low_open` excludes `low`, `high_closed` includes `high`; -inf and inf bound nothing.
    """
    value = _get(config, key)
    above = value > low if low_open else value >= low
    below = value <= high if high_closed else value < high
    if math.isfinite(value) and above and below:
        return
    if high == math.inf and low == -math.inf:
        expected = "a finite number"
    elif high == math.inf:
        expected = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        left, right = "(" if low_open else "[", "]" if high_closed else ")"
        expected = f"a number in {left}{low:g}, {high:g}{right}"
    raise errors.UserError(f"Config {key}={value!r}: expected {expected}.")


def main_with_config(main, argv: Sequence[str] | None = None) -> None:
    """Runs an absl `main(argv, config)` with `--config` and `--config.*` parsed here.

    absl's own parser never sees the config flags, so errors in them come out as one clear
    line and exit status 2 rather than a traceback.
    """
    from absl import app

    argv = list(sys.argv if argv is None else argv)
    rest, spec, overrides = split_config_flags(argv)
    if spec is None:
        print("error: --config=path/to/config.py[:arg] is required.", file=sys.stderr)
        sys.exit(2)
    try:
        config = load_config(spec, overrides)
    except errors.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(lambda args: main(args, config), argv=rest)
