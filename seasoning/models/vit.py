"""Vision Transformer (Dosovitskiy et al., 2021), as in google-research/vision_transformer.

Non-overlapping patches embedded by a strided convolution, a learned class token, learned
position embeddings, pre-LayerNorm encoder blocks (multi-head self-attention, then an MLP of
width `mlp_ratio * hidden_size` with GELU), a final LayerNorm and a linear head on the class
token. ViT-B/16 at 224x224 with 1000 classes has 86,567,656 parameters. No dropout.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from seasoning import errors
from seasoning.models import conv, normalization

# The (hidden_size, depth, num_heads) of the named sizes.
SIZES = {"ti": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12)}


ATTENTIONS = ("einsum", "fused")


def fused_attention(query, key, value, bias=None, mask=None, **unused):
    """Flax's `attention_fn` through `jax.nn.dot_product_attention`: on GPUs cuDNN's fused
    (flash) attention where it applies, XLA's elsewhere. No dropout (the ViT has none)."""
    del unused  # dropout settings, dtype, precision, module: Flax's, for its own function
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask)


class EncoderBlock(nn.Module):
    """x + MHSA(LN(x)), then x + MLP(LN(x)).

    Attributes:
      num_heads: attention heads.
      mlp_dim: hidden width of the MLP.
      dtype: compute dtype.
      gelu_approximate: GELU's tanh approximation (Flax's default, big_vision's) or the exact
        erf form (PyTorch's `nn.GELU`, timm's).
      attention: "einsum" (Flax's attention: two einsums and a softmax) or "fused"
        (`fused_attention`).
    """

    num_heads: int
    mlp_dim: int
    dtype: DTypeLike = jnp.float32
    gelu_approximate: bool = True
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """The block's output for tokens `x` [B, N, D]."""
        dense_init = nn.initializers.xavier_uniform()
        y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            kernel_init=dense_init,
            deterministic=True,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            attention_fn=fused_attention if self.attention == "fused" else nn.dot_product_attention,
            name="attention",
        )(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln2")(x)
        y = nn.Dense(
            self.mlp_dim,
            kernel_init=dense_init,
            bias_init=nn.initializers.normal(1e-6),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="mlp1",
        )(y)
        y = nn.gelu(y, approximate=self.gelu_approximate)
        y = nn.Dense(
            x.shape[-1],
            kernel_init=dense_init,
            bias_init=nn.initializers.normal(1e-6),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="mlp2",
        )(y)
        return x + y


class VisionTransformer(nn.Module):
    """ViT with a class token; the registry's names set the size (ti16, s16, b16).

    Attributes:
      num_classes: number of logits.
      image_size: input height and width; the position embeddings are learned for
        (image_size / patch_size)**2 patches, so inputs must have this size.
      patch_size: side of the square patches; must divide image_size.
      hidden_size: token width D.
      depth: number of encoder blocks.
      num_heads: attention heads; must divide hidden_size.
      mlp_ratio: MLP hidden width as a multiple of hidden_size.
      head_zero_init: start the head at zero (big_vision's choice: every logit is 0 at
        initialisation, so input gradients vanish until the first update). Off by default.
      mean: per-channel pixel mean (or a single value for all channels) used to normalise the
        [0, 1] input. Defaults to 0.5, which maps pixels to [-1, 1] (the ViT convention).
      std: per-channel pixel standard deviation, likewise.
      dtype: compute dtype; parameters stay float32 and logits are float32.
      gelu_approximate: the MLPs' GELU in its tanh approximation (as google-research's and
        big_vision's ViTs compute it); False for the exact erf form (timm's ViTs).
      remat: rematerialise each encoder block (`nn.remat`): its activations are recomputed
        in the backward pass instead of stored, so only the blocks' inputs stay in memory,
        for about one more forward pass of compute. Same parameters and outputs.
      attention: "einsum" (Flax's) or "fused" (`jax.nn.dot_product_attention`: cuDNN's fused
        attention on GPUs). Same parameters; outputs equal to float32 rounding.
    """

    num_classes: int
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    head_zero_init: bool = False
    mean: Sequence[float] = normalization.HALF
    std: Sequence[float] = normalization.HALF
    dtype: DTypeLike = jnp.float32
    gelu_approximate: bool = True
    remat: bool = False
    attention: str = "einsum"

    def check_shape(self, image_shape: Sequence[int] | None = None) -> None:
        """Raises ValueError if the sizes are inconsistent, or if [H, W, C] does not fit them."""
        if self.image_size % self.patch_size != 0:
            raise errors.UserError(
                f"ViT patch_size={self.patch_size} must divide image_size={self.image_size}."
            )
        if self.hidden_size % self.num_heads != 0:
            raise errors.UserError(
                f"ViT num_heads={self.num_heads} must divide hidden_size={self.hidden_size}."
            )
        if image_shape is not None and tuple(image_shape[:2]) != (self.image_size,) * 2:
            raise errors.UserError(
                f"ViT built for {self.image_size}x{self.image_size} images got "
                f"{image_shape[0]}x{image_shape[1]}; pass image_size={image_shape[0]} to "
                "get_model (square images only)."
            )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits [B, num_classes] (float32) for images `x` [B, H, W, C] in [0, 1].

        `train` changes nothing (no BatchNorm, no dropout); it is accepted for a uniform API.
        """
        del train
        self.check_shape(x.shape[1:])
        x = normalization.normalize(x, self.mean, self.std, self.dtype)
        x = nn.Conv(
            self.hidden_size,
            (self.patch_size, self.patch_size),
            strides=self.patch_size,
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="embedding",
            conv_general_dilated=conv.conv_general_dilated,
        )(x)
        batch, height, width, hidden = x.shape
        x = x.reshape(batch, height * width, hidden)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, hidden), jnp.float32)
        x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), x], axis=1)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], hidden), jnp.float32
        )
        x = x + pos.astype(self.dtype)
        block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
        for i in range(self.depth):
            x = block(
                self.num_heads,
                self.mlp_ratio * hidden,
                dtype=self.dtype,
                gelu_approximate=self.gelu_approximate,
                attention=self.attention,
                name=f"block{i + 1}",
            )(x)
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="encoder_norm")(x)
        head_init = nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
        x = nn.Dense(
            self.num_classes,
            kernel_init=head_init,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            name="head",
        )(x[:, 0])
        return x.astype(jnp.float32)
