"""The one interface every dataset implements: random access to uint8 images and labels."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from seasoning import errors


class Source(Protocol):
    """Random access to one split of a dataset.

    `get(indices)` returns (images uint8 [n, H, W, C], labels int32 [n]); every image of a
    source has the same shape `image_shape`.
    """

    num_classes: int
    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A split held in memory as arrays."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]
    num_classes: int

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise errors.UserError(
                f"images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}."
            )
        if len(self.images) != len(self.labels):
            raise errors.UserError(f"{len(self.images)} images but {len(self.labels)} labels.")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]

    def take(self, indices: np.ndarray) -> ArraySource:
        """A new source holding only the examples at `indices`."""
        return ArraySource(self.images[indices], self.labels[indices], self.num_classes)
