"""The radii each dataset family is usually evaluated at (pixels in [0, 1]), one copy each.

CIFAR-10 and ImageNet: those of the soups paper and of Croce & Hein 2022. Fashion-MNIST
(28x28x1): Linf 0.1 as in the literature; L2 and L1 are ours, CIFAR-10's radii carried over
to 784 pixels so that each covers the same fraction of the Linf ball's extent,
eps_inf * d^(1/p), as on CIFAR-10 (L2: 0.5 / (8/255 * sqrt(3072)) * 0.1 * sqrt(784) = 0.8;
L1: 12 / (8/255 * 3072) * 0.1 * 784 = 9.8, rounded to 10). A shifted test set is evaluated at
its clean dataset's radii. Synthetic data and CIFAR-100 have no usual radii here.
"""

from __future__ import annotations

from seasoning import threat


def _parse(*specs: str) -> tuple[threat.ThreatModel, ...]:
    return tuple(threat.parse(spec) for spec in specs)


FASHION_MNIST = _parse("linf:0.1", "l2:0.8", "l1:10")
CIFAR10 = _parse("linf:8/255", "l2:0.5", "l1:12")
IMAGENET = _parse("linf:4/255", "l2:2", "l1:255")
