"""PyTorch twins of the Flax models, for cross-checks against PyTorch reference code.

The reference implementation of APGD / AutoAttack (fra31/auto-attack, the `pyautoattack`
package) attacks a `torch.nn.Module` that maps NCHW pixels in [0, 1] to logits. `torch_model`
builds, for a model of `seasoning.models`, the PyTorch module that computes the same function
with the same weights: same layers in the same order, the same (possibly asymmetric) padding,
BatchNorm in eval mode with the running statistics and the same epsilon, and the input
normalisation inside the model. Only the layout differs (NCHW instead of NHWC), so

    twin = torch_twins.torch_model("cnn-small", variables, num_classes=10)
    twin(torch_twins.to_torch(x))  ~=  model.apply(variables, x, train=False)

up to float32 rounding. Supported names: "cnn-small" (either `norm`), "wrn-D-W" (any
WideResNet `get_model` accepts) and "preact-resnet-18".

PyTorch is imported only inside the functions here, so the module imports without it. Only
tests and benchmarks use it (`seasoning.testing`); it was `seasoning.reference`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from seasoning import models

if TYPE_CHECKING:
    import torch

SUPPORTED = ("cnn-small", "wrn-D-W", "preact-resnet-18")

# A Flax padding spec: an int, "SAME", "VALID", or one (low, high) pair per spatial dim.
Padding = int | str | Sequence[tuple[int, int]]


def conv_pads(
    padding: Padding, in_size: Sequence[int], kernel: int, stride: int
) -> tuple[tuple[int, int], ...]:
    """The (low, high) zero padding per spatial dim that a Flax `nn.Conv` applies.

    Args:
      padding: the Flax spec. An int p pads p on both sides; "SAME" pads a total of
        max((ceil(n / s) - 1) s + k - n, 0) per dim, the smaller half before (so stride 2 on
        an even size pads one more row after than before, unlike PyTorch's symmetric padding).
      in_size: the input's spatial sizes (H, W).
      kernel: square kernel size.
      stride: stride of both spatial dims.

    Returns:
      A tuple of (low, high) pairs, one per spatial dim.

    Raises:
      ValueError: for a spec that is none of the above.
    """
    if isinstance(padding, int):
        return tuple((padding, padding) for _ in in_size)
    if padding == "VALID":
        return tuple((0, 0) for _ in in_size)
    if padding == "SAME":
        pads = []
        for n in in_size:
            total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, Sequence) and not isinstance(padding, str):
        pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
        if len(pairs) == len(in_size):
            return pairs
    raise ValueError(
        f"Unsupported padding {padding!r}: expected an int, 'SAME', 'VALID' or one (low, high) "
        f"pair per spatial dim ({len(in_size)})."
    )


def to_torch(images: Any) -> torch.Tensor:
    """NHWC images (NumPy or JAX, [B, H, W, C]) as a contiguous float32 NCHW torch tensor.

    Raises:
      ValueError: if `images` is not 4-d.
    """
    import torch

    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4:
        raise ValueError(f"Expected NHWC images [B, H, W, C]; got shape {array.shape}.")
    return torch.from_numpy(np.array(array.transpose(0, 3, 1, 2), order="C"))


def _tensor(value: Any):
    import torch

    return torch.from_numpy(np.array(value, dtype=np.float32))


@functools.cache
def _classes() -> SimpleNamespace:
    """The torch.nn.Module classes of the twins (defined on first use: torch is optional)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Normalize(nn.Module):
        """(x - mean) / std with per-channel (or single) statistics, on NCHW input."""

        def __init__(self, mean: Sequence[float], std: Sequence[float]):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    class Conv(nn.Module):
        """A Flax `nn.Conv` (square kernel, equal strides) with its exact padding."""

        def __init__(self, params: Mapping[str, Any], stride: int, padding: Padding):
            super().__init__()
            kernel = _tensor(params["kernel"])  # [kh, kw, in, out]
            self.weight = nn.Parameter(kernel.permute(3, 2, 0, 1).contiguous())
            self.bias = nn.Parameter(_tensor(params["bias"])) if "bias" in params else None
            self.stride, self.padding, self.kernel = stride, padding, kernel.shape[0]

        def forward(self, x):
            (top, bottom), (left, right) = conv_pads(
                self.padding, x.shape[2:], self.kernel, self.stride
            )
            if top == bottom and left == right:
                return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
            x = F.pad(x, (left, right, top, bottom))
            return F.conv2d(x, self.weight, self.bias, self.stride)

    def batch_norm(params: Mapping[str, Any], stats: Mapping[str, Any]) -> nn.BatchNorm2d:
        """`normalization.batch_norm` in eval mode: running statistics, eps 1e-5."""
        bn = nn.BatchNorm2d(len(params["scale"]), eps=1e-5, momentum=0.1)
        with torch.no_grad():
            bn.weight.copy_(_tensor(params["scale"]))
            bn.bias.copy_(_tensor(params["bias"]))
            bn.running_mean.copy_(_tensor(stats["mean"]))
            bn.running_var.copy_(_tensor(stats["var"]))
        return bn

    def dense(params: Mapping[str, Any]) -> nn.Linear:
        kernel = _tensor(params["kernel"])  # [in, out]
        linear = nn.Linear(kernel.shape[0], kernel.shape[1])
        with torch.no_grad():
            linear.weight.copy_(kernel.T)
            linear.bias.copy_(_tensor(params["bias"]))
        return linear

    class SmallCNN(nn.Module):
        """`models.cnn.SmallCNN`: [conv-(BN)-ReLU] x len(features), flatten (HWC order), MLP."""

        def __init__(self, module: models.SmallCNN, variables: Mapping[str, Any]):
            super().__init__()
            params, stats = variables["params"], variables.get("batch_stats", {})
            self.normalize = Normalize(module.mean, module.std)
            self.convs = nn.ModuleList(
                Conv(params[f"Conv_{i}"], 1 if i == 0 else 2, 1)
                for i in range(len(module.features))
            )
            if module.norm == "batch":
                self.norms = nn.ModuleList(
                    batch_norm(params[f"BatchNorm_{i}"], stats[f"BatchNorm_{i}"])
                    for i in range(len(module.features))
                )
            else:
                self.norms = nn.ModuleList(nn.Identity() for _ in module.features)
            self.hidden = dense(params["Dense_0"])
            self.head = dense(params["Dense_1"])

        def forward(self, x):
            x = self.normalize(x)
            for conv, norm in zip(self.convs, self.norms, strict=True):
                x = F.relu(norm(conv(x)))
            x = x.permute(0, 2, 3, 1).flatten(1)  # Flax flattens NHWC
            return self.head(F.relu(self.hidden(x)))

    class PreActBlock(nn.Module):
        """`models.preact_resnet.PreActBlock`: BN-ReLU-conv-BN-ReLU-conv plus the shortcut."""

        def __init__(self, params: Mapping[str, Any], stats: Mapping[str, Any], stride: int):
            super().__init__()
            self.bn1 = batch_norm(params["bn1"], stats["bn1"])
            self.conv1 = Conv(params["conv1"], stride, 1)
            self.bn2 = batch_norm(params["bn2"], stats["bn2"])
            self.conv2 = Conv(params["conv2"], 1, 1)
            self.shortcut = Conv(params["shortcut"], stride, 0) if "shortcut" in params else None

        def forward(self, x):
            activated = F.relu(self.bn1(x))
            shortcut = x if self.shortcut is None else self.shortcut(activated)
            y = F.relu(self.bn2(self.conv1(activated)))
            return self.conv2(y) + shortcut

    class PreActNet(nn.Module):
        """The WideResNet and PreActResNet-18: stem, pre-activation blocks, (BN-ReLU), pool, head.

        Args:
          blocks: (Flax name, stride) of every block, in order.
          final_norm: the Flax name of the final BatchNorm, or None.
        """

        def __init__(
            self,
            module: nn.Module,
            variables: Mapping[str, Any],
            blocks: Sequence[tuple[str, int]],
            final_norm: str | None,
        ):
            super().__init__()
            params, stats = variables["params"], variables["batch_stats"]
            self.normalize = Normalize(module.mean, module.std)
            self.stem = Conv(params["stem"], 1, 1)
            self.blocks = nn.Sequential(
                *(PreActBlock(params[name], stats[name], stride) for name, stride in blocks)
            )
            self.bn = batch_norm(params[final_norm], stats[final_norm]) if final_norm else None
            self.head = dense(params["head"])

        def forward(self, x):
            x = self.blocks(self.stem(self.normalize(x)))
            if self.bn is not None:
                x = F.relu(self.bn(x))
            return self.head(x.mean(dim=(2, 3)))

    return SimpleNamespace(SmallCNN=SmallCNN, PreActNet=PreActNet)


def _wrn_blocks(module: models.WideResNet) -> list[tuple[str, int]]:
    n = (module.depth - 4) // 6
    return [
        (f"group{g + 1}_block{i + 1}", (1, 2, 2)[g] if i == 0 else 1)
        for g in range(3)
        for i in range(n)
    ]


def _preact18_blocks() -> list[tuple[str, int]]:
    return [
        (f"stage{s + 1}_block{i + 1}", 2 if s > 0 and i == 0 else 1)
        for s in range(4)
        for i in range(2)
    ]


def torch_model(
    name: str, variables: Mapping[str, Any], num_classes: int, **model_kwargs: Any
) -> torch.nn.Module:
    """The PyTorch twin of `models.get_model(name, num_classes, **model_kwargs)`.

    Args:
      name: "cnn-small", any "wrn-D-W" (e.g. "wrn-16-4") or "preact-resnet-18".
      variables: the Flax model's variables, {'params'} plus {'batch_stats'} for BatchNorm
        models; leaves NumPy or JAX arrays (copied, so later changes do not leak in).
      num_classes: number of logits (checked against the head's weights).
      **model_kwargs: as for `models.get_model` (e.g. `mean`, `std`, `features`, `norm`);
        the twin reads the architecture and statistics from the Flax module they build.

    Returns:
      A `torch.nn.Module` in eval mode mapping NCHW float32 pixels in [0, 1] to float32
      logits [B, num_classes] (use `to_torch` to convert NHWC images). It mirrors the Flax
      model's `train=False` only: BatchNorm uses the copied running statistics, and nothing
      here is meant for training the twin.

    Raises:
      ValueError: for a model with no twin, a bfloat16 compute dtype, or variables that do not
        fit the model.
    """
    module = models.get_model(name, num_classes=num_classes, **model_kwargs)
    if np.dtype(module.dtype) != np.float32:
        raise ValueError(f"Twins compute in float32; got dtype={module.dtype!r} for {name!r}.")
    if not isinstance(module, models.SmallCNN | models.WideResNet | models.PreActResNet18):
        raise ValueError(f"No PyTorch twin of model {name!r}; supported: {', '.join(SUPPORTED)}.")
    if isinstance(module, models.WideResNet) and (module.activation, module.padding) != (
        "relu",
        "symmetric",
    ):
        raise ValueError(
            f"No PyTorch twin of a WideResNet with activation={module.activation!r}, "
            f"padding={module.padding!r} ({name!r}); only ReLU with symmetric padding."
        )
    classes = _classes()
    try:
        if isinstance(module, models.SmallCNN):
            twin = classes.SmallCNN(module, variables)
        elif isinstance(module, models.WideResNet):
            twin = classes.PreActNet(module, variables, _wrn_blocks(module), "bn")
        else:
            final = "bn" if module.final_norm else None
            twin = classes.PreActNet(module, variables, _preact18_blocks(), final)
    except (KeyError, RuntimeError) as e:
        raise ValueError(
            f"The variables do not fit model {name!r} with {model_kwargs or 'default'} options: "
            f"{type(e).__name__}: {e}"
        ) from e
    n_twin = sum(p.numel() for p in twin.parameters())
    if n_twin != models.param_count(variables):
        raise ValueError(
            f"The variables do not fit model {name!r} with {model_kwargs or 'default'} options: "
            f"they hold {models.param_count(variables)} parameters, the model uses {n_twin}."
        )
    if twin.head.out_features != num_classes:
        raise ValueError(
            f"Variables have {twin.head.out_features} logits but num_classes={num_classes}."
        )
    return twin.eval()
