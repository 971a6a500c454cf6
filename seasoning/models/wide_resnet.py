"""The CIFAR WideResNet (Zagoruyko & Komodakis, 2016), pre-activation form.

Layer for layer the WideResNet of the robustness literature (TRADES, Rice et al. 2020,
RobustBench): 3x3 stem with 16 channels, three groups of (depth - 4) / 6 pre-activation
basic blocks with 16k, 32k and 64k channels (k the widening factor; the second and third
groups start with stride 2), BN-ReLU, global average pooling and a linear head. A block
whose input and output shapes differ applies its 1x1 shortcut convolution to the
pre-activated input (the block is `preact_resnet.PreActBlock`). WRN-28-10 with 10 classes
has 36,479,194 parameters; RobustBench's `WideResNet` (from TRADES) has these layers.

DeepMind's robust WideResNets (Gowal et al. 2020, Rebuffi et al. 2021, as released in
deepmind-research/adversarial_robustness and RobustBench's `DMWideResNet`) are the same
network with swish activations and TensorFlow's SAME padding (`activation="swish",
padding="same"`, the registry's "dm-wrn-D-W").
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from seasoning import errors
from seasoning.models import normalization
from seasoning.models.preact_resnet import (
    ACTIVATIONS,
    PreActBlock,
    conv,
    pooled_head,
    remat_block,
)


def check_shape(depth: int, widen_factor: int) -> None:
    """Raises ValueError unless `depth` is 6n + 4 (n >= 1) and `widen_factor` is >= 1."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise errors.UserError(
            f"WideResNet depth {depth} is not 6n + 4 with n >= 1: (depth - 4) % 6 must be 0, "
            "e.g. depth 10, 16, 22, 28, 34, 40 or 70."
        )
    if widen_factor < 1:
        raise errors.UserError(f"WideResNet widen_factor {widen_factor} must be >= 1.")


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for CIFAR-sized images (32x32; 28x28 works too).

    Attributes:
      depth: total depth, 6n + 4 (n blocks per group).
      widen_factor: channel multiplier k (groups have 16k, 32k, 64k channels).
      num_classes: number of logits.
      mean: per-channel pixel mean (or a single value for all channels) used to normalise the
        [0, 1] input. Defaults to CIFAR-10's; set mean and std for other data (e.g. gray).
      std: per-channel pixel standard deviation, likewise.
      dtype: compute dtype; parameters stay float32 and logits are float32.
      remat: rematerialise each block (`nn.remat`): its activations are recomputed in the
        backward pass instead of stored, for about one more forward pass of compute. Same
        parameters and outputs.
      activation: "relu", or "swish" (DeepMind's WRNs).
      padding: "symmetric" (PyTorch's), or "same" (TensorFlow's and Haiku's: DeepMind's WRNs).
    """

    depth: int
    widen_factor: int
    num_classes: int
    mean: Sequence[float] = normalization.CIFAR10_MEAN
    std: Sequence[float] = normalization.CIFAR10_STD
    dtype: DTypeLike = jnp.float32
    remat: bool = False
    activation: str = "relu"
    padding: str = "symmetric"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits [B, num_classes] (float32) for images `x` [B, H, W, C] in [0, 1]."""
        check_shape(self.depth, self.widen_factor)
        x = normalization.normalize(x, self.mean, self.std, self.dtype)
        x = conv(16, 3, 1, self.dtype, "stem", self.padding)(x)
        blocks_per_group = (self.depth - 4) // 6
        block = remat_block(PreActBlock) if self.remat else PreActBlock
        for group, (width, strides) in enumerate(zip((16, 32, 64), (1, 2, 2), strict=True)):
            for i in range(blocks_per_group):
                x = block(
                    width * self.widen_factor,
                    strides=strides if i == 0 else 1,
                    dtype=self.dtype,
                    activation=self.activation,
                    padding=self.padding,
                    name=f"group{group + 1}_block{i + 1}",
                )(x, train)
        act = ACTIVATIONS[self.activation]
        x = act(normalization.batch_norm(train, self.dtype, name="bn")(x))
        return pooled_head(x, self.num_classes)
