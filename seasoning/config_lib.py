"""Experiment configs: load `path[:arg]`, apply `--config.a.b=v` overrides, validate.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`. `arg` is a
`key=value,key2,...` string (big_vision style) read with `parse_arg`; the bare key `runlocal`
shrinks any experiment to seconds. Training configs start from `base_train_config()`, which is
also the schema: `validate_train_config` rejects keys it does not know, values of the wrong
type and unknown names (model, dataset, optimizer, ...), each with a message naming the value
and the valid ones.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
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
# The training schema.

DATASET_NAMES = ("fashion_mnist", "synthetic", "cifar10", "cifar100", "imagenet2012")
OPTIMIZER_NAMES = ("sgd", "adamw")
SCHEDULE_NAMES = ("constant", "piecewise", "cosine")
ATTACK_NAMES = ("none", "pgd", "apgd")
COMPUTE_DTYPES = ("float32", "bfloat16")


def base_train_config() -> ml_collections.ConfigDict:
    """Every key a training config may hold, with defaults (SGD, piecewise, nominal)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = dict(
        name="fashion_mnist",
        data_dir="",  # "" = the dataset's default location
        train_split="train",
        eval_split="test",
        image_size=0,  # 0 = native resolution; else resize (shorter side) + centre crop
        crop_padding=0,  # random crop after zero padding by this many pixels; 0 = off
        flip=False,  # random horizontal flip
        num_eval_examples=0,  # 0 = the whole eval split
        num_classes=10,  # for "synthetic" only; other datasets know theirs
        num_train_examples=2048,  # for "synthetic" only
    )
    c.model = dict(name="cnn-small")  # + keyword arguments of models.get_model
    # norm linf/l2/l1 with eps: adversarial training; none: nominal; multi: E-AT (Croce & Hein
    # 2022), each batch attacked under one of `multi` ("norm:eps" strings), drawn by `sampling`:
    # "adaptive" (the reference: probability 1 - running robust accuracy) or "uniform".
    c.threat = dict(norm="none", eps=0.0, multi=(), sampling="adaptive")
    c.attack = dict(name="none", loss="ce", steps=10, step_size=0.0, random_start=False)
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
    c.eval_batch_size = 500
    c.num_epochs = 10
    c.max_steps = 0  # 0 = num_epochs decides; else at most this many steps
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = once per epoch and at the end
    c.checkpoint_every_steps = 0  # 0 = once per epoch and at the end
    c.keep_checkpoints = 2
    c.init_from = ""  # a finished run's workdir: fine-tune from its weights
    return c


def finetune_config(
    parent: ml_collections.ConfigDict,
    *,
    norm: str,
    eps: float,
    init_from: str,
    num_epochs: int,
    attack_steps: int = 10,
    multi: tuple[str, ...] = (),
) -> ml_collections.ConfigDict:
    """A child of `parent`'s run: the same model and data, fine-tuned to another threat model.

    The recipe of the fine-tuning reference (Croce & Hein 2022, fra31/robust-finetuning):
    APGD-CE (L1-APGD for l1) with `attack_steps` iterations and no random start, SGD with
    momentum 0.9 and weight decay 5e-4, lr 0.01 divided by 10 after 1/3 and 2/3 of the run,
    batch 128, no label smoothing, a fresh optimiser state. Every value stays overridable.

    Args:
      parent: the parent's training config (its model and dataset are kept).
      norm: the child's threat model norm; "none" for nominal (clean) fine-tuning.
      eps: its radius (0 for "none").
      init_from: the parent's workdir, whose last checkpoint gives the starting weights.
      num_epochs: epochs of fine-tuning (the reference: 3 on CIFAR-10, 1 on ImageNet).
      attack_steps: iterations of the training attack.
      multi: for norm "multi" (E-AT): the "norm:eps" threat models drawn from per batch.
    """
    c = ml_collections.ConfigDict(parent.to_dict())
    c.threat.update(norm=norm, eps=float(eps), multi=tuple(multi))
    if norm == "none":
        c.attack.update(name="none", steps=attack_steps, step_size=0.0, random_start=False)
    else:
        c.attack.update(name="apgd", loss="ce", steps=attack_steps, step_size=0.0,
                        random_start=False)  # fmt: skip
    c.optimizer.update(name="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4,
                       decay_bn_and_bias=False, grad_clip_norm=0.0)  # fmt: skip
    c.schedule.update(name="piecewise", boundaries=(1 / 3, 2 / 3), decay_factor=0.1,
                      warmup_steps=0)  # fmt: skip
    c.label_smoothing = 0.0
    c.batch_size = 128
    c.num_epochs = num_epochs
    c.max_steps = 0
    c.init_from = init_from
    return c


