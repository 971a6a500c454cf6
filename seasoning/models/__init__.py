"""Image classifiers as Flax linen modules, behind the registry `get_model`.

Every model maps images [B, H, W, C], float32 pixels in [0, 1], to float32 logits
[B, num_classes] through `model.apply(variables, x, train=False)`. Input normalisation
(per-channel `mean`, `std`) is the model's first op, so attacks work in pixel space.
Variables are `{'params', 'batch_stats'}` for BatchNorm models (apply with
`train=True, mutable=['batch_stats']` to train) and `{'params'}` for the others.

    model = get_model("wrn-28-10", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    logits = model.apply(variables, images)

Names (`MODEL_NAMES`), with the keyword arguments each accepts besides `mean`, `std` and
`dtype` (compute dtype: float32, or bfloat16 with float32 parameters and logits):

- "cnn-small": `SmallCNN`, 459k parameters on 28x28x1, for 28x28 / 32x32; `features`,
  `hidden`, `norm` ("batch" or "none").
- "wrn-D-W", e.g. "wrn-28-10", "wrn-34-10", "wrn-16-4" (any D = 6n + 4, W >= 1):
  `WideResNet` for CIFAR-sized images (RobustBench's WideResNet); `remat`, `activation`
  ("relu", "swish"), `padding` ("symmetric", "same").
- "dm-wrn-D-W", e.g. "dm-wrn-28-10", "dm-wrn-70-16": DeepMind's robust WideResNet, a
  `WideResNet` with swish and SAME padding; `remat`.
- "resnet-18", "resnet-34": `CifarResNet` (post-activation basic blocks, no max-pool) for
  CIFAR-sized images; `remat`.
- "preact-resnet-18": `PreActResNet18` for CIFAR-sized images; `final_norm`, `remat`.
- "resnet-50": `ResNet` (v1.5, torchvision's) for ImageNet-sized images; `remat`.
- "vit-ti16", "vit-s16", "vit-b16": `VisionTransformer`; `image_size` (default 224),
  `patch_size`, `hidden_size`, `depth`, `num_heads`, `mlp_ratio`, `head_zero_init` override
  the named size; `gelu_approximate` (False: exact GELU, as timm's); `remat`; `attention`
  ("einsum", Flax's; "fused": `jax.nn.dot_product_attention`, cuDNN's fused attention on
  GPUs). A tiny ViT for tests:
  `get_model("vit-ti16", num_classes=10, image_size=32, patch_size=8, depth=2)`.

`remat=True` (a config's `model.remat`) rematerialises every residual block (`nn.remat`):
the backward pass recomputes a block's activations instead of keeping them, which trades about
one more forward pass for activation memory (in training and in the attacks' input
gradients alike). The variables are the same, name for name, so checkpoints of a run with and
without it interchange.

Default statistics: 0.5 / 0.5 for cnn-small and the ViTs (any channel count), CIFAR-10's
for the WideResNets, ResNet-18/34 and PreActResNet-18, ImageNet's for ResNet-50. A single
value serves every channel; three values need RGB input (set `mean=(m,), std=(s,)` for gray images).
"""

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seasoning import errors
from seasoning.models import normalization
from seasoning.models.cnn import SmallCNN
from seasoning.models.preact_resnet import ACTIVATIONS, PADDINGS, PreActResNet18
from seasoning.models.resnet import CifarResNet, ResNet
from seasoning.models.vit import ATTENTIONS, SIZES, VisionTransformer
from seasoning.models.wide_resnet import WideResNet, check_shape

__all__ = [
    "MODEL_NAMES",
    "check_name",
    "CifarResNet",
    "PreActResNet18",
    "ResNet",
    "SmallCNN",
    "VisionTransformer",
    "WideResNet",
    "from_config",
    "get_model",
    "param_count",
]

COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """How a name builds a module: its class and the attributes the name sets."""

    cls: type[nn.Module]
    preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Whether keyword arguments may override the preset (the ViT sizes) or not (a WRN's shape).
    preset_overridable: bool = False


def _vit(size: str, patch_size: int) -> _Entry:
    hidden_size, depth, num_heads = SIZES[size]
    preset = dict(hidden_size=hidden_size, depth=depth, num_heads=num_heads, patch_size=patch_size)
    return _Entry(VisionTransformer, preset, preset_overridable=True)


def _wrn(depth: int, widen_factor: int, deepmind: bool = False) -> _Entry:
    preset = dict(depth=depth, widen_factor=widen_factor)
    if deepmind:
        preset.update(activation="swish", padding="same")
    return _Entry(WideResNet, preset)


_REGISTRY: dict[str, _Entry] = {
    "cnn-small": _Entry(SmallCNN),
    "wrn-16-4": _wrn(16, 4),
    "wrn-28-10": _wrn(28, 10),
    "wrn-34-10": _wrn(34, 10),
    "wrn-34-20": _wrn(34, 20),
    "wrn-70-16": _wrn(70, 16),
    "dm-wrn-28-10": _wrn(28, 10, deepmind=True),
    "dm-wrn-70-16": _wrn(70, 16, deepmind=True),
    "resnet-18": _Entry(CifarResNet, dict(stage_sizes=(2, 2, 2, 2))),
    "resnet-34": _Entry(CifarResNet, dict(stage_sizes=(3, 4, 6, 3))),
    "preact-resnet-18": _Entry(PreActResNet18),
    "resnet-50": _Entry(ResNet, dict(stage_sizes=(3, 4, 6, 3))),
    "vit-ti16": _vit("ti", 16),
    "vit-s16": _vit("s", 16),
    "vit-b16": _vit("b", 16),
}
_WRN_PATTERN = re.compile(r"(dm-)?wrn-(\d+)-(\d+)")

# The registered names. get_model also accepts any "wrn-D-W" and "dm-wrn-D-W" with D = 6n + 4.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if match := _WRN_PATTERN.fullmatch(name):
        depth, widen_factor = int(match[2]), int(match[3])
        try:
            check_shape(depth, widen_factor)
        except ValueError as e:
            raise errors.UserError(f"Bad model name {name!r}: {e}") from None
        return _wrn(depth, widen_factor, deepmind=bool(match[1]))
    near = difflib.get_close_matches(name, MODEL_NAMES, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise errors.UserError(
        f"Unknown model name {name!r}.{hint} Valid names: {', '.join(MODEL_NAMES)}, "
        "or any 'wrn-D-W' or 'dm-wrn-D-W' with D = 6n + 4."
    )


def check_name(name: str) -> None:
    """Raises ValueError, naming the nearest valid names, unless `get_model` knows `name`."""
    _entry(name)


def _floats(key: str, value: Any) -> tuple[float, ...]:
    """`value` (a number, or a sequence such as a list read back from JSON) as a float tuple."""
    values = (value,) if isinstance(value, int | float) else value
    try:
        if isinstance(values, str):
            raise TypeError(values)
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise errors.UserError(
            f"Model {key}={value!r} must be a number or a sequence of numbers."
        ) from None


def _bool(key: str, value: Any) -> bool:
    """A switch given as a bool (not 0/1 or a string, which a config typo would give)."""
    if not isinstance(value, bool | np.bool_):
        raise errors.UserError(f"Model {key}={value!r} must be True or False.")
    return bool(value)


def _dtype(value: Any) -> Any:
    """A compute dtype from a dtype object or its name; only float32 and bfloat16."""
    try:
        name = jnp.dtype(value).name
    except TypeError:
        name = str(value)
    if name not in COMPUTE_DTYPES:
        raise errors.UserError(f"Model dtype={value!r} is not one of {COMPUTE_DTYPES}.")
    return jnp.dtype(name)


def _choice(choices: Sequence[str]) -> Callable[[str, Any], str]:
    def convert(key: str, value: Any) -> str:
        if value not in choices:
            raise errors.UserError(f"Model {key}={value!r} is not one of {tuple(choices)}.")
        return value

    return convert


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "mean": _floats,
    "std": _floats,
    "dtype": lambda _, value: _dtype(value),
    "features": lambda _, value: tuple(int(v) for v in value),
    "stage_sizes": lambda _, value: tuple(int(v) for v in value),
    "remat": _bool,
    "final_norm": _bool,
    "gelu_approximate": _bool,
    "activation": _choice(tuple(ACTIVATIONS)),
    "padding": _choice(PADDINGS),
    "attention": _choice(ATTENTIONS),
}


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The registered model `name` with `num_classes` logits.

    Args:
      name: one of `MODEL_NAMES`, or "wrn-D-W" for any WideResNet depth D = 6n + 4 and
        width W (see the module docstring for what each name builds).
      num_classes: number of logits (>= 1).
      **kwargs: attributes of the model's class: `mean`, `std` (a number or a sequence: one
        value for every channel, or one per channel), `dtype` (jnp.float32, jnp.bfloat16 or
        their names), and the per-model options in the module docstring. Sequences may be
        lists (as configs read back from JSON give them).

    Returns:
      An unbound Flax linen module; `init` / `apply` it with `x` [B, H, W, C] in [0, 1].

    Raises:
      ValueError: for an unknown name (naming it, the nearest valid name and all of them),
        an invalid WideResNet depth, an unknown or fixed keyword argument, or bad values.
    """
    entry = _entry(name)
    num_classes = errors.check_count("Model num_classes", num_classes, 1)
    fields = {f.name for f in dataclasses.fields(entry.cls)} - {"parent", "name", "num_classes"}
    allowed = fields if entry.preset_overridable else fields - set(entry.preset)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        fixed = [k for k in unknown if k in entry.preset]
        why = f" ({', '.join(fixed)} set by the name)" if fixed else ""
        raise errors.UserError(
            f"Model {name!r} got unknown keyword argument(s) {', '.join(unknown)}{why}; "
            f"it accepts: {', '.join(sorted(allowed))}."
        )
    attrs = {**entry.preset, **kwargs}
    for key, convert in _CONVERTERS.items():
        if key in attrs:
            attrs[key] = convert(key, attrs[key])
    if "mean" in attrs or "std" in attrs:
        defaults = {f.name: f.default for f in dataclasses.fields(entry.cls)}
        normalization.check_stats(
            attrs.get("mean", defaults["mean"]), attrs.get("std", defaults["std"])
        )
    model = entry.cls(num_classes=num_classes, **attrs)
    if isinstance(model, VisionTransformer):
        model.check_shape()
    return model


def param_count(variables_or_params: Any) -> int:
    """The number of parameters (array elements) in a pytree.

    Args:
      variables_or_params: model variables (a mapping with a 'params' collection, of which
        only 'params' counts, not BatchNorm statistics) or a params pytree. Leaves may be
        arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`).
    """
    tree = variables_or_params
    if isinstance(tree, Mapping) and "params" in tree:
        tree = tree["params"]
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def from_config(config: Any, num_classes: int, compute_dtype: str | None = None) -> nn.Module:
    """The module a run's config describes: section `model` plus `compute_dtype`.

    Args:
      config: a training config (ConfigDict, or the dict read back from config.json).
      num_classes: the dataset's class count; `model.num_classes`, when set, must agree.
      compute_dtype: "float32" or "bfloat16" instead of the config's (evaluation runs in
        float32 whatever the training used: attacks need the input gradient's precision).

    Raises:
      ValueError: for an unknown model or a class count that disagrees with the dataset.
    """
    kwargs = dict(config["model"])
    name = kwargs.pop("name")
    declared = kwargs.pop("num_classes", num_classes)
    if declared != num_classes:
        raise errors.UserError(
            f"Config model.num_classes={declared} but dataset {config['dataset']['name']!r} has "
            f"{num_classes} classes."
        )
    dtype = compute_dtype or config["compute_dtype"]
    if dtype not in COMPUTE_DTYPES:
        raise errors.UserError(f"compute_dtype={dtype!r} is not one of {COMPUTE_DTYPES}.")
    if dtype == "bfloat16":
        kwargs["dtype"] = jnp.bfloat16
    return get_model(name, num_classes=num_classes, **kwargs)
