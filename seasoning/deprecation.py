"""Old public names kept for one release after a rename, warning when used (CHANGELOG.md)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
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