def child_config(
    child_file: str,
    parent_file: str,
    arg: str | None,
    *,
    norm: str,
    eps: float,
    num_epochs: int,
    multi: tuple[str, ...] = (),
) -> ml_collections.ConfigDict:
    """The `get_config` of a fine-tuning config file (`configs/*_to_*.py`).

    Args:
      child_file: the child config's `__file__`; the parent config is its sibling.
      parent_file: the parent config's file name, e.g. "fmnist_cnn_linf.py".
      arg: the child's `arg`: `parent=RUN_DIR` (default `runs/<parent name>`), `eps`,
        `epochs`, `runlocal` (the parent's runlocal sizes, a few steps).
      norm, eps, num_epochs: the child's threat model and length (defaults of `arg`).
      multi: the threat models of norm "multi" (E-AT).

    Returns:
      `finetune_config` of the parent config.
    """
    parent_name = os.path.splitext(parent_file)[0]
    arg = parse_arg(arg, runlocal=False, parent=f"runs/{parent_name}", eps=float(eps),
                    epochs=num_epochs)  # fmt: skip
    parent_path = os.path.join(os.path.dirname(os.path.abspath(child_file)), parent_file)
    parent = load_config(f"{parent_path}:runlocal" if arg.runlocal else parent_path)
    c = finetune_config(parent, norm=norm, eps=arg.eps if norm not in ("none", "multi") else 0.0,
                        init_from=arg.parent, num_epochs=arg.epochs, multi=multi)  # fmt: skip
    if arg.runlocal:
        c.batch_size, c.max_steps = parent.batch_size, parent.max_steps
    return c


