"""ResNets (He et al., 2016): the ImageNet ResNet-50 and the CIFAR ResNet-18.

`ResNet`, the ImageNet ResNet with bottleneck blocks, version 1.5. v1.5 (torchvision's
ResNet-50, the usual robust ImageNet backbone) strides the 3x3 convolution of a downsampling
bottleneck, not the first 1x1. Stem: 7x7/2 convolution with
64 channels, BN-ReLU, 3x3/2 max-pool; then stages of bottlenecks (64, 128, 256, 512 inner
channels, 4x expansion; stages 2-4 start with stride 2), global average pooling and a linear
head. ResNet-50 with 1000 classes has 25,557,032 parameters. Layer for layer torchvision's
`resnet50`.

`CifarResNet`, the ResNet-18 of CIFAR robustness papers and of AutoAttack's examples
(kuangliu/pytorch-cifar, RobustBench's `ResNet18`): post-activation basic blocks, a 3x3 stem
with 64 channels and no max-pool, four stages of (2, 2, 2, 2) blocks with 64, 128, 256, 512
channels (stages 2-4 start with stride 2), global average pooling and a linear head with a
bias. With 10 classes it has 11,173,962 parameters.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from seasoning.models import normalization
from seasoning.models.preact_resnet import conv, pooled_head, residual_stages


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1(4x)-BN, + shortcut, ReLU.

    The shortcut is a strided 1x1 convolution with BN when the shape changes.

    Attributes:
      features: inner channels; the block outputs 4 * features.
      strides: stride of the 3x3 convolution and of the shortcut.
      dtype: compute dtype.
    """

    features: int
    strides: int = 1
    dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for input `x` [B, H, W, C]."""
        out_features = 4 * self.features
        y = conv(self.features, 1, 1, self.dtype, "conv1")(x)
        y = nn.relu(normalization.batch_norm(train, self.dtype, name="bn1")(y))
        y = conv(self.features, 3, self.strides, self.dtype, "conv2")(y)
        y = nn.relu(normalization.batch_norm(train, self.dtype, name="bn2")(y))
        y = conv(out_features, 1, 1, self.dtype, "conv3")(y)
        y = normalization.batch_norm(train, self.dtype, name="bn3")(y)
        if x.shape[-1] == out_features and self.strides == 1:
            shortcut = x
        else:
            shortcut = conv(out_features, 1, self.strides, self.dtype, "shortcut_conv")(x)
            shortcut = normalization.batch_norm(train, self.dtype, name="shortcut_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet v1.5 for ImageNet-sized images; the defaults give ResNet-50.

    Attributes:
      num_classes: number of logits.
      stage_sizes: bottlenecks per stage ((3, 4, 6, 3) for ResNet-50).
      mean: per-channel pixel mean (or a single value for all channels) used to normalise the
        [0, 1] input. Defaults to ImageNet's.
      std: per-channel pixel standard deviation, likewise.
      dtype: compute dtype; parameters stay float32 and logits are float32.
      remat: rematerialise each bottleneck (`nn.remat`, see `preact_resnet.remat_block`).
        Same parameters and outputs.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    mean: Sequence[float] = normalization.IMAGENET_MEAN
    std: Sequence[float] = normalization.IMAGENET_STD
    dtype: DTypeLike = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits [B, num_classes] (float32) for images `x` [B, H, W, C] in [0, 1]."""
        x = normalization.normalize(x, self.mean, self.std, self.dtype)
        x = conv(64, 7, 2, self.dtype, "stem_conv")(x)
        x = nn.relu(normalization.batch_norm(train, self.dtype, name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        x = residual_stages(
            x, Bottleneck, self.stage_sizes, train=train, dtype=self.dtype, remat=self.remat
        )
        return pooled_head(x, self.num_classes)


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU, conv3x3-BN, + shortcut, ReLU (a post-activation basic block).

    The shortcut is a strided 1x1 convolution with BN when the shape changes.

    Attributes:
      features: output channels.
      strides: stride of the first convolution and of the shortcut.
      dtype: compute dtype.
    """

    features: int
    strides: int = 1
    dtype: DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for input `x` [B, H, W, C]."""
        y = conv(self.features, 3, self.strides, self.dtype, "conv1")(x)
        y = nn.relu(normalization.batch_norm(train, self.dtype, name="bn1")(y))
        y = conv(self.features, 3, 1, self.dtype, "conv2")(y)
        y = normalization.batch_norm(train, self.dtype, name="bn2")(y)
        if x.shape[-1] == self.features and self.strides == 1:
            shortcut = x
        else:
            shortcut = conv(self.features, 1, self.strides, self.dtype, "shortcut_conv")(x)
            shortcut = normalization.batch_norm(train, self.dtype, name="shortcut_bn")(shortcut)
        return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
    """ResNet with basic blocks for CIFAR-sized images; the defaults give ResNet-18.

    Attributes:
      num_classes: number of logits.
      stage_sizes: basic blocks per stage ((2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for 34).
      mean: per-channel pixel mean (or a single value for all channels) used to normalise the
        [0, 1] input. Defaults to CIFAR-10's; set mean and std for other data (e.g. gray).
      std: per-channel pixel standard deviation, likewise.
      dtype: compute dtype; parameters stay float32 and logits are float32.
      remat: rematerialise each block (`nn.remat`, see `preact_resnet.remat_block`). Same
        parameters and outputs.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    mean: Sequence[float] = normalization.CIFAR10_MEAN
    std: Sequence[float] = normalization.CIFAR10_STD
    dtype: DTypeLike = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits [B, num_classes] (float32) for images `x` [B, H, W, C] in [0, 1]."""
        x = normalization.normalize(x, self.mean, self.std, self.dtype)
        x = conv(64, 3, 1, self.dtype, "stem_conv")(x)
        x = nn.relu(normalization.batch_norm(train, self.dtype, name="stem_bn")(x))
        x = residual_stages(
            x, BasicBlock, self.stage_sizes, train=train, dtype=self.dtype, remat=self.remat
        )
        return pooled_head(x, self.num_classes)
