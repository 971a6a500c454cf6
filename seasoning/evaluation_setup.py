"""What an evaluation measures and with what: the dataset split, the threat models, the
AutoAttack settings (`AttackSettings`), set up once for every driver (`target`), and the dtype
the attacks search in (`search_dtype_for`). `seasoning.evaluation` runs them; its names
`evaluation.AttackSettings`, `evaluation.target`, ... are these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from seasoning import data, errors, threat
from seasoning.attacks import autoattack

# The dtypes the attacks may search in ("same": the evaluated model's own compute dtype).
SEARCH_DTYPES = ("same", "float32", "bfloat16")


def search_dtype_for(search_dtype: str, compute_dtype: str) -> str:
    """The dtype the attacks search in: `search_dtype`, or `compute_dtype` for "same".

    Raises:
      UserError: a dtype not in `SEARCH_DTYPES`.
    """
    if search_dtype not in SEARCH_DTYPES:
        raise errors.UserError(f"search_dtype={search_dtype!r} is not one of {SEARCH_DTYPES}.")
    return compute_dtype if search_dtype == "same" else search_dtype


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """What an evaluation attacks with: threat models, AutoAttack version, overrides.

    Hashable (a static part of compiled programs). `overrides` are `auto_attack` settings
    (n_iter, n_restarts, n_target_classes, fab_n_iter, fab_n_target_classes, n_queries,
    attacks) replacing the version's; zero or None values are dropped.

    Raises:
      UserError: an unknown version or setting, or a bad budget.
    """

    threats: tuple[threat.ThreatModel, ...] = ()
    version: str = "standard"
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.version not in autoattack.VERSIONS:
            raise errors.UserError(
                f"Unknown AutoAttack version {self.version!r}; expected one of "
                f"{autoattack.VERSIONS}."
            )
        kept = tuple(sorted((k, v) for k, v in dict(self.overrides).items() if v))
        object.__setattr__(self, "threats", tuple(self.threats))
        object.__setattr__(self, "overrides", kept)
        for tm in self.threats:
            autoattack.resolve_settings(self.version, tm.norm, dict(kept))

    @classmethod
    def make(
        cls, threats: Sequence[threat.ThreatModel], version: str = "standard", **overrides: Any
    ) -> AttackSettings:
        """AttackSettings(threats, version, overrides given as keyword arguments)."""
        return cls(tuple(threats), version, tuple(overrides.items()))

    def resolved(self, tm: threat.ThreatModel) -> dict[str, Any]:
        """The full `auto_attack` settings for one threat model."""
        return autoattack.resolve_settings(self.version, tm.norm, dict(self.overrides))

    def resolved_json(self, tm: threat.ThreatModel) -> dict[str, Any]:
        """`resolved(tm)` as result files record it (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.resolved(tm).items()}

    def to_json(self) -> dict[str, Any]:
        """The settings as they are recorded in result files."""
        return {
            "threats": [str(tm) for tm in self.threats],
            "version": self.version,
            "overrides": dict(self.overrides),
        }


@dataclasses.dataclass(frozen=True)
class Target:
    """What an evaluation measures: a dataset split, under threat models and attack settings.

    Attributes:
      dataset: the dataset config section (`data.eval_dataset`).
      split: its split.
      settings: the threat models and AutoAttack settings.
    """

    dataset: Any
    split: str
    settings: AttackSettings

    @property
    def threats(self) -> tuple[threat.ThreatModel, ...]:
        return self.settings.threats


def target(
    run_dataset: Any,
    dataset: str = "",
    split: str = "",
    *,
    threats: Sequence[str | threat.ThreatModel] = (),
    default_threats: bool = True,
    version: str = "standard",
    overrides: Mapping[str, Any] | None = None,
) -> Target:
    """The one evaluation set-up of every driver (`seasoning.evaluate`, the soup sweep, the
    shift run's robustness stage): the split to evaluate, the threat models, the settings.

    Args:
      run_dataset: the evaluated run's `dataset` config section.
      dataset, split: another dataset of the registry ("NAME[:split]") and a split
        (`data.eval_dataset`; default: the run's own evaluation split).
      threats: "norm:eps" specs or threat models; none: the dataset's usual radii
        (`data.default_threats`) when `default_threats`, else none.
      version: the AutoAttack version.
      overrides: a config section or mapping holding settings of `autoattack.SETTINGS`
        (budgets: 0 for the version's); its other keys are not read, and settings it does not
        hold keep the version's.

    Raises:
      UserError: an unknown dataset, a bad threat spec, version or budget, or no usual radii
        for a dataset evaluated without threat models.
    """
    dataset_cfg, split = data.eval_dataset(run_dataset, dataset, split)
    models = [threat.parse(t) if isinstance(t, str) else t for t in threats]
    if not models and default_threats:
        models = list(data.default_threats(dataset_cfg.name))
    overrides = overrides or {}
    chosen = {k: overrides[k] for k in autoattack.SETTINGS if k in overrides}
    return Target(dataset_cfg, split, AttackSettings.make(models, version, **chosen))
