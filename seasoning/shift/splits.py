"""Adaptation and unseen splits of a shifted dataset: seeded, disjoint, per member.

A shift (a table column) is one registered dataset or a group of them (ImageNet-C: 75
members, its accuracy the mean of theirs). Each member is split on its own, from a generator
seeded by (seed, the member's name), so adding a column never changes another column's
split. The adaptation images of a shift (`n_adaptation`, 1000 by default as in the paper) are
spread evenly over its members, as are the unseen ones (`n_unseen`, 0: every other image).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from seasoning import errors


@dataclasses.dataclass(frozen=True)
class MemberSplit:
    """The split of one member dataset.

    Attributes:
      name: the member's registry name (with its split, "NAME:split").
      size: the number of images the member holds.
      adaptation: sorted indices of its adaptation images (weights are chosen on these).
      unseen: sorted indices of its unseen images (results are reported on these).
    """

    name: str
    size: int
    adaptation: np.ndarray
    unseen: np.ndarray

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "n_adaptation": len(self.adaptation),
            "n_unseen": len(self.unseen),
        }


def spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts that differ by at most one (the first ones larger)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def member_seed(seed: int, name: str) -> list[int]:
    """The seed of a member's permutation: (seed, a stable hash of its name)."""
    return [seed, zlib.crc32(name.encode("utf-8"))]


def split_shift(
    members: list[tuple[str, int]], n_adaptation: int, n_unseen: int, seed: int
) -> list[MemberSplit]:
    """Splits every member of a shift into disjoint adaptation and unseen images.

    Args:
      members: (name, size) of each member dataset.
      n_adaptation: adaptation images of the shift, spread over its members (>= 1 each).
      n_unseen: unseen images of the shift, spread over its members; 0: all the others.
      seed: the split seed.

    Raises:
      UserError: a member too small to give its adaptation images and at least one unseen
        image, or fewer adaptation images than members.
    """
    n_adaptation = errors.check_count("n_adaptation", n_adaptation, 1)
    n_unseen = errors.check_count("n_unseen", n_unseen, 0)
    if n_adaptation < len(members):
        raise errors.UserError(
            f"n_adaptation={n_adaptation} is fewer than the {len(members)} members of the "
            "shift: expected at least one adaptation image per member."
        )
    adapt_counts = spread(n_adaptation, len(members))
    unseen_counts = spread(n_unseen, len(members)) if n_unseen else [None] * len(members)
    out = []
    for (name, size), n_adapt, n_rest in zip(members, adapt_counts, unseen_counts, strict=True):
        if size <= n_adapt:
            raise errors.UserError(
                f"{name} holds {size} images: too few for {n_adapt} adaptation images and "
                "unseen ones. Lower n_adaptation."
            )
        order = np.random.default_rng(member_seed(seed, name)).permutation(size)
        adaptation = np.sort(order[:n_adapt])
        rest = order[n_adapt:] if n_rest is None else order[n_adapt : n_adapt + n_rest]
        out.append(MemberSplit(name, size, adaptation, np.sort(rest)))
    return out
