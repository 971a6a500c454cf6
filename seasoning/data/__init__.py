"""Datasets as random-access sources, and the batch pipeline over them.

`get_source(dataset_config, split)` is the one entry point the drivers use; batches are
NHWC float32 in [0, 1] with int32 labels (see `pipeline`).
"""

from __future__ import annotations

import ml_collections

from seasoning import errors
from seasoning.data import fashion_mnist, synthetic
from seasoning.data.pipeline import (
    eval_batches,
    prefetch,
    steps_per_epoch,
    to_float,
    train_batches,
)
from seasoning.data.source import ArraySource, Source

# TFDS names read through tfds.data_source; the keys are our config names.
TFDS_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet2012": "imagenet2012"}

__all__ = [
    "ArraySource",
    "Source",
    "eval_batches",
    "get_source",
    "prefetch",
    "steps_per_epoch",
    "to_float",
    "train_batches",
]


def get_source(dataset: ml_collections.ConfigDict, split: str, *, seed: int = 0) -> Source:
    """The split `split` of the dataset that config section `dataset` describes."""
    if dataset.name == "fashion_mnist":
        return fashion_mnist.load(split, dataset.data_dir)
    if dataset.name == "synthetic":
        size = dataset.image_size or 32
        return synthetic.load(
            split,
            num_examples=dataset.num_train_examples if split == "train" else 512,
            image_shape=(size, size, 3),
            num_classes=dataset.num_classes,
            seed=seed,
        )
    if dataset.name in TFDS_DATASETS:
        from seasoning.data.tfds_source import TfdsSource

        return TfdsSource(
            TFDS_DATASETS[dataset.name],
            split,
            data_dir=dataset.data_dir,
            image_size=dataset.image_size,
        )
    known = ["fashion_mnist", "synthetic", *TFDS_DATASETS]
    raise errors.UserError(
        f"Unknown dataset {dataset.name!r}; expected one of: {', '.join(known)}."
    )