def validate_train_config(config: ml_collections.ConfigDict) -> None:
    """Checks a training config against `base_train_config()`.

    Raises:
      ValueError: naming the first unknown key, wrongly typed value or unknown name.
    """
    _check_against_schema(config, base_train_config(), prefix="")
    from seasoning import adversarial, models, threat  # late: keeps config loading light

    _check_choice("dataset.name", config.dataset.name, DATASET_NAMES)
    try:
        models.check_name(config.model.name)
    except ValueError as e:
        raise errors.UserError(f"Config model.name: {e}") from None
    _check_choice("optimizer.name", config.optimizer.name, OPTIMIZER_NAMES)
    _check_choice("schedule.name", config.schedule.name, SCHEDULE_NAMES)
    _check_choice("attack.name", config.attack.name, ATTACK_NAMES)
    _check_choice("compute_dtype", config.compute_dtype, COMPUTE_DTYPES)
    if config.threat.norm == "multi":
        if len(config.threat.multi) < 2 or config.threat.eps:
            raise errors.UserError(
                f"Config threat.norm='multi' (E-AT) needs threat.multi with two or more "
                f"'norm:eps' threat models and threat.eps=0, got multi={config.threat.multi!r}, "
                f"eps={config.threat.eps}."
            )
        for spec in config.threat.multi:
            if threat.parse(spec).trivial:  # raises on bad text, norm or eps
                raise errors.UserError(
                    f"Config threat.multi: {spec!r} is not an adversarial threat."
                )
        _check_choice("threat.sampling", config.threat.sampling, adversarial.MULTI_SAMPLING)
    else:
        threat.ThreatModel(config.threat.norm, config.threat.eps)  # raises on a bad norm or eps
        if config.threat.multi:
            raise errors.UserError(
                f"Config threat.multi={config.threat.multi!r} is used only with "
                f"threat.norm='multi' (E-AT), not with norm={config.threat.norm!r}."
            )
    for key in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
        if config[key] <= 0:
            raise errors.UserError(f"Config {key}={config[key]} must be positive.")
    for key in ("num_epochs", "max_steps", "eval_every_steps", "checkpoint_every_steps"):
        if config[key] < 0:
            raise errors.UserError(f"Config {key}={config[key]} must be >= 0.")
    if config.num_epochs == 0 and config.max_steps == 0:
        raise errors.UserError("Config sets num_epochs=0 and max_steps=0: nothing to train.")
    if not math.isfinite(config.optimizer.lr) or config.optimizer.lr < 0:
        raise errors.UserError(
            f"Config optimizer.lr={config.optimizer.lr} must be finite and >= 0."
        )
    boundaries = tuple(config.schedule.boundaries)
    if any(not 0 < b < 1 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise errors.UserError(
            f"Config schedule.boundaries={boundaries} must be increasing fractions in (0, 1)."
        )


BN_POLICIES = ("interpolate", "recalibrate")
GRID_KINDS = ("simplex", "line")


def base_soup_config() -> ml_collections.ConfigDict:
    """Every key a soup config (`python -m seasoning.soup`) may set, with its default."""
    c = ml_collections.ConfigDict()
    c.ingredients = ()  # run dirs of `seasoning.train`, fine-tuned from one parent
    c.labels = ()  # short names for tables and plots (default: the run dirs' names)
    # simplex: all weights in steps of `step` summing to 1; line (two ingredients): alpha from
    # `low` to `high` in steps of `step`, weights (1 - alpha, alpha); outside [0, 1] it
    # extrapolates.
    c.grid = dict(kind="simplex", step=0.1, low=0.0, high=1.0)
    c.bn_policy = "interpolate"  # or "recalibrate" on `calibration_examples` training images
    c.calibration_examples = 512
    c.eval = dict(
        split="",  # default: the ingredients' eval split
        n_examples=500,
        batch_size=250,
        version="fast",
        n_iter=0,  # 0: the version's
        n_target_classes=0,  # 0: the version's
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


# The paper's soups of a Linf parent and its children: config arg `soup` -> child suffixes.
PAPER_SOUPS = {
    "l2": ("", "_to_l2"),  # Linf + Linf->L2
    "nominal": ("", "_to_nominal"),  # Linf + Linf->nominal
    "l2_l1": ("", "_to_l2", "_to_l1"),  # Linf + Linf->L2 + Linf->L1
}


def paper_soup_config(arg: str | None, *, parent: str, threats: tuple[str, ...],
                      runs: str = "runs") -> ml_collections.ConfigDict:  # fmt: skip
    """The `get_config` of a soup config file (`configs/soup_*.py`).

    Args:
      arg: `soup=l2|nominal|l2_l1` (which ingredients), `runs=DIR` (where the runs of
        `parent` and its children are), `step` (grid step), `bn=interpolate|recalibrate`,
        `runlocal` (a coarse grid and a short attack on a few points).
      parent: the parent run's (and config's) name, e.g. "fmnist_cnn_linf".
      threats: the threat models to evaluate, "norm:eps".
      runs: the default of `runs`.
    """
    arg = parse_arg(arg, runlocal=False, soup="l2", runs=runs, step=0.1, bn="interpolate")
    _check_choice("soup", arg.soup, tuple(PAPER_SOUPS))
    suffixes = PAPER_SOUPS[arg.soup]
    c = base_soup_config()
    c.ingredients = tuple(f"{arg.runs}/{parent}{s}" for s in suffixes)
    c.labels = tuple(s.removeprefix("_to_") or "linf" for s in suffixes)
    c.grid.update(kind="simplex", step=arg.step)
    c.bn_policy = arg.bn
    c.eval.threats = threats
    c.front = ("clean", threats[0]) if arg.soup == "nominal" else (threats[0], threats[1])
    if arg.runlocal:
        c.grid.step = 0.5
        c.eval.update(n_examples=64, batch_size=64, n_iter=5, n_target_classes=1)
        c.calibration_examples = 128
    return c


def validate_soup_config(config: ml_collections.ConfigDict) -> None:
    """Checks a soup config against `base_soup_config()`.

    Raises:
      ValueError: naming the first unknown key, wrongly typed value or bad setting.
    """
    from seasoning import threat  # late: keeps config loading light
    from seasoning.soup import grid as soup_grid

    _check_against_schema(config, base_soup_config(), prefix="")
    k = len(config.ingredients)
    if k < 2 or not all(isinstance(d, str) and d for d in config.ingredients):
        raise errors.UserError(
            f"Config ingredients={config.ingredients!r}: give two or more run dirs."
        )
    if config.labels and len(config.labels) != k:
        raise errors.UserError(f"Config labels has {len(config.labels)} names for {k} ingredients.")
    _check_choice("grid.kind", config.grid.kind, GRID_KINDS)
    if config.grid.kind == "line" and k != 2:
        raise errors.UserError(f"Config grid.kind='line' needs 2 ingredients, got {k}.")
    if not 0 < config.grid.step <= 1:
        raise errors.UserError(f"Config grid.step={config.grid.step} must be in (0, 1].")
    _check_choice("bn_policy", config.bn_policy, BN_POLICIES)
    _check_choice("eval.version", config.eval.version, ("standard", "fast"))
    _check_choice("eval.compute_dtype", config.eval.compute_dtype, COMPUTE_DTYPES)
    _check_choice("evaluation", config.evaluation, soup_grid.MODES)
    for spec in config.eval.threats:
        threat.parse(spec)
    for key in ("chunk", "vectorize", "calibration_examples"):
        if config[key] <= 0:
            raise errors.UserError(f"Config {key}={config[key]} must be positive.")
    if config.front and len(config.front) != 2:
        raise errors.UserError(f"Config front={config.front!r} must name two metrics.")


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


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        near = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise errors.UserError(
            f"Unknown {name} {value!r}; expected one of: {', '.join(choices)}.{hint}"
        )


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
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(lambda args: main(args, config), argv=rest)
