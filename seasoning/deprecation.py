"""Old public names kept for one release after a rename, warning when used (CHANGELOG.md)."""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def renamed(new: Callable[..., Any], old_name: str) -> Callable[..., Any]:
    """`new` under its old name: calls it after a DeprecationWarning naming both.

    Args:
      new: the function as it is now called.
      old_name: the old dotted name (e.g. "seasoning.attacks.apgd.evaluate").
    """
    new_name = f"{new.__module__}.{new.__qualname__}"

    @functools.wraps(new)
    def old(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"{old_name} is deprecated and will be removed in the next release: use {new_name} "
            "(CHANGELOG.md).",
            DeprecationWarning,
            stacklevel=2,
        )
        return new(*args, **kwargs)

    old.__doc__ = f"Deprecated alias of `{new_name}` (CHANGELOG.md)."
    return old


def moved(module: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that keeps names moved to other modules reachable at their old home.

    The new homes are imported on first use, so the old module need not import them (they may
    import it). A moved function comes back as `renamed(new, "<module>.<name>")`, warning when
    called; any other value warns when read.

    Args:
      module: the old module's name (its `__name__`).
      names: each moved name and the module that now holds it under the same name.

    Returns:
      The function to assign to the old module's `__getattr__`.
    """
    aliases: dict[str, Any] = {}

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        old_name = f"{module}.{name}"
        if callable(value):
            if name not in aliases:
                aliases[name] = renamed(value, old_name)
            return aliases[name]
        warnings.warn(
            f"{old_name} is deprecated and will be removed in the next release: use "
            f"{names[name]}.{name} (CHANGELOG.md).",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
