"""Shifted test sets of CIFAR-10 and ImageNet (TFDS), and how logits score their labels.

A model's logits score a dataset's labels through the dataset's `head` (`DatasetEntry.head`):
logits [..., C] -> log-probabilities [..., L] over the label space. None is the plain
log-softmax (labels are the model's classes). Labels are int32 [N], or int32 [N, S] for
datasets with several correct labels per image (ImageNet-ReaL), padded with -1; a point with
no label at all is not scored.

The registry entries (`ENTRIES`, keyed by TFDS name with config) are read through
`tfds.data_source`, TF-free; each set has the threat models of its clean parent. ImageNet:
ImageNet-ReaL, ImageNetV2, ImageNet-A, ImageNet-R, ImageNet-Sketch, ImageNet-C (15
corruptions x 5 severities, and the group of all 75) and the cue-conflict stimuli of Geirhos et
al.; CIFAR-10: CIFAR-10.1 (v6) and CIFAR-10-C (likewise 75 sets and their group).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import errors
from seasoning.data import corruptions, radii
from seasoning.data.source import DatasetEntry, Head
from seasoning.data.tfds_source import tfds_entry

IMAGENET_CLASSES = 1000

# The radii of the clean parents: the shifted sets are evaluated at the same ones.
CIFAR10_THREATS = radii.CIFAR10
IMAGENET_THREATS = radii.IMAGENET

# The 15 benchmark corruptions of ImageNet-C and CIFAR-10-C (Hendrycks & Dietterich 2019) in
# the spelling of the TFDS configs `<corruption>_<severity>` (BENCHMARK_CORRUPTIONS in
# tensorflow/datasets: tensorflow_datasets/datasets/imagenet2012_corrupted/
# imagenet2012_corrupted_dataset_builder.py and image_classification/cifar10_corrupted.py).
# The 4 extra corruptions (gaussian_blur, saturate, spatter, speckle_noise) are left out.
IMAGENET_C_CORRUPTIONS = corruptions.CORRUPTIONS  # the 15 benchmark corruptions
CIFAR10_C_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "frosted_glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)

# The most labels one ImageNet-ReaL image has: real.json of google-research/reassessed-imagenet
# (what TFDS's imagenet2012_real reads) holds 50,000 lists of 0 to 9 labels (9 for 2 images).
# Label sets are padded to this width; a record with more raises.
REAL_MAX_LABELS = 9

# fmt: off
# The 200 ImageNet-1k class indices of ImageNet-A: `indices_in_1k`, the keys of
# `thousand_k_to_200` that map to a class, in hendrycks/natural-adv-examples eval.py.
IMAGENET_A_INDICES = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94,
    96, 97, 99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234,
    235, 254, 277, 283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314,
    315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386,
    397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456,
    457, 461, 462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543,
    549, 552, 557, 561, 562, 569, 572, 573, 575, 579, 589, 606, 607, 609, 614, 626, 627,
    640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704, 719, 736, 746, 749, 752,
    758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804, 813, 815,
    820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897,
    900, 907, 913, 924, 932, 933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971,
    972, 980, 981, 984, 986, 987, 988,
)

# The 200 ImageNet-1k class indices of ImageNet-R: the positions in `all_wnids` (the 1000
# WNIDs in sorted order, TFDS's label order) of the WNIDs in `imagenet_r_wnids`, i.e. the
# True entries of `imagenet_r_mask`, in hendrycks/imagenet-r eval.py.
IMAGENET_R_INDICES = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96,
    97, 99, 100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160,
    161, 162, 163, 171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235,
    242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289,
    291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334,
    335, 337, 338, 340, 341, 344, 347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388,
    390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435, 437, 441, 447, 448, 457, 462,
    463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593,
    594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776,
    779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907,
    928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963,
    965, 967, 980, 981, 983, 988,
)

# The 16 categories of the cue-conflict stimuli, in the order of the TFDS ClassLabel names of
# `shape_label` (and `texture_label`): `_CLASSES` in tensorflow/datasets
# tensorflow_datasets/image_classification/geirhos_conflict_stimuli.py.
CONFLICT_CATEGORIES = (
    "airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock",
    "dog", "elephant", "keyboard", "knife", "oven", "truck",
)

# The ImageNet-1k indices of each category: `HumanCategories.<category>_indices` in
# bethgelab/model-vs-human modelvshuman/helper/human_categories.py, which
# `ImageNetProbabilitiesTo16ClassesMapping` (modelvshuman/datasets/decision_mappings.py)
# aggregates. Keyed by name; `CONFLICT_CATEGORIES` fixes the order.
CONFLICT_IMAGENET_INDICES: Mapping[str, tuple[int, ...]] = {
    "airplane": (404,),
    "bear": (294, 295, 296, 297),
    "bicycle": (444, 671),
    "bird": (8, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 23, 24, 80, 81, 82, 83, 87, 88,
             89, 90, 91, 92, 93, 94, 95, 96, 98, 99, 100, 127, 128, 129, 130, 131, 132, 133,
             135, 136, 137, 138, 139, 140, 141, 142, 143, 144, 145),
    "boat": (472, 554, 625, 814, 914),
    "bottle": (440, 720, 737, 898, 899, 901, 907),
    "car": (436, 511, 817),
    "cat": (281, 282, 283, 284, 285, 286),
    "chair": (423, 559, 765, 857),
    "clock": (409, 530, 892),
    "dog": (152, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 164, 165, 166, 167,
            168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183,
            184, 185, 186, 187, 188, 189, 190, 191, 193, 194, 195, 196, 197, 198, 199, 200,
            201, 202, 203, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217,
            218, 219, 220, 221, 222, 223, 224, 225, 226, 228, 229, 230, 231, 232, 233, 234,
            235, 236, 237, 238, 239, 240, 241, 243, 244, 245, 246, 247, 248, 249, 250, 252,
            253, 254, 255, 256, 257, 259, 261, 262, 263, 265, 266, 267, 268),
    "elephant": (385, 386),
    "keyboard": (508, 878),
    "knife": (499,),
    "oven": (766,),
    "truck": (555, 569, 656, 675, 717, 734, 864, 867),
}
# fmt: on


def _check_imagenet_logits(logits: jax.Array, what: str) -> None:
    if logits.shape[-1] != IMAGENET_CLASSES:
        raise errors.UserError(
            f"{what} scores ImageNet-1k logits: expected {IMAGENET_CLASSES} logits per point, "
            f"got shape {tuple(logits.shape)}."
        )


def _masked_log_softmax(mask: np.ndarray, logits: jax.Array) -> jax.Array:
    logits = jnp.asarray(logits, jnp.float32)
    _check_imagenet_logits(logits, "A class-mask head")
    return jax.nn.log_softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)


def class_mask_head(indices: Sequence[int]) -> Head:
    """The head of a dataset whose labels are ImageNet-1k classes of which only `indices` occur.

    As Hendrycks et al. score ImageNet-A and ImageNet-R: the log-softmax over the logits of
    those classes alone; every other class gets log-probability -inf, so it is never predicted.

    Args:
      indices: the ImageNet-1k class indices that occur, distinct, in [0, 1000).

    Returns:
      logits [..., 1000] -> log-probabilities [..., 1000].
    """
    index = np.asarray(indices, dtype=np.int64)
    if (
        len(set(index.tolist())) != len(index)
        or not ((index >= 0) & (index < IMAGENET_CLASSES)).all()
    ):
        raise errors.UserError(
            f"Class-mask indices {list(indices)}: expected distinct integers in [0, 1000)."
        )
    mask = np.zeros(IMAGENET_CLASSES, dtype=bool)
    mask[index] = True
    return functools.partial(_masked_log_softmax, mask)


def _category_log_probs(
    categories: tuple[np.ndarray, ...], log_norms: np.ndarray, logits: jax.Array
) -> jax.Array:
    logits = jnp.asarray(logits, jnp.float32)
    _check_imagenet_logits(logits, "A category head")
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # log of each category's mean probability, in log space for stability.
    log_means = jnp.stack(
        [jax.scipy.special.logsumexp(log_p[..., index], axis=-1) for index in categories],
        axis=-1,
    ) - jnp.asarray(log_norms)
    return jax.nn.log_softmax(log_means, axis=-1)


def category_head(categories: Sequence[Sequence[int]]) -> Head:
    """The head of a dataset whose labels are categories made of ImageNet-1k classes.

    As model-vs-human's `ImageNetProbabilitiesTo16ClassesMapping` (Geirhos et al.) decides: the
    softmax over the 1000 logits, then each category's mean probability over its classes
    (a mean, not a sum: a category with many classes gains nothing from their number). The
    means are normalised to sum to 1, so the head is a log-probability like every other.

    Args:
      categories: per category (in label order), its ImageNet-1k class indices.

    Returns:
      logits [..., 1000] -> log-probabilities [..., len(categories)].
    """
    indices = tuple(np.asarray(c, dtype=np.int32) for c in categories)
    if any(len(c) == 0 or (c < 0).any() or (c >= IMAGENET_CLASSES).any() for c in indices):
        raise errors.UserError(
            f"Category indices {[c.tolist() for c in indices]}: expected a non-empty list of "
            "ImageNet-1k indices in [0, 1000) per category."
        )
    log_norms = np.log([len(c) for c in indices]).astype(np.float32)
    return functools.partial(_category_log_probs, indices, log_norms)


def _corrupted(
    family: str, corruptions: Sequence[str], threats: tuple, split: str
) -> dict[str, DatasetEntry]:
    """The 75 entries `family/<corruption>_<severity>` and their group `family`."""
    names = [f"{family}/{c}_{s}" for c in corruptions for s in SEVERITIES]
    entries = {n: tfds_entry(n, threats, default_split=split) for n in names}
    group = DatasetEntry(load=None, threats=threats, default_split=split, members=tuple(names))
    return {family: group, **entries}


def _entries() -> dict[str, DatasetEntry]:
    imagenet = functools.partial(tfds_entry, threats=IMAGENET_THREATS)
    return {
        "imagenet2012_real": imagenet(
            "imagenet2012_real",
            default_split="validation",
            label_key="real_label",
            max_labels=REAL_MAX_LABELS,
        ),
        "imagenet_v2/matched-frequency": imagenet("imagenet_v2/matched-frequency"),
        "imagenet_a": imagenet("imagenet_a", head=class_mask_head(IMAGENET_A_INDICES)),
        "imagenet_r": imagenet("imagenet_r", head=class_mask_head(IMAGENET_R_INDICES)),
        "imagenet_sketch": imagenet("imagenet_sketch"),
        **_corrupted(
            "imagenet2012_corrupted", IMAGENET_C_CORRUPTIONS, IMAGENET_THREATS, "validation"
        ),
        "geirhos_conflict_stimuli": imagenet(
            "geirhos_conflict_stimuli",
            label_key="shape_label",
            head=category_head([CONFLICT_IMAGENET_INDICES[c] for c in CONFLICT_CATEGORIES]),
            model_classes=IMAGENET_CLASSES,
        ),
        "cifar10_1/v6": tfds_entry("cifar10_1/v6", CIFAR10_THREATS),
        **_corrupted("cifar10_corrupted", CIFAR10_C_CORRUPTIONS, CIFAR10_THREATS, "test"),
    }


# Registry entries of this module (merged into `data.DATASETS`).
ENTRIES: Mapping[str, DatasetEntry] = _entries()


def label_log_probs(head: Head | None, logits: jax.Array) -> jax.Array:
    """Log-probabilities [..., L] of the labels of a dataset with `head`, from logits."""
    logits = jnp.asarray(logits, jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1) if head is None else head(logits)


def predictions(head: Head | None, logits: jax.Array) -> jax.Array:
    """int32 [...]: the predicted label of each point, in the dataset's label space."""
    return jnp.argmax(label_log_probs(head, logits), axis=-1).astype(jnp.int32)


