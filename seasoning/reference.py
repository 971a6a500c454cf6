"""Deprecated: the PyTorch twins moved to `seasoning.testing.torch_twins` (CHANGELOG.md);
this name stays until the next release."""

from __future__ import annotations

import warnings
from typing import Any

from seasoning.testing import torch_twins


def __getattr__(name: str) -> Any:
    warnings.warn(
        "seasoning.reference is deprecated and will be removed in the next release: use "
        "seasoning.testing.torch_twins (CHANGELOG.md).",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(torch_twins, name)
