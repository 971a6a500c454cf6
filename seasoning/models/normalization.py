"""Normalisation: of the [0, 1] input (every model's first op), and the shared BatchNorm.

Keeping input normalisation inside the model lets attacks, threat models and data pipelines
all work in [0, 1] pixel space, whatever statistics a model was trained with.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from seasoning import errors

# Per-channel pixel statistics of common training sets, for [0, 1] pixels.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Maps [0, 1] to [-1, 1]; one value, so it suits any number of channels.
HALF = (0.5,)


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int | None = None) -> None:
    """Checks normalisation statistics, optionally against an input's channel count.

    Args:
      mean: one value for every channel, or one value per channel.
      std: likewise; every value must be positive.
      channels: the input's channel count, when known.

    Raises:
      ValueError: naming the bad statistic, its length, and the channel count.
    """
    for label, values in (("mean", mean), ("std", std)):
        if len(values) == 0:
            raise errors.UserError(
                f"Model {label}={tuple(values)} is empty; give one value per channel."
            )
        if channels is not None and len(values) not in (1, channels):
            raise errors.UserError(
                f"Model {label}={tuple(values)} has {len(values)} values but the input has "
                f"{channels} channel(s); pass one value per channel or a single value, e.g. "
                f"mean=(0.5,), std=(0.5,) (the model defaults suit RGB data: set both for other "
                f"inputs)."
            )
    if any(not s > 0 for s in std):
        raise errors.UserError(f"Model std={tuple(std)} must be positive.")


def normalize(
    x: jax.Array, mean: Sequence[float], std: Sequence[float], dtype: DTypeLike
) -> jax.Array:
    """Maps [0, 1] pixels `x` of shape [B, H, W, C] to `(x - mean) / std` in `dtype`.

    The arithmetic runs in float32; only the result is cast to the compute dtype.

    Args:
      x: images, [B, H, W, C].
      mean: one value for every channel, or C values.
      std: likewise.
      dtype: the model's compute dtype.

    Raises:
      ValueError: if `x` is not 4-d, or the statistics do not fit its channels.
    """
    if x.ndim != 4:
        raise errors.UserError(f"Model input must be [B, H, W, C] images; got shape {x.shape}.")
    check_stats(mean, std, channels=x.shape[-1])
    x = jnp.asarray(x, jnp.float32)
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)


# Flax's convention: running = BN_MOMENTUM * running + (1 - BN_MOMENTUM) * batch statistic.
BN_MOMENTUM = 0.9


def batch_norm(
    train: bool, dtype: DTypeLike, name: str | None = None, scale_init=nn.initializers.ones
) -> nn.BatchNorm:
    """The BatchNorm every model here uses: PyTorch's defaults (momentum 0.1, eps 1e-5).

    Batch statistics in train mode, running statistics (collection 'batch_stats') otherwise.
    Under `jax.jit` with a batch sharded over devices the statistics are those of the global
    batch, so no axis name is needed.

    Args:
      train: use (and update) the batch's statistics.
      dtype: compute dtype (statistics are reduced in float32 regardless).
      name: the module's name.
      scale_init: initialiser of the scale (e.g. zeros for a residual branch's last BN).
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=scale_init,
        name=name,
    )
