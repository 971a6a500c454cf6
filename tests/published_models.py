"""The published models that `seasoning.import_weights` reads, written here from their
definitions (RobustBench, kuangliu/pytorch-cifar, Rice et al., torchvision, timm,
deepmind-research, big_vision), each in its own framework, with their parameter names.

The import tests build one with random weights, save it as its authors do, import it and
compare logits. Imported lazily by the tests that need each framework.
"""

from __future__ import annotations

import flax
import numpy as np


def torch_models():
    """The PyTorch definitions (a namespace of classes); imports torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class WideBasic(nn.Module):
        """RobustBench's WideResNet BasicBlock (TRADES)."""

        def __init__(self, in_planes, out_planes, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.relu1 = nn.ReLU()
            self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_planes)
            self.relu2 = nn.ReLU()
            self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
            self.equal_in_out = in_planes == out_planes
            self.convShortcut = (
                None
                if self.equal_in_out
                else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
            )

        def forward(self, x):
            if not self.equal_in_out:
                x = self.relu1(self.bn1(x))
                out = x
            else:
                out = self.relu1(self.bn1(x))
            out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
            return (x if self.equal_in_out else self.convShortcut(x)) + out

    class NetworkBlock(nn.Module):
        def __init__(self, n, in_planes, out_planes, stride):
            super().__init__()
            self.layer = nn.Sequential(
                *(
                    WideBasic(
                        in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1
                    )
                    for i in range(n)
                )
            )

        def forward(self, x):
            return self.layer(x)

    class WideResNet(nn.Module):
        """RobustBench's `WideResNet(depth, num_classes, widen_factor, sub_block1)`."""

        def __init__(self, depth=28, num_classes=10, widen_factor=10, sub_block1=False):
            super().__init__()
            c = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
            n = (depth - 4) // 6
            self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
            self.block1 = NetworkBlock(n, c[0], c[1], 1)
            if sub_block1:
                self.sub_block1 = NetworkBlock(n, c[0], c[1], 1)
            self.block2 = NetworkBlock(n, c[1], c[2], 2)
            self.block3 = NetworkBlock(n, c[2], c[3], 2)
            self.bn1 = nn.BatchNorm2d(c[3])
            self.relu = nn.ReLU()
            self.fc = nn.Linear(c[3], num_classes)

        def forward(self, x):
            out = self.block3(self.block2(self.block1(self.conv1(x))))
            out = self.relu(self.bn1(out))
            return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    class DMBlock(nn.Module):
        """RobustBench's `dm_wide_resnet._Block`: explicit SAME padding."""

        def __init__(self, in_planes, out_planes, stride, activation_fn):
            super().__init__()
            self.batchnorm_0 = nn.BatchNorm2d(in_planes)
            self.relu_0 = activation_fn()
            self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
            self.batchnorm_1 = nn.BatchNorm2d(out_planes)
            self.relu_1 = activation_fn()
            self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
            self.has_shortcut = in_planes != out_planes
            self.shortcut = (
                nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
                if self.has_shortcut
                else None
            )
            self._stride = stride

        def forward(self, x):
            if self.has_shortcut:
                x = self.relu_0(self.batchnorm_0(x))
                v = x
            else:
                v = self.relu_0(self.batchnorm_0(x))
            v = F.pad(v, (1, 1, 1, 1) if self._stride == 1 else (0, 1, 0, 1))
            out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
            return (self.shortcut(x) if self.has_shortcut else x) + out

    class DMBlockGroup(nn.Module):
        def __init__(self, n, in_planes, out_planes, stride, activation_fn):
            super().__init__()
            self.block = nn.Sequential(
                *(
                    DMBlock(
                        in_planes if i == 0 else out_planes,
                        out_planes,
                        stride if i == 0 else 1,
                        activation_fn,
                    )
                    for i in range(n)
                )
            )

        def forward(self, x):
            return self.block(x)

    class DMWideResNet(nn.Module):
        """RobustBench's `DMWideResNet` (DeepMind's PyTorch release), mean/std buffers."""

        def __init__(
            self,
            num_classes=10,
            depth=28,
            width=10,
            activation_fn=Swish,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2471, 0.2435, 0.2616),
        ):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(3, 1, 1))
            c = [16, 16 * width, 32 * width, 64 * width]
            n = (depth - 4) // 6
            self.init_conv = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
            self.layer = nn.Sequential(
                DMBlockGroup(n, c[0], c[1], 1, activation_fn),
                DMBlockGroup(n, c[1], c[2], 2, activation_fn),
                DMBlockGroup(n, c[2], c[3], 2, activation_fn),
            )
            self.batchnorm = nn.BatchNorm2d(c[3])
            self.relu = activation_fn()
            self.logits = nn.Linear(c[3], num_classes)

        def forward(self, x):
            out = self.layer(self.init_conv((x - self.mean) / self.std))
            out = self.relu(self.batchnorm(out))
            return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))

    class BasicBlock(nn.Module):
        """kuangliu/pytorch-cifar's (and RobustBench's) ResNet BasicBlock."""

        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class PreActBlock(nn.Module):
        """kuangliu's / Rice et al.'s PreActBlock (shortcut from the activated input)."""

        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_planes)
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

        def forward(self, x):
            out = F.relu(self.bn1(x))
            shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
            out = self.conv2(F.relu(self.bn2(self.conv1(out))))
            return out + shortcut

    class CifarResNet(nn.Module):
        """kuangliu's `ResNet(block, num_blocks)`; with PreActBlock, Rice et al.'s
        `PreActResNet` (final BN when `final_bn`)."""

        def __init__(self, block, num_blocks, num_classes=10, final_bn=False):
            super().__init__()
            self.in_planes = 64
            self.preact = block is PreActBlock
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            if not self.preact:
                self.bn1 = nn.BatchNorm2d(64)
            for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
                layers = []
                for stride in [1 if i == 0 else 2] + [1] * (n - 1):
                    layers.append(block(self.in_planes, planes, stride))
                    self.in_planes = planes
                setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            if final_bn:
                self.bn = nn.BatchNorm2d(512)
            self.linear = nn.Linear(512, num_classes)

        def forward(self, x):
            out = self.conv1(x)
            if not self.preact:
                out = F.relu(self.bn1(out))
            out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
            if hasattr(self, "bn"):
                out = F.relu(self.bn(out))
            return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    class Bottleneck(nn.Module):
        """torchvision's Bottleneck (v1.5: the stride on the 3x3)."""

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU()
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class ResNet50(nn.Module):
        """torchvision's `resnet50` layout: conv1, bn1, maxpool, layer1-4, fc."""

        def __init__(self, num_classes=1000, layers=(3, 4, 6, 3)):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
                stride = 1 if i == 0 else 2
                downsample = None
                if stride != 1 or self.inplanes != planes * 4:
                    downsample = nn.Sequential(
                        nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                        nn.BatchNorm2d(planes * 4),
                    )
                blocks = [Bottleneck(self.inplanes, planes, stride, downsample)]
                self.inplanes = planes * 4
                blocks += [Bottleneck(self.inplanes, planes) for _ in range(1, n)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(2048, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class Attention(nn.Module):
        def __init__(self, dim, num_heads):
            super().__init__()
            self.num_heads = num_heads
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1)) * (c // self.num_heads) ** -0.5
            x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
            return self.proj(x)

    class Mlp(nn.Module):
        def __init__(self, dim, hidden):
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, dim, num_heads, mlp_ratio=4):
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention(dim, num_heads)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, dim * mlp_ratio)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class PatchEmbed(nn.Module):
        def __init__(self, patch_size, dim):
            super().__init__()
            self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class VisionTransformer(nn.Module):
        """timm's `VisionTransformer` with a class token (global_pool="token")."""

        def __init__(
            self,
            img_size=224,
            patch_size=16,
            num_classes=1000,
            embed_dim=768,
            depth=12,
            num_heads=12,
        ):
            super().__init__()
            self.patch_embed = PatchEmbed(patch_size, embed_dim)
            num_patches = (img_size // patch_size) ** 2
            self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
            self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
            self.blocks = nn.Sequential(*(Block(embed_dim, num_heads) for _ in range(depth)))
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
            self.head = nn.Linear(embed_dim, num_classes)

        def forward(self, x):
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.norm(self.blocks(x + self.pos_embed))
            return self.head(x[:, 0])

    from types import SimpleNamespace

    return SimpleNamespace(
        WideResNet=WideResNet,
        DMWideResNet=DMWideResNet,
        BasicBlock=BasicBlock,
        PreActBlock=PreActBlock,
        CifarResNet=CifarResNet,
        ResNet50=ResNet50,
        VisionTransformer=VisionTransformer,
    )


def randomize_batch_norm(model, seed: int = 0) -> None:
    """Random running statistics and affine parameters, so eval mode is not the identity."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)


def haiku_wide_resnet(depth: int, width: int, num_classes: int = 10):
    """deepmind-research adversarial_robustness/jax `model_zoo.WideResNet` (swish), wrapped
    with CIFAR-10 normalisation as its eval.py does: a `hk.transform_with_state` of
    (x, is_training)."""
    import haiku as hk
    import jax
    import jax.numpy as jnp

    norm_args = {"create_offset": True, "create_scale": True, "decay_rate": 0.99}

    class Block(hk.Module):
        """`_WideResNetBlock`: submodules made in __init__, as DeepMind's are (their names
        then read `block/~/conv_0`)."""

        def __init__(self, filters, stride, projection, name):
            super().__init__(name=name)
            self.bns = [hk.BatchNorm(name=f"batchnorm_{i}", **norm_args) for i in range(2)]
            self.convs = [
                hk.Conv2D(
                    filters,
                    (3, 3),
                    stride=stride if i == 0 else 1,
                    padding="SAME",
                    with_bias=False,
                    name=f"conv_{i}",
                )
                for i in range(2)
            ]
            self.shortcut = (
                hk.Conv2D(filters, (1, 1), stride=stride, with_bias=False, name="shortcut")
                if projection
                else None
            )

        def __call__(self, x, is_training):
            orig = x
            for i, (bn, conv) in enumerate(zip(self.bns, self.convs, strict=True)):
                x = jax.nn.swish(bn(x, is_training=is_training))
                if self.shortcut is not None and i == 0:
                    orig = x
                x = conv(x)
            return x + (self.shortcut(orig) if self.shortcut is not None else orig)

    class WideResNet(hk.Module):
        def __init__(self):
            super().__init__(name="wide_res_net")
            self.conv = hk.Conv2D(16, (3, 3), stride=1, with_bias=False, name="init_conv")
            self.bn = hk.BatchNorm(name="batchnorm", **norm_args)
            self.linear = hk.Linear(num_classes, name="logits")
            n = (depth - 4) // 6
            self.blocks = [
                Block(
                    filters,
                    2 if layer != 0 and i == 0 else 1,
                    i == 0,
                    f"resnet_lay_{layer}_block_{i}",
                )
                for layer, filters in enumerate(width * f for f in (16, 32, 64))
                for i in range(n)
            ]

        def __call__(self, x, is_training):
            x = self.conv(x)
            for block in self.blocks:
                x = block(x, is_training)
            x = jax.nn.swish(self.bn(x, is_training))
            return self.linear(jnp.mean(x, axis=(1, 2)))

    mean = jnp.array((0.4914, 0.4822, 0.4465))
    std = jnp.array((0.2471, 0.2435, 0.2616))
    return hk.transform_with_state(
        lambda x, is_training: WideResNet()((x - mean) / std, is_training)
    )


def big_vision_vit(
    num_classes: int, image_size: int, patch_size: int, width: int, depth: int, num_heads: int
):
    """big_vision's `models/vit.py` ViT with pool_type="tok" (its module names), pixels
    mapped to [-1, 1] as its preprocessing does."""
    import flax.linen as nn
    import jax.numpy as jnp

    class MlpBlock(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(4 * width)(x)
            return nn.Dense(width)(nn.gelu(x))

    class Encoder1DBlock(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.LayerNorm()(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=num_heads)(y, y)
            return x + MlpBlock()(nn.LayerNorm()(x))

    class Encoder(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(depth):
                x = Encoder1DBlock(name=f"encoderblock_{i}")(x)
            return nn.LayerNorm(name="encoder_norm")(x)

    class ViT(nn.Module):
        @nn.compact
        def __call__(self, image):
            x = nn.Conv(
                width,
                (patch_size, patch_size),
                strides=patch_size,
                padding="VALID",
                name="embedding",
            )(image * 2 - 1)
            n, h, w, c = x.shape
            x = x.reshape(n, h * w, c)
            x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w, c))
            cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, c))
            x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
            x = Encoder(name="Transformer")(x)
            return nn.Dense(num_classes, name="head")(x[:, 0])

    return ViT()


def flatten(tree) -> dict[str, np.ndarray]:
    """A nested dict of arrays as {"a/b/c": array}, as big_vision's .npz files store it."""
    return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}
