"""Pre-activation ResNet-18 for CIFAR (He et al., 2016, "Identity Mappings in Deep ResNets").

Layer for layer the PreActResNet-18 of Rice et al. (2020, "Overfitting in adversarially
robust deep learning"), the usual robustness baseline: 3x3 stem with 64 channels, four
stages of two pre-activation basic blocks (64, 128, 256, 512 channels; stages 2-4 start
with stride 2), a final BN-ReLU, global average pooling and a linear head. With 10 classes
it has 11,172,170 parameters. kuangliu/pytorch-cifar's PreActResNet18 lacks the final
BN-ReLU (11,171,146 parameters); `final_norm=False` builds that one.

`PreActBlock` is also the block of the WideResNet.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from seasoning.models import conv as loop_friendly
from seasoning.models import normalization

# PyTorch's kaiming_normal_(mode="fan_out"), as in the reference implementations.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# How a convolution pads its input: "symmetric" (PyTorch's kernel // 2 on every side) or
# "same" (TensorFlow's and Haiku's SAME: for a stride-2 3x3 convolution of an even-sized
# input, no padding before and one row and column after).
PADDINGS = ("symmetric", "same")
# Activations by name: ReLU, or swish (x * sigmoid(x)), which DeepMind's robust WRNs use.
ACTIVATIONS = {"relu": nn.relu, "swish": nn.swish}


def conv(
    features: int,
    kernel: int,
    strides: int,
    dtype: DTypeLike,
    name: str | None = None,
    padding: str = "symmetric",
) -> nn.Conv:
    """A bias-free square convolution, padded as `padding` (one of `PADDINGS`) says."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=strides,
        padding=kernel // 2 if padding == "symmetric" else "SAME",
        use_bias=False,
        kernel_init=conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        conv_general_dilated=loop_friendly.conv_general_dilated,
    )


def remat_block(cls: type[nn.Module]) -> type[nn.Module]:
    """`cls`, a block called as `block(x, train)`, rematerialised (`nn.remat`).

    The rematerialised block recomputes its activations in the backward pass instead of
    storing them; it has the same parameters (and names) and computes the same function.
    `train` is static (argument 2, counting the module).
    """
    return nn.remat(cls, static_argnums=(2,))


def residual_stages(
    x: jax.Array,
    block: type[nn.Module],
    stage_sizes: Sequence[int],
    *,
    train: bool,
    dtype: DTypeLike,
    remat: bool,
) -> jax.Array:
    """The stages of a ResNet, called inside a compact `__call__`: stage s has
    `stage_sizes[s]` blocks of 64 * 2**s channels (`block(features, strides, dtype)`, named
    `stage{s}_block{i}` from 1), stages after the first start with stride 2."""
    block = remat_block(block) if remat else block
    for stage, num_blocks in enumerate(stage_sizes):
        for i in range(num_blocks):
            x = block(
                64 * 2**stage,
                strides=2 if stage > 0 and i == 0 else 1,
                dtype=dtype,
                name=f"stage{stage + 1}_block{i + 1}",
            )(x, train)
    return x


def pooled_head(x: jax.Array, num_classes: int) -> jax.Array:
    """Global average pooling and the linear head `head`, in float32: the logits."""
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(num_classes, dtype=jnp.float32, param_dtype=jnp.float32, name="head")(x)
    return x.astype(jnp.float32)


class PreActBlock(nn.Module):
    """BN-act-conv3x3(stride)-BN-act-conv3x3, plus the input or its projection.

    When the output shape differs from the input's, the shortcut is a 1x1 convolution (with
    the block's stride) of the pre-activated input, as in the reference implementations.

    Attributes:
      features: output channels.
      strides: stride of the first convolution and of the shortcut.
      dtype: compute dtype.
      activation: a name of `ACTIVATIONS`.
      padding: a name of `PADDINGS`.
    """

    features: int
    strides: int = 1
    dtype: DTypeLike = jnp.float32
    activation: str = "relu"
    padding: str = "symmetric"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The block's output for input `x` [B, H, W, C]."""
        act = ACTIVATIONS[self.activation]
        activated = act(normalization.batch_norm(train, self.dtype, name="bn1")(x))
        if x.shape[-1] == self.features and self.strides == 1:
            shortcut = x
        else:
            shortcut = conv(self.features, 1, self.strides, self.dtype, "shortcut", self.padding)(
                activated
            )
        y = conv(self.features, 3, self.strides, self.dtype, "conv1", self.padding)(activated)
        y = act(normalization.batch_norm(train, self.dtype, name="bn2")(y))
        y = conv(self.features, 3, 1, self.dtype, "conv2", self.padding)(y)
        return y + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18 for CIFAR-sized images (32x32; 28x28 works too).

    Attributes:
      num_classes: number of logits.
      final_norm: BN-ReLU before pooling (He et al.; Rice et al.). False drops it, as
        kuangliu/pytorch-cifar does.
      mean: per-channel pixel mean (or a single value for all channels) used to normalise the
        [0, 1] input. Defaults to CIFAR-10's; set mean and std for other data (e.g. gray).
      std: per-channel pixel standard deviation, likewise.
      dtype: compute dtype; parameters stay float32 and logits are float32.
      remat: rematerialise each block (`nn.remat`, see `remat_block`). Same parameters and
        outputs.
    """

    num_classes: int
    final_norm: bool = True
    mean: Sequence[float] = normalization.CIFAR10_MEAN
    std: Sequence[float] = normalization.CIFAR10_STD
    dtype: DTypeLike = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits [B, num_classes] (float32) for images `x` [B, H, W, C] in [0, 1]."""
        x = normalization.normalize(x, self.mean, self.std, self.dtype)
        x = conv(64, 3, 1, self.dtype, "stem")(x)
        x = residual_stages(
            x, PreActBlock, (2, 2, 2, 2), train=train, dtype=self.dtype, remat=self.remat
        )
        if self.final_norm:
            x = nn.relu(normalization.batch_norm(train, self.dtype, name="bn")(x))
        return pooled_head(x, self.num_classes)
