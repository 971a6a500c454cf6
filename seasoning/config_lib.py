"""Experiment configs: load `path[:arg]`, apply `--config.a.b=v` overrides; the shared checks.

A config is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`. `arg` is a
`key=value,key2,...` string (big_vision style) read with `parse_arg`; the bare key `runlocal`
shrinks any experiment to seconds. `load_config` runs the file and applies the overrides,
`main_with_config` does both for an absl driver.

Each driver's schema (every key with its default, and the validator that rejects unknown keys,
values of the wrong type, unknown names and numbers out of range) lives beside the driver:
`seasoning.train_config`, `seasoning.soup.config`, `seasoning.shift.config`,
`seasoning.demo.config`. They share the checks here (`check_against_schema`, `check_choice`,
`check_int`, `check_number`, `check_threats`, `check_ingredients`, and `value_at` to read a
dotted key), whose messages name the key, the value and what is expected. The allowed names
come from the modules that own them, never copied here; this module imports none of them, and
JAX only when `check_threats` runs. The schemas' old names here (`config_lib.base_soup_config`,
...) are deprecated aliases until the next release.

The paper's recipes built on the schemas (fine-tuning children, the paper's soups) are in
`seasoning.recipes`.
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

from seasoning import deprecation, errors

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


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as it reads back from config.json (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


# --------------------------------------------------------------------------------------------
# The checks every schema shares (train_config, soup.config, shift.config, demo.config).


def check_against_schema(config: Any, schema: Any, prefix: str = "") -> None:
    """Checks every key of `config` against `schema`, the same config with default values.

    A key the schema lacks, a value of another type than its default's, a section replaced by a
    value or lacking some of its keys is an error. The contents of `model` (keyword arguments
    of a model constructor) are free-form at the top level.

    Args:
      config: the config (or section) to check.
      schema: the schema's defaults for it (e.g. `train_config.base_train_config()`).
      prefix: the dotted path of `config` in the whole config, ending with "." ("" at the top).

    Raises:
      UserError: naming the first unknown key or wrongly typed value, with what is expected.
    """
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
                check_against_schema(value, expected, prefix=f"{path}.")
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


def value_at(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """The value of config key `dotted` (e.g. "optimizer.lr")."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_int(config: ml_collections.ConfigDict, key: str, minimum: int) -> None:
    """Raises UserError unless config value `key` (dotted) is >= `minimum`."""
    value = value_at(config, key)
    if not value >= minimum:
        raise errors.UserError(f"Config {key}={value!r}: expected an integer >= {minimum}.")


def check_number(
    config: ml_collections.ConfigDict,
    key: str,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_closed: bool = False,
) -> None:
    """Raises UserError unless config value `key` (dotted) is finite and in [low, high).

    Args:
      config: the config.
      key: the dotted key of the value.
      low: the lower bound; -inf bounds nothing.
      high: the upper bound; inf bounds nothing.
      low_open: exclude `low`.
      high_closed: include `high`.
    """
    value = value_at(config, key)
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


def check_threats(key: str, specs: Sequence[str]) -> None:
    """Raises UserError unless every "norm:eps" of config value `key` parses."""
    from seasoning import threat  # late: it imports JAX, which config loading does not need

    for spec in specs:
        try:
            threat.parse(spec)
        except errors.UserError as e:
            raise errors.UserError(f"Config {key}: {e}") from None


def check_ingredients(config: ml_collections.ConfigDict) -> int:
    """Checks the ingredients of a soup or shift config with their labels.

    Returns:
      The number of ingredients.

    Raises:
      UserError: fewer than two run dirs, or not one label for each.
    """
    k = len(config.ingredients)
    if k < 2 or not all(isinstance(d, str) and d for d in config.ingredients):
        raise errors.UserError(
            f"Config ingredients={config.ingredients!r}: give two or more run dirs."
        )
    if config.labels and len(config.labels) != k:
        raise errors.UserError(f"Config labels has {len(config.labels)} names for {k} ingredients.")
    return k


# --------------------------------------------------------------------------------------------
# Old homes of the schemas, kept for one release (CHANGELOG.md).

__getattr__ = deprecation.moved(
    __name__,
    {
        "EXECUTION_KEYS": "seasoning.train_config",
        "base_train_config": "seasoning.train_config",
        "validate_train_config": "seasoning.train_config",
        "base_soup_config": "seasoning.soup.config",
        "validate_soup_config": "seasoning.soup.config",
        "base_shift_config": "seasoning.shift.config",
        "validate_shift_config": "seasoning.shift.config",
        "base_demo_config": "seasoning.demo.config",
        "validate_demo_config": "seasoning.demo.config",
    },
)
