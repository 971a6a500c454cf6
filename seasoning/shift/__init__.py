"""Soups for natural distribution shifts (Croce et al. 2023, Sec. 5): choose soup weights on a
few labelled images of each shifted dataset, report on its unseen images.

    python -m seasoning.shift --config=configs/shift_fmnist.py --workdir=runs/shift

Modules: `splits` (seeded, disjoint adaptation and unseen images per shift), `predict` (many
soups' and ensembles' predicted labels per compiled program, in each dataset's label space),
`select` (grid search, learned soup, greedy soup), `report` (every number from the saved
predictions; report.md), `run` (the stages, shift.json, resuming), `config` (the shift config
schema; it imports no JAX).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seasoning.shift.select import METHODS

__all__ = ["METHODS"]


def __getattr__(name: str) -> Any:
    """`METHODS` is imported from `select` (JAX) on first use, so that `shift.config` is light."""
    if name == "METHODS":
        from seasoning.shift.select import METHODS

        return METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
