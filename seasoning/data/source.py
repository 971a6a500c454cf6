"""The one interface every dataset implements: random access to uint8 images and labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

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


# `load(dataset_config, split, seed) -> Source`.
Loader = Callable[[Any, str, int], Source]
# logits [..., C] -> log-probabilities [..., L] over a dataset's label space (see data.shifts).
Head = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset (`data.DATASETS`).

    Attributes:
      load: `load(dataset_config, split, seed) -> Source`, the split of the dataset that the
        config section `dataset` (data_dir, image_size, ...) describes; None for a group.
      tfds_name: the TFDS name it is read under (with its config, e.g. "cifar10_corrupted/
        fog_3"), or None for datasets read otherwise.
      threats: the threat models it is usually evaluated under, or None when it has no usual
        radii (evaluation then needs them named explicitly).
      default_split: the split read when none is named.
      head: how a model's logits score this dataset's labels (`data.shifts.label_log_probs`):
        logits -> log-probabilities over the label space; None: log-softmax of all logits
        (the labels are the model's classes). E.g. ImageNet-A's 200-class mask.
      model_classes: the logit count a model needs to score this dataset, when it differs
        from the labels' class count (Conflict Stimuli: 1000 ImageNet logits, 16 labels).
      members: a group (ImageNet-C, Fashion-MNIST-C): the registry names of its members; its
        accuracy is the mean of theirs. Empty for a dataset read by `load`.
    """

    load: Loader | None
    tfds_name: str | None = None
    threats: tuple[Any, ...] | None = None
    default_split: str = "test"
    head: Head | None = None
    model_classes: int | None = None
    members: tuple[str, ...] = ()


class ConcatSource:
    """Several sources of one image shape and label space read as one (index = offset + i).

    `member_of(indices)` says which source each index falls in (a group's members, e.g. the
    75 corruption x severity sets of ImageNet-C).
    """

    def __init__(self, sources: list[Source]):
        if not sources:
            raise errors.UserError("ConcatSource needs at least one source.")
        shapes = {tuple(s.image_shape) for s in sources}
        classes = {s.num_classes for s in sources}
        if len(shapes) != 1 or len(classes) != 1:
            raise errors.UserError(
                f"Sources to concatenate differ in image shape {sorted(shapes)} or class count "
                f"{sorted(classes)}."
            )
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in sources])
        self.image_shape = tuple(sources[0].image_shape)
        self.num_classes = sources[0].num_classes

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def member_of(self, indices: np.ndarray) -> np.ndarray:
        """int [n]: the source each global index belongs to."""
        return np.searchsorted(self.offsets, np.asarray(indices), side="right") - 1

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise errors.UserError(
                f"Indices must lie in [0, {len(self)}); got {indices.min()}..{indices.max()}."
            )
        member = self.member_of(indices)
        images = np.zeros((len(indices), *self.image_shape), np.uint8)
        labels = None
        for m in np.unique(member):
            where = np.flatnonzero(member == m)
            x, y = self.sources[m].get(indices[where] - self.offsets[m])
            if labels is None:
                labels = np.zeros((len(indices), *np.shape(y)[1:]), np.int32)
            images[where], labels[where] = x, y
        if labels is None:
            labels = np.zeros((0,), np.int32)
        return images, labels