def _label_sets(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels[:, None] if labels.ndim == 1 else labels


def scored(labels: np.ndarray) -> np.ndarray:
    """bool [N]: the points that have at least one label (the others are not scored)."""
    return (_label_sets(labels) >= 0).any(axis=-1)


def correct(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool [..., N]: whether each prediction is one of its point's labels.

    Args:
      predicted: int [..., N] predicted labels (e.g. one row per model).
      labels: int [N] or [N, S] (-1 padded).
    """
    sets = _label_sets(labels)
    predicted = np.asarray(predicted)[..., None]
    return ((predicted == sets) & (sets >= 0)).any(axis=-1)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """float [...]: the fraction of the scored points predicted correctly, per row."""
    keep = scored(labels)
    if not keep.any():
        raise ValueError("No scored point: every point lacks a label.")
    return correct(predicted, labels)[..., keep].mean(axis=-1)


NLL_CAP = 1e4


def label_nll(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """float [N]: -log of the probability of a correct label (any of a point's labels);
    0 for points without a label. A label the head cannot predict (outside ImageNet-A's mask)
    costs a constant NLL_CAP: finite, and without gradient."""
    labels = labels[:, None] if labels.ndim == 1 else labels
    valid = labels >= 0
    picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0), axis=-1)
    picked = jnp.where(valid, jnp.maximum(picked, -NLL_CAP), -jnp.inf)
    nll = -jax.scipy.special.logsumexp(picked, axis=-1)
    return jnp.where(valid.any(axis=-1), nll, 0.0)
