"""Where each variable of our models lies in a published checkpoint, and how it is stored.

A layout maps every leaf of a model's variables (`params/group1_block1/conv1/kernel`) to a
`Rule`: the checkpoint's name for it (or alternatives, for formats whose names changed over
versions) and the `Transform` from the stored array to ours (PyTorch keeps convolution
kernels as [O, I, kh, kw] and dense weights as [out, in]; we keep [kh, kw, I, O] and [in, out]).

The layouts follow the published model definitions:

- "wrn": RobustBench's `WideResNet` (TRADES'): `conv1`, `block{g}.layer.{i}.{bn1,conv1,bn2,
  conv2,convShortcut}`, `bn1`, `fc`; an unused `sub_block1` is ignored.
- "dm-wrn": DeepMind's WideResNet: in PyTorch as RobustBench's `DMWideResNet` (`init_conv`,
  `layer.{g}.block.{i}.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}`, `batchnorm`,
  `logits`, with `mean`/`std` buffers), in Haiku as deepmind-research's `WideResNet`
  (`wide_res_net/~/resnet_lay_{g}_block_{i}/~/...`, BatchNorm statistics in `mean_ema` /
  `var_ema`).
- "resnet-18": the CIFAR ResNet (kuangliu/pytorch-cifar, RobustBench): `conv1`, `bn1`,
  `layer{s}.{i}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}`, `linear`.
- "preact-resnet-18": Rice et al.'s and kuangliu's: `conv1`, `layer{s}.{i}.{bn1,conv1,bn2,
  conv2,shortcut.0}`, `bn` (when present: `final_norm`), `linear`.
- "resnet-50": torchvision's: `conv1`, `bn1`, `layer{s}.{i}.{conv1..3,bn1..3,downsample.0,
  downsample.1}`, `fc`.
- "vit": timm's in PyTorch (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.{norm1,
  attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`) and big_vision's or
  vision_transformer's in .npz (`embedding`, `cls`, `pos_embedding`,
  `Transformer/encoderblock_{i}/...`, `Transformer/encoder_norm`, `head`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from seasoning import errors, trees
from seasoning.models import normalization

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
    """How a stored array becomes ours.

    Attributes:
      source_shapes: the stored shapes that fit our shape (first: the usual one).
      apply: (stored array, our shape) -> our array.
    """

    source_shapes: Callable[[Shape], tuple[Shape, ...]]
    apply: Callable[[np.ndarray, Shape], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One variable of ours: the checkpoint's names for it (alternatives) and the transform."""

    keys: tuple[str, ...]
    transform: Transform


SAME = Transform(lambda s: (s,), lambda a, s: a)
# PyTorch convolution [O, I, kh, kw] -> [kh, kw, I, O].
CONV = Transform(lambda s: ((s[3], s[2], s[0], s[1]),), lambda a, s: a.transpose(2, 3, 1, 0))
# PyTorch linear weight [out, in] -> [in, out].
DENSE = Transform(lambda s: ((s[1], s[0]),), lambda a, s: a.T)
# Haiku's BatchNorm keeps [1, 1, 1, C] (broadcastable) arrays; ours are [C].
HAIKU_CHANNELS = Transform(lambda s: ((1, 1, 1, *s), s), lambda a, s: a.reshape(s))


def _qkv(index: int, is_bias: bool) -> Transform:
    """timm's fused `attn.qkv` ([3D, D] weight, [3D] bias) -> query / key / value of Flax's
    attention ([D, heads, head_dim] kernel, [heads, head_dim] bias)."""

    def shapes(s: Shape) -> tuple[Shape, ...]:
        width = math.prod(s) if is_bias else s[0]
        return ((3 * width,),) if is_bias else ((3 * width, width),)

    def apply(a: np.ndarray, s: Shape) -> np.ndarray:
        width = a.shape[0] // 3
        part = a[index * width : (index + 1) * width]
        return part.reshape(s) if is_bias else part.T.reshape(s)

    return Transform(shapes, apply)


