"""Datasets as random-access sources, and the batch pipeline over them.

`DATASETS` is the one registry: a dataset's config name -> how to load a split, its TFDS name
(if it is read through TFDS) and the threat models it is usually evaluated under.
`get_source(dataset_config, split)` is the one entry point the evaluating drivers use: the
split after the config's evaluation ops (`eval_ops`); training reads `get_records` through the
Grain pipeline with `train_ops` (`pipeline`). Batches are NHWC float32 in [0, 1] with int32
labels. `parse_dataset("NAME[:split]")` reads a
dataset named on a command line or in a config, `default_threats(name)` gives its radii.

A registry key may contain "/" (a TFDS name with a config, e.g. "cifar10_corrupted/fog_3"),
never ":", which separates the split.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping

import ml_collections

from seasoning import errors, threat
from seasoning.data import corruptions, fashion_mnist, ops, radii, shifts, synthetic
from seasoning.data.pipeline import (
    Batches,
    StepBatch,
    default_workers,
    step_batches,
    steps_per_epoch,
    to_float,
    train_batches,
)
from seasoning.data.source import ArraySource, Cached, DatasetEntry, Preprocessed, Source
from seasoning.data.tfds_source import CROP_FRACTION, tfds_entry

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "ArraySource",
    "Batches",
    "Cached",
    "DatasetEntry",
    "Preprocessed",
    "Source",
    "StepBatch",
    "default_threats",
    "default_workers",
    "eval_dataset",
    "eval_ops",
    "get_records",
    "get_source",
    "members",
    "ops",
    "parse_dataset",
    "step_batches",
    "steps_per_epoch",
    "to_float",
    "train_batches",
    "train_ops",
]


def _load_fashion_mnist(dataset: ml_collections.ConfigDict, split: str, seed: int) -> Source:
    del seed  # a fixed dataset
    return fashion_mnist.load(split, dataset.data_dir)


def _load_synthetic(dataset: ml_collections.ConfigDict, split: str, seed: int) -> Source:
    size = dataset.image_size or 32
    return synthetic.load(
        split,
        num_examples=dataset.num_train_examples if split == "train" else 512,
        image_shape=(size, size, 3),
        num_classes=dataset.num_classes,
        seed=seed,
    )


# The radii: `data/radii.py`.
DATASETS: Mapping[str, DatasetEntry] = types.MappingProxyType(
    {
        "fashion_mnist": DatasetEntry(load=_load_fashion_mnist, threats=radii.FASHION_MNIST),
        "synthetic": DatasetEntry(load=_load_synthetic),
        "cifar10": tfds_entry("cifar10", radii.CIFAR10),
        "cifar100": tfds_entry("cifar100"),
        "imagenet2012": tfds_entry("imagenet2012", radii.IMAGENET, default_split="validation"),
        **corruptions.ENTRIES,  # Fashion-MNIST's shifted test sets, generated offline
        **shifts.ENTRIES,  # the shifted test sets of CIFAR-10 and ImageNet (TFDS)
    }
)

# The registered names, in registration order.
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def _unknown(name: str) -> str:
    """`Unknown dataset 'x'; expected one of: ...` with the closest names as a hint (a group's
    members are summarised by the group)."""
    near = difflib.get_close_matches(name, DATASET_NAMES, n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    in_groups = {m for entry in DATASETS.values() for m in entry.members}
    listed = [
        f"{n} (or a member, e.g. {DATASETS[n].members[0]})" if DATASETS[n].members else n
        for n in DATASET_NAMES
        if n not in in_groups
    ]
    return f"Unknown dataset {name!r}; expected one of: {', '.join(listed)}.{hint}"


def _resize_ops(dataset: ml_collections.ConfigDict) -> tuple[ops.Op, ...]:
    """`dataset.image_size` of a TFDS dataset as ops: the shorter side to size / 0.875 (PIL
    bicubic), the central size x size (how images were sized before preprocessing ops)."""
    size = dataset.get("image_size", 0)
    if not size or DATASETS[dataset.name].tfds_name is None:
        return ()  # native size; synthetic data is generated at image_size
    return ops.ResizeSmall(size / CROP_FRACTION, "bicubic"), ops.CentralCrop(size)


def _check_spec_alone(dataset: ml_collections.ConfigDict, key: str) -> None:
    legacy = [f"{k}={dataset.get(k)!r}" for k in ("crop_padding", "flip") if dataset.get(k)]
    if key == "pp_train" and legacy:
        raise errors.UserError(
            f"Config dataset.{key}={dataset[key]!r} lists the training ops; "
            f"{' and '.join('dataset.' + x for x in legacy)} would add others: put them in "
            "the list (pad_crop(p), flip_lr) and leave these at their defaults."
        )
    if dataset.get("image_size", 0) and DATASETS[dataset.name].tfds_name is not None:
        raise errors.UserError(
            f"Config dataset.{key}={dataset[key]!r} sizes the images itself; "
            f"dataset.image_size={dataset.image_size} would resize them again: set it to 0."
        )


def train_ops(dataset: ml_collections.ConfigDict) -> tuple[str, tuple[ops.Op, ...]]:
    """(spec, ops) of the training preprocessing: `dataset.pp_train`, or when it is empty
    decode, `image_size`'s resize and crop, `pad_crop(crop_padding)` and `flip_lr`.

    Raises:
      UserError: an unknown op or bad arguments (naming the op), or pp_train given together
        with crop_padding, flip or a TFDS image_size.
    """
    if dataset.get("pp_train", ""):
        _check_spec_alone(dataset, "pp_train")
        return dataset.pp_train, ops.parse(dataset.pp_train)
    found = (ops.Decode(), *_resize_ops(dataset))
    found += (ops.PadCrop(dataset.crop_padding),) if dataset.crop_padding else ()
    found += (ops.FlipLr(),) if dataset.flip else ()
    return "|".join(map(repr, found)), found


def eval_ops(dataset: ml_collections.ConfigDict) -> tuple[str, tuple[ops.Op, ...]]:
    """(spec, ops) of the evaluation preprocessing: `dataset.pp_eval`, or when it is empty
    decode and `image_size`'s resize and crop.

    Raises:
      UserError: as `train_ops`, or a random op in the list.
    """
    if dataset.get("pp_eval", ""):
        _check_spec_alone(dataset, "pp_eval")
        spec, found = dataset.pp_eval, ops.parse(dataset.pp_eval)
        if ops.is_random(found):
            raise errors.UserError(
                f"Config dataset.pp_eval={spec!r} has a random op; evaluation ops must be "
                "deterministic (e.g. decode|resize_small(256)|central_crop(224))."
            )
        return spec, found
    found = (ops.Decode(), *_resize_ops(dataset))
    return "|".join(map(repr, found)), found


def get_records(dataset: ml_collections.ConfigDict, split: str, *, seed: int = 0):
    """The raw records of split `split` (what the training pipeline reads; see `get_source`).

    Raises:
      UserError: for an unknown dataset name; MissingInputError when its files are missing.
    """
    if dataset.name not in DATASETS:
        raise errors.UserError(_unknown(dataset.name))
    entry = DATASETS[dataset.name]
    if entry.members:
        raise errors.UserError(
            f"Dataset {dataset.name!r} is a group of {len(entry.members)} datasets (its accuracy "
            f"is the mean of theirs): name one of them, e.g. {entry.members[0]!r}."
        )
    return entry.load(dataset, split, seed)


def get_source(dataset: ml_collections.ConfigDict, split: str, *, seed: int = 0) -> Source:
    """The split `split` of the dataset that config section `dataset` describes, after its
    evaluation ops (`eval_ops`): fixed-shape uint8 images.

    Args:
      dataset: a training config's `dataset` section (`name`, `data_dir`, `pp_eval`, ...).
      split: the split's name, e.g. "train", "test" or a TFDS slice such as "test[:1000]".
      seed: the seed of generated (synthetic) data; fixed datasets ignore it.

    Raises:
      UserError: for an unknown dataset name or bad ops; MissingInputError when its files
        are missing.
    """
    records = get_records(dataset, split, seed=seed)
    spec, found = eval_ops(dataset)
    if hasattr(records, "get") and all(isinstance(op, ops.Decode) for op in found):
        return records  # decoded arrays already, and nothing else to do
    return Preprocessed(records, found, spec)


def members(name: str) -> tuple[str, ...]:
    """The datasets whose mean accuracy is `name`'s: a group's members, else (name,).

    Raises:
      UserError: an unknown name.
    """
    if name not in DATASETS:
        raise errors.UserError(_unknown(name))
    return DATASETS[name].members or (name,)


def default_threats(name: str) -> tuple[threat.ThreatModel, ...]:
    """The threat models dataset `name` is usually evaluated under (Linf, L2, L1).

    Raises:
      UserError: naming the dataset when it is not registered or has no usual radii.
    """
    entry = DATASETS.get(name)
    if entry is None or entry.threats is None:
        why = "an unknown dataset" if entry is None else "it has no usual radii"
        raise errors.UserError(
            f"No default threat models for dataset {name!r} ({why}): pass --threat / "
            "eval.threats explicitly (e.g. linf:8/255)."
        )
    return entry.threats


def parse_dataset(spec: str) -> tuple[str, str]:
    """Reads `NAME[:split]`, e.g. "cifar10", "cifar10:test" or "cifar10:test[:1000]".

    Args:
      spec: a registered dataset name, optionally followed by ":" and a split (everything after
        the first ":", so TFDS slices stay whole).

    Returns:
      (name, split), split "" when `spec` names none.

    Raises:
      UserError: for an empty spec or an unknown name (listing the registered ones).
    """
    name, _, split = spec.strip().partition(":")
    name, split = name.strip(), split.strip()
    if not name:
        raise errors.UserError(
            f"Dataset {spec!r} names no dataset; expected NAME[:split] with NAME a registered "
            f"dataset, e.g. {', '.join(DATASET_NAMES[:5])}."
        )
    if name not in DATASETS:
        raise errors.UserError(_unknown(name))
    return name, split


def eval_dataset(
    train_dataset: ml_collections.ConfigDict,
    spec: str = "",
    split: str = "",
    *,
    allow_heads: bool = False,
) -> tuple[ml_collections.ConfigDict, str]:
    """(dataset config section, split) to evaluate a run on, for every driver.

    Args:
      train_dataset: the run's `dataset` config section (image size and the like are kept).
      spec: "" (the run's own dataset) or "NAME[:split]" of the registry.
      split: a split overriding the one `spec` names (default: the run's eval split for its
        own dataset, the registry's `default_split` for another).
      allow_heads: accept datasets whose labels are scored through a head (ImageNet-A's mask,
        Conflict Stimuli's categories); only `seasoning.shift` scores them so.

    Raises:
      UserError: an unknown dataset name, or one scored through a head when not allowed.
    """
    section = ml_collections.ConfigDict(train_dataset.to_dict())
    if not spec:
        return section, split or train_dataset.eval_split
    name, named_split = parse_dataset(spec)
    entry = DATASETS[name]
    if not allow_heads and (entry.head is not None or entry.model_classes):
        raise errors.UserError(
            f"Dataset {name!r} scores a model's logits through its own head (a class mask or "
            "category mapping), which the attacks here do not use: measure its clean accuracy "
            "with `python -m seasoning.shift` (configs/shift_*.py)."
        )
    if name != section.name:
        section.name, section.data_dir = name, ""
    return section, split or named_split or DATASETS[name].default_split
