"""A learnable synthetic dataset: class prototypes plus noise, any image shape."""

from __future__ import annotations

import numpy as np

from seasoning.data.source import ArraySource


def load(
    split: str,
    *,
    num_examples: int = 2048,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    seed: int = 0,
) -> ArraySource:
    """Images = per-class smooth prototype + noise, so a model can learn them in a few steps.

    The prototypes depend on `seed` only; the examples also on `split`, so "train" and "test"
    hold different draws of the same classes.
    """
    proto_rng = np.random.default_rng([seed, 0])
    h, w, c = image_shape
    coarse = proto_rng.uniform(0.15, 0.85, size=(num_classes, 4, 4, c))
    prototypes = coarse.repeat(-(-h // 4), axis=1).repeat(-(-w // 4), axis=2)[:, :h, :w]
    rng = np.random.default_rng([seed, 1 + (split != "train")])
    labels = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    noise = rng.normal(0.0, 0.12, size=(num_examples, h, w, c))
    images = np.clip(prototypes[labels] + noise, 0.0, 1.0)
    return ArraySource((images * 255).round().astype(np.uint8), labels, num_classes)