# timm's `attn.proj` weight [D, D] -> Flax's attention output kernel [heads, head_dim, D].
ATTENTION_OUT = Transform(lambda s: ((s[2], s[0] * s[1]),), lambda a, s: a.T.reshape(s))
# big_vision's position embeddings have no row for the class token (which it adds after them);
# ours do: a zero row in front computes the same.
POSITIONS_WITHOUT_CLS = Transform(
    lambda s: (s, (s[0], s[1] - 1, s[2])),
    lambda a, s: a if a.shape == s else np.concatenate([np.zeros_like(a[:, :1]), a], axis=1),
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """One family of published checkpoints in one format.

    Attributes:
      module: our module path (e.g. ("group1_block1", "conv1")) -> the checkpoint's module
        name, or alternatives.
      leaf: (our collection, module kind, our leaf name) -> (the checkpoint's leaf name,
        transform); module kinds are "conv", "dense", "batch_norm", "layer_norm", "other".
      separator: joins module and leaf names ("." in PyTorch, "/" otherwise).
      ignored: a regex of checkpoint names that belong to no variable of ours (BatchNorm's
        step counter, an unused branch).
      normalization: the input statistics a checkpoint of this family and format expects when
        it holds none (`None`: it always holds them).
      special: our leaf path -> rule, for leaves outside the module/leaf scheme.
    """

    module: Callable[[tuple[str, ...]], str | tuple[str, ...]]
    leaf: Callable[[str, str, str], tuple[str, Transform]]
    separator: str
    ignored: str = r"$^"
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    special: Callable[[str], Rule | None] = lambda path: None


def _torch_leaf(collection: str, kind: str, leaf: str) -> tuple[str, Transform]:
    if collection == "batch_stats":
        return {"mean": "running_mean", "var": "running_var"}[leaf], SAME
    if leaf == "kernel":
        return "weight", CONV if kind == "conv" else DENSE
    return {"scale": "weight", "bias": "bias"}[leaf], SAME


def _haiku_leaf(collection: str, kind: str, leaf: str) -> tuple[str, Transform]:
    if collection == "batch_stats":
        return f"~/{leaf}_ema/average", HAIKU_CHANNELS
    if kind == "batch_norm":
        return {"scale": "scale", "bias": "offset"}[leaf], HAIKU_CHANNELS
    return {"kernel": "w", "bias": "b"}[leaf], SAME


def _flax_leaf(collection: str, kind: str, leaf: str) -> tuple[str, Transform]:
    del collection, kind
    return leaf, SAME


def _block(part: str) -> tuple[int, int]:
    """(stage, block), both from 1, of our "group2_block3" / "stage2_block3" / "block3"."""
    numbers = re.findall(r"\d+", part)
    return (int(numbers[0]), int(numbers[1])) if len(numbers) == 2 else (0, int(numbers[0]))


def _renamer(top: Mapping[str, str], block: Callable[[int, int], str], inner: Mapping[str, str]):
    """A module-name map: `top` for our top-level modules, `block(stage, index)` (indices from
    0) plus `inner` for the modules inside our residual blocks."""

    def module(parts: tuple[str, ...]) -> str:
        if len(parts) == 1:
            return top[parts[0]]
        stage, index = _block(parts[0])
        return f"{block(stage - 1, index - 1)}{inner[parts[1]]}"

    return module


_BLOCK_INNER = {name: name for name in ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3")}
# DeepMind's WRN module names, the same in its Haiku and PyTorch releases.
_DM_TOP = {"stem": "init_conv", "bn": "batchnorm", "head": "logits"}
_DM_INNER = {
    "bn1": "batchnorm_0",
    "conv1": "conv_0",
    "bn2": "batchnorm_1",
    "conv2": "conv_1",
    "shortcut": "shortcut",
}


def _torch(module: Callable, normalization_stats, extra_ignored: str = "") -> Layout:
    """A PyTorch state dict's layout: BatchNorm's `num_batches_tracked` counters (and what
    `extra_ignored` matches) belong to no variable of ours."""
    ignored = r".*\.num_batches_tracked" + (f"|{extra_ignored}" if extra_ignored else "")
    return Layout(
        module, _torch_leaf, ".", ignored=f"({ignored})$", normalization=normalization_stats
    )


LAYOUTS: dict[tuple[str, str], Layout] = {
    ("wrn", "torch"): _torch(
        _renamer(
            {"stem": "conv1", "bn": "bn1", "head": "fc"},
            lambda g, i: f"block{g + 1}.layer.{i}.",
            {**_BLOCK_INNER, "shortcut": "convShortcut"},
        ),
        ((0.0,), (1.0,)),
        extra_ignored=r"sub_block1\..*",
    ),
    ("dm-wrn", "torch"): _torch(
        _renamer(_DM_TOP, lambda g, i: f"layer.{g}.block.{i}.", _DM_INNER),
        (normalization.CIFAR10_MEAN, normalization.CIFAR10_STD),
    ),
    ("dm-wrn", "haiku"): Layout(
        _renamer(_DM_TOP, lambda g, i: f"resnet_lay_{g}_block_{i}/~/", _DM_INNER),
        _haiku_leaf,
        "/",
        ignored=r".*_ema/(hidden|counter)$",
        normalization=(normalization.CIFAR10_MEAN, normalization.CIFAR10_STD),
    ),
    ("resnet-18", "torch"): _torch(
        _renamer(
            {"stem_conv": "conv1", "stem_bn": "bn1", "head": "linear"},
            lambda s, i: f"layer{s + 1}.{i}.",
            {**_BLOCK_INNER, "shortcut_conv": "shortcut.0", "shortcut_bn": "shortcut.1"},
        ),
        ((0.0,), (1.0,)),
    ),
    ("preact-resnet-18", "torch"): _torch(
        _renamer(
            {"stem": "conv1", "bn": "bn", "head": "linear"},
            lambda s, i: f"layer{s + 1}.{i}.",
            {**_BLOCK_INNER, "shortcut": "shortcut.0"},
        ),
        ((0.0,), (1.0,)),
    ),
    # Madry et al.'s robustness library also keeps its attacker's copy of the model.
    ("resnet-50", "torch"): _torch(
        _renamer(
            {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"},
            lambda s, i: f"layer{s + 1}.{i}.",
            {**_BLOCK_INNER, "shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"},
        ),
        (normalization.IMAGENET_MEAN, normalization.IMAGENET_STD),
        extra_ignored=r"attacker\..*",
    ),
}


def _vit_torch_module(parts: tuple[str, ...]) -> str:
    top = {"embedding": "patch_embed.proj", "encoder_norm": "norm", "head": "head"}
    if len(parts) == 1:
        return top[parts[0]]
    _, index = _block(parts[0])
    inner = {"ln1": "norm1", "ln2": "norm2", "mlp1": "mlp.fc1", "mlp2": "mlp.fc2"}
    return f"blocks.{index - 1}.{inner[parts[1]]}"


def _vit_torch_special(path: str) -> Rule | None:
    if path == "params/cls":
        return Rule(("cls_token",), SAME)
    if path == "params/pos_embedding":
        return Rule(("pos_embed",), SAME)
    match = re.fullmatch(r"params/block(\d+)/attention/(\w+)/(kernel|bias)", path)
    if not match:
        return None
    block, part, leaf = int(match[1]) - 1, match[2], match[3]
    if part == "out":
        name = f"blocks.{block}.attn.proj.{'weight' if leaf == 'kernel' else 'bias'}"
        return Rule((name,), ATTENTION_OUT if leaf == "kernel" else SAME)
    index = ("query", "key", "value").index(part)
    name = f"blocks.{block}.attn.qkv.{'weight' if leaf == 'kernel' else 'bias'}"
    return Rule((name,), _qkv(index, is_bias=leaf == "bias"))


def _vit_npz_module(parts: tuple[str, ...]) -> tuple[str, ...]:
    if len(parts) == 1:
        return {
            "embedding": ("embedding",),
            "head": ("head",),
            "encoder_norm": ("Transformer/encoder_norm",),
        }[parts[0]]
    _, index = _block(parts[0])
    block = f"Transformer/encoderblock_{index - 1}/"
    # big_vision's names first, then google-research/vision_transformer's (older) ones.
    inner = {
        "ln1": ("LayerNorm_0",),
        "ln2": ("LayerNorm_1", "LayerNorm_2"),
        "mlp1": ("MlpBlock_0/Dense_0", "MlpBlock_3/Dense_0"),
        "mlp2": ("MlpBlock_0/Dense_1", "MlpBlock_3/Dense_1"),
        "attention": ("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1"),
    }[parts[1]]
    suffix = "/" + "/".join(parts[2:]) if len(parts) > 2 else ""
    return tuple(f"{block}{name}{suffix}" for name in inner)


def _vit_npz_special(path: str) -> Rule | None:
    if path == "params/cls":
        return Rule(("cls",), SAME)
    if path == "params/pos_embedding":
        return Rule(
            ("pos_embedding", "Transformer/posembed_input/pos_embedding"), POSITIONS_WITHOUT_CLS
        )
    return None


LAYOUTS[("vit", "torch")] = Layout(
    _vit_torch_module,
    _torch_leaf,
    ".",
    normalization=(normalization.HALF, normalization.HALF),
    special=_vit_torch_special,
)
LAYOUTS[("vit", "npz")] = Layout(
    _vit_npz_module,
    _flax_leaf,
    "/",
    normalization=(normalization.HALF, normalization.HALF),
    special=_vit_npz_special,
)


def family(model_name: str) -> str:
    """The layout family of one of our model names ("wrn-28-10" -> "wrn").

    Raises:
      UserError: a model no published checkpoint format here fits.
    """
    if model_name.startswith("dm-wrn-"):
        return "dm-wrn"
    if model_name.startswith("wrn-"):
        return "wrn"
    if model_name.startswith("vit-"):
        return "vit"
    if model_name == "resnet-34":
        return "resnet-18"
    if (model_name, "torch") in {(f, fmt) for f, fmt in LAYOUTS}:
        return model_name
    raise errors.UserError(
        f"--model={model_name!r} has no import layout; importable: {importable_models()}."
    )


def importable_models() -> str:
    """The model names import accepts, by format, for messages and docs/importing.md."""
    by_format: dict[str, list[str]] = {}
    names = {
        "wrn": "wrn-D-W",
        "dm-wrn": "dm-wrn-D-W",
        "vit": "vit-ti16/s16/b16",
        "resnet-18": "resnet-18/34",
    }
    for fam, fmt in LAYOUTS:
        by_format.setdefault(fmt, []).append(names.get(fam, fam))
    return "; ".join(f"{fmt}: {', '.join(fams)}" for fmt, fams in by_format.items())


def layout(model_name: str, fmt: str) -> Layout:
    """The layout of `model_name`'s checkpoints in format `fmt`.

    Raises:
      UserError: that model is not published in that format here.
    """
    fam = family(model_name)
    if (fam, fmt) not in LAYOUTS:
        formats = [f for m, f in LAYOUTS if m == fam]
        raise errors.UserError(
            f"--from={fmt} has no layout for --model={model_name!r}; its checkpoints are read "
            f"from: {', '.join(formats)}."
        )
    return LAYOUTS[(fam, fmt)]


def rules(lay: Layout, variables: Any) -> dict[str, Rule]:
    """Every leaf of `variables` (our model's, arrays or shapes) -> its rule, in tree order."""
    leaves = {trees.path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(variables)}
    kinds = _module_kinds(leaves)
    out = {}
    for path in leaves:
        special = lay.special(path)
        if special is not None:
            out[path] = special
            continue
        collection, *parts, leaf = path.split("/")
        modules = lay.module(tuple(parts))
        modules = (modules,) if isinstance(modules, str) else modules
        name, transform = lay.leaf(collection, kinds[tuple(parts)], leaf)
        out[path] = Rule(tuple(f"{m}{lay.separator}{name}" for m in modules), transform)
    return out


def _module_kinds(leaves: Mapping[str, Any]) -> dict[tuple[str, ...], str]:
    kinds: dict[tuple[str, ...], str] = {}
    has_stats = {tuple(p.split("/")[1:-1]) for p in leaves if p.startswith("batch_stats/")}
    for path, leaf in leaves.items():
        collection, *parts, name = path.split("/")
        module = tuple(parts)
        if collection != "params" or module in kinds and kinds[module] != "other":
            continue
        if name == "kernel":
            kinds[module] = "conv" if len(leaf.shape) == 4 else "dense"
        elif name == "scale":
            kinds[module] = "batch_norm" if module in has_stats else "layer_norm"
        else:
            kinds.setdefault(module, "other")
    return kinds
