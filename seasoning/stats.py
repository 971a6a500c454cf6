"""How far a figure measured on a sample of points can be trusted: intervals and paired tests.

Every accuracy this project writes is a count of points out of a sample (the first N test
images). Result files carry its 95% Clopper-Pearson interval (`interval`: exact, its coverage
at least 95% whatever the true accuracy; written with 4 digits, rounded outwards), and a
claim that one model or soup beats another on the same points rests on the points only one
of them gets right (`compare`: an exact McNemar test), not on the gap of two accuracies: on
100 shared points a gap of one point is one point that changed.

Per-point flags travel in result files packed (`pack_flags`: a bit per point, base64), so that
reports can compare any two rows without the run that made them.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import special  # not scipy.stats: a second more to start every driver

CONFIDENCE = 0.95
# What the `intervals` / `*_interval` entries of result files are.
INTERVALS = f"{CONFIDENCE:.0%} Clopper-Pearson interval of the accuracy over the points"
# A difference whose exact McNemar p-value is below this is reported as one.
SIGNIFICANCE = 0.05


def interval(count: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Clopper-Pearson interval of a proportion `count / total` at `confidence`.

    Raises:
      ValueError: total < 1, or count outside [0, total].
    """
    count, total = int(count), int(total)
    if total < 1 or not 0 <= count <= total:
        raise ValueError(f"{count} of {total} points is not a proportion.")
    tail = (1 - confidence) / 2  # the quantiles of the beta distributions that bound it
    low = 0.0 if count == 0 else float(special.betaincinv(count, total - count + 1, tail))
    high = 1.0 if count == total else float(special.betaincinv(count + 1, total - count, 1 - tail))
    return low, high


def accuracy_interval(accuracy: float, total: int) -> list[float]:
    """`interval` of an accuracy measured on `total` points, rounded outwards to 4 digits for a
    file.

    Raises:
      ValueError: an accuracy that is not a whole number of points out of `total`.
    """
    count = round(accuracy * total)
    if abs(count - accuracy * total) > 1e-6 * max(total, 1):
        raise ValueError(f"accuracy {accuracy!r} is not a count of {total} points.")
    return outwards(*interval(count, total))


def outwards(low: float, high: float, digits: int = 4) -> list[float]:
    """[low, high] rounded to `digits` decimals away from the centre, so that the interval a
    file holds is never narrower than the one computed."""
    scale = 10**digits
    return [math.floor(low * scale) / scale, math.ceil(high * scale) / scale]


def half_width(total: int, confidence: float = CONFIDENCE) -> float:
    """The widest half-width of `interval` over all counts out of `total` (at half of them)."""
    low, high = interval(total // 2, total, confidence)
    return (high - low) / 2


def mean_interval(
    groups: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    confidence: float = CONFIDENCE,
) -> list[float]:
    """The interval of a weighted mean of accuracies of independent groups of points (e.g. a
    shift scored as the mean over its member sets), rounded outwards to 4 digits for a file.

    One group: its Clopper-Pearson interval. Several: the normal approximation, each group's
    variance from its accuracy with one success and one failure added (Agresti & Caffo), so
    that groups scoring 0 or 1 still count; clipped to [0, 1].

    Args:
      groups: bool [N_g] per group: the points each counts.
      weights: per group (default: equal), summing to 1.

    Raises:
      ValueError: no group, an empty group, or weights not summing to 1.
    """
    groups = [np.asarray(g, bool) for g in groups]
    if not groups or min(len(g) for g in groups) < 1:
        raise ValueError("mean_interval needs at least one group, each of at least one point.")
    weights = np.full(len(groups), 1 / len(groups)) if weights is None else np.asarray(weights)
    if len(weights) != len(groups) or abs(weights.sum() - 1) > 1e-9:
        raise ValueError(f"weights {weights.tolist()} do not give one per group summing to 1.")
    if len(groups) == 1:
        return outwards(*interval(groups[0].sum(), len(groups[0]), confidence))
    mean = float(sum(w * g.mean() for w, g in zip(weights, groups, strict=True)))
    adjusted = [(g.sum() + 1) / (len(g) + 2) for g in groups]
    variance = sum(
        w**2 * p * (1 - p) / (len(g) + 2) for w, p, g in zip(weights, adjusted, groups, strict=True)
    )
    z = float(special.ndtri(0.5 + confidence / 2))
    half = z * float(np.sqrt(variance))
    return outwards(max(mean - half, 0.0), min(mean + half, 1.0))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two sets of per-point flags on the same points (a the first, b the second).

    Attributes:
      difference: accuracy of a minus accuracy of b.
      a_only: points a counts and b does not.
      b_only: points b counts and a does not.
      p_value: exact two-sided McNemar p-value (1.0 when no point differs).
    """

    difference: float
    a_only: int
    b_only: int
    p_value: float

    @property
    def significant(self) -> bool:
        """Whether the difference is unlikely under "same accuracy" (p < SIGNIFICANCE)."""
        return self.p_value < SIGNIFICANCE


def compare(a: np.ndarray, b: np.ndarray) -> Comparison:
    """The paired comparison of flags `a` and `b` (bool [N], the same points).

    Raises:
      ValueError: flags of different shapes or no points.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"Flags of shapes {a.shape} and {b.shape}: expected two [N], N >= 1.")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    p = 1.0
    if a_only + b_only:
        # Two-sided binomial test at 1/2: twice the lower tail of the smaller count.
        p = 2 * float(special.bdtr(min(a_only, b_only), a_only + b_only, 0.5))
    return Comparison(float(a.mean() - b.mean()), a_only, b_only, min(p, 1.0))


def pack_flags(flags: np.ndarray) -> str:
    """bool [N] as text for a JSON file: a bit per point, base64."""
    return base64.b64encode(np.packbits(np.asarray(flags, bool)).tobytes()).decode("ascii")


def unpack_flags(text: str, num: int) -> np.ndarray:
    """The bool [num] flags `pack_flags` wrote.

    Raises:
      ValueError: text that does not hold `num` flags.
    """
    packed = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), np.uint8)
    if len(packed) != (num + 7) // 8:
        raise ValueError(f"{len(packed)} packed bytes do not hold {num} flags.")
    return np.unpackbits(packed, count=num).astype(bool)
