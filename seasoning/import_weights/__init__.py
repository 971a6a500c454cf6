"""Published robust models as runs: PyTorch, big_vision / timm and Haiku checkpoints.

    run_dir = import_weights.import_run("torch", "Carmon2019Unlabeled.pt", "wrn-28-10",
                                        "runs/rb_linf", dataset="cifar10")

writes a run directory (config.json, an orbax checkpoint) that `init_from`, `seasoning.evaluate`,
`seasoning.soup` and `seasoning.shift` read like any trained run (`runs.load`). Nothing is
downloaded: the caller passes a local file. Every array of the file must find its place in the
model and every variable of the model must be in the file, with the right shape; otherwise the
error names the first offending key and what was expected, and nothing is written.

The source's input normalisation becomes the model's `mean` / `std`: the statistics the file
holds (`mean`/`std`, `mu`/`sigma` or a normaliser's `new_mean`/`new_std` buffers), else the
ones given, else the usual ones of that family of checkpoints (`layouts.Layout.normalization`:
none for RobustBench's CIFAR models, which take [0, 1] pixels; ImageNet's for torchvision's
ResNet-50; CIFAR-10's for DeepMind's WRNs; 0.5 for ViTs). config.json records which.

Formats and model names: `readers.FORMATS`, `layouts.importable_models()`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from seasoning import checkpoints, config_lib, data, errors, models, train_config
from seasoning import lease as lease_lib
from seasoning import workdir as workdir_lib
from seasoning.import_weights import layouts, readers
from seasoning.models import normalization

__all__ = [
    "FORMATS",
    "Imported",
    "convert",
    "import_run",
    "model_prefix",
    "read_normalization",
]

FORMATS = readers.FORMATS

# The dataset of a checkpoint whose --dataset is not given, by its class count.
DEFAULT_DATASETS = {10: "cifar10", 100: "cifar100", 1000: "imagenet2012"}
# Stored input statistics: (mean name, std name), the last part of a checkpoint key.
_STAT_NAMES = (("mean", "std"), ("mu", "sigma"), ("new_mean", "new_std"))
# Our first convolution, by family (its kernel gives the input channels).
_STEMS = ("params/stem/kernel", "params/stem_conv/kernel", "params/embedding/kernel")


@dataclasses.dataclass(frozen=True)
class Imported:
    """A converted checkpoint.

    Attributes:
      model: the model config (`name`, `num_classes`, `mean`, `std` and what the checkpoint
        fixes, e.g. a ViT's `image_size`), as config.json holds it.
      variables: {'params'} plus {'batch_stats'} for BatchNorm models, numpy arrays.
      image_shape: the (H, W, C) the model needs, or () when any size works (convnets).
      normalization: where mean and std came from ("checkpoint", "flags", "default").
    """

    model: dict[str, Any]
    variables: dict[str, Any]
    image_shape: tuple[int, ...]
    normalization: str


def import_run(
    fmt: str,
    src: str,
    model_name: str,
    workdir: str,
    *,
    dataset: str = "",
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
) -> str:
    """Converts checkpoint `src` for model `model_name` and writes it as a run in `workdir`.

    Args:
      fmt: one of `FORMATS`.
      src: the local checkpoint file.
      model_name: one of our model names (`layouts.importable_models()`).
      workdir: the run directory to write; an earlier import of the same file there is kept.
      dataset: the run's dataset (a registry name); default by class count (10: cifar10,
        100: cifar100, 1000: imagenet2012).
      mean, std: the input statistics the source model expects (both or neither); they must
        agree with statistics stored in the file.

    Returns:
      `workdir`.

    Raises:
      MissingInputError: no file at `src`.
      UserError: the file does not fit the model (names the first offending key), a bad
        format, name, dataset or statistic; or `workdir` holds another run.
      BusyError: another live job holds `workdir`.
    """
    tensors = readers.read(fmt, src)
    imported = convert(fmt, tensors, model_name, src=src, mean=mean, std=std)
    num_classes = imported.model["num_classes"]
    dataset = dataset or DEFAULT_DATASETS.get(num_classes, "")
    if not dataset:
        raise errors.UserError(
            f"{src}: a {num_classes}-class model; pass --dataset=NAME (one of "
            f"{', '.join(data.DATASET_NAMES)})."
        )
    config = run_config(
        imported, dataset, fmt=fmt, src=os.path.abspath(src), digest=readers.sha256(src)
    )
    config_json = config_lib.as_json(config)
    meta = {
        "model": config_json["model"],
        "image_shape": list(imported.image_shape),
        "num_classes": num_classes,
    }
    with lease_lib.hold(lease_lib.of_workdir(workdir)):
        workdir_lib.claim(
            workdir, config_json, config_lib.as_json(train_config.base_train_config())
        )
        ckpt = checkpoints.Checkpointer(workdir, keep=1, use_async=False)
        if ckpt.latest_step() is not None:
            logging.info(
                "%s already holds this import (step %d); kept.", workdir, ckpt.latest_step()
            )
        else:
            ckpt.save(0, {"step": np.zeros((), np.int32), **imported.variables}, meta)
        ckpt.close()
    return workdir


def run_config(imported: Imported, dataset: str, *, fmt: str, src: str, digest: str) -> Any:
    """The training config of an imported run: the model, the dataset with its usual
    augmentation, and where the weights came from (`imported_from`).

    Raises:
      UserError: an unknown dataset, or one whose class count differs from the model's.
    """
    config_lib.check_choice("--dataset", dataset, data.DATASET_NAMES)
    c = train_config.base_train_config()
    c.dataset.name = dataset
    num_classes = imported.model["num_classes"]
    size = imported.image_shape[0] if imported.image_shape else 0
    if dataset in ("cifar10", "cifar100"):
        c.dataset.update(crop_padding=4, flip=True)
    elif dataset == "imagenet2012":
        c.dataset.update(eval_split="validation", image_size=size or 224, flip=True)
    elif dataset == "synthetic":
        c.dataset.update(num_classes=num_classes, image_size=size or 32)
    known = {name: n for n, name in DEFAULT_DATASETS.items()} | {"fashion_mnist": 10}
    if known.get(dataset, num_classes) != num_classes:
        raise errors.UserError(
            f"--dataset={dataset} has {known[dataset]} classes but the checkpoint's head has "
            f"{num_classes}."
        )
    c.model = imported.model
    c.imported_from.update(
        format=fmt, file=src, sha256=digest, normalization=imported.normalization
    )
    train_config.validate_train_config(c)
    return c


def convert(
    fmt: str,
    tensors: dict[str, np.ndarray],
    model_name: str,
    *,
    src: str = "checkpoint",
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
) -> Imported:
    """The variables of model `model_name` from a checkpoint's arrays (`readers.read`).

    Args:
      fmt: the arrays' format (one of `FORMATS`), which fixes their names and layout.
      tensors: name -> array, as read; stored input statistics are taken out of it.
      model_name: one of our model names.
      src: the file's name, for messages.
      mean, std: the source's input statistics (see `import_run`).

    Raises:
      UserError: naming the first key that is missing, unexpected or of the wrong shape.
    """
    lay = layouts.layout(model_name, fmt)
    tensors = dict(tensors)
    stored = read_normalization(tensors, src)
    prefix = model_prefix(tensors, model_name, fmt)
    if prefix:
        logging.info("%s: the model's arrays are under %r.", src, prefix)
        tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    stats, origin = _choose_normalization(stored, mean, std, lay, src)
    for name, value in tensors.items():
        if not np.all(np.isfinite(value)):
            raise errors.UserError(f"{src}: {name} holds NaN or infinite values.")
    kwargs = _inferred_kwargs(model_name, fmt, tensors, lay, src)
    module = models.get_model(model_name, mean=stats[0], std=stats[1], **kwargs)
    shape = _input_shape(model_name, kwargs, tensors, lay)
    expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *shape), jnp.float32))
    expected = flax.core.unfreeze(expected)
    variables = _fill(tensors, layouts.rules(lay, expected), expected, lay, model_name, src)
    model = {"name": model_name, **kwargs, "mean": list(stats[0]), "std": list(stats[1])}
    image_shape = shape if "image_size" in kwargs else ()
    return Imported(model, variables, tuple(image_shape), origin)


def read_normalization(
    tensors: dict[str, np.ndarray], src: str = "checkpoint"
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Takes the stored input statistics out of `tensors`: (mean, std), or None if it has none.

    Statistics are 1- or 3-element arrays whose names end in mean/std, mu/sigma or
    new_mean/new_std (a model's buffers, RobustBench's and Madry et al.'s normalisers). Every
    copy (a wrapper may hold two) must agree.

    Raises:
      UserError: two stored copies disagree, or only one half of a pair is stored.
    """
    found: list[tuple[str, tuple[float, ...], tuple[float, ...]]] = []
    for mean_name, std_name in _STAT_NAMES:
        for name in [n for n in tensors if re.fullmatch(rf"(.*\.)?{mean_name}", n)]:
            prefix = name[: -len(mean_name)]
            if tensors[name].size not in (1, 3):
                continue
            if f"{prefix}{std_name}" not in tensors:
                raise errors.UserError(f"{src}: holds {name} but no {prefix}{std_name}.")
            found.append(
                (
                    name,
                    tuple(float(v) for v in tensors.pop(name).ravel()),
                    tuple(float(v) for v in tensors.pop(f"{prefix}{std_name}").ravel()),
                )
            )
    for name, mean, std in found[1:]:
        if not (np.allclose(mean, found[0][1]) and np.allclose(std, found[0][2])):
            raise errors.UserError(
                f"{src}: its input statistics disagree: {found[0][0]} gives mean={found[0][1]}, "
                f"std={found[0][2]} but {name} gives mean={mean}, std={std}."
            )
    return (found[0][1], found[0][2]) if found else None


def model_prefix(names: Iterable[str], model_name: str, fmt: str) -> str:
    """The prefix under which a checkpoint keeps the model's arrays: "" for a bare state dict;
    e.g. "model." for a model wrapped with its normaliser (RobustBench's ImageNet models,
    Madry et al.'s robustness library), "wide_res_net/~/" for Haiku's root module.

    Found from the head's weight: the shortest prefix before its name that ends a module.
    """
    names = list(names)
    keys = _probe_rules(model_name, layouts.layout(model_name, fmt))["params/head/kernel"].keys
    found = [n[: -len(k)] for n in names for k in keys if n.endswith(k)]
    if "" in found or not found:
        return ""
    return min((p for p in found if p.endswith((".", "/"))), key=len, default="")


def _choose_normalization(stored, mean, std, lay, src):
    if bool(mean) != bool(std):
        raise errors.UserError("Pass --mean and --std together (or neither).")
    if mean:
        given = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        normalization.check_stats(*given)
        if stored is not None and not (
            len(stored[0]) == len(given[0])
            and np.allclose(stored[0], given[0])
            and np.allclose(stored[1], given[1])
        ):
            raise errors.UserError(
                f"{src} stores its input statistics mean={stored[0]}, std={stored[1]}, which "
                f"--mean={given[0]} --std={given[1]} contradict; drop the flags."
            )
        return given, "flags"
    if stored is not None:
        return stored, "checkpoint"
    if lay.normalization is None:
        raise errors.UserError(f"{src} holds no input statistics; pass --mean and --std.")
    logging.warning(
        "%s holds no input statistics: using mean=%s, std=%s, the usual ones of such "
        "checkpoints; pass --mean and --std if its model was trained otherwise.",
        src,
        lay.normalization[0],
        lay.normalization[1],
    )
    return lay.normalization, "default"


def _source(tensors, rule: layouts.Rule) -> str | None:
    return next((key for key in rule.keys if key in tensors), None)


def _probe_rules(model_name: str, lay: layouts.Layout, **kwargs) -> dict[str, layouts.Rule]:
    """The rules of a small stand-in of the model (the names do not depend on sizes)."""
    if layouts.family(model_name) == "vit":
        kwargs = {"image_size": 32, "patch_size": 16, **kwargs}
    return _cached_probe_rules(model_name, lay, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=32)
def _cached_probe_rules(model_name: str, lay: layouts.Layout, kwargs: tuple) -> dict:
    module = models.get_model(model_name, num_classes=1, **dict(kwargs))
    size = getattr(module, "image_size", 32)
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return layouts.rules(lay, flax.core.unfreeze(variables))


def _inferred_kwargs(model_name, fmt, tensors, lay, src) -> dict[str, Any]:
    """What the checkpoint fixes beyond the name: the class count, a ViT's image size and
    GELU, whether a PreActResNet has its final BatchNorm."""
    kwargs: dict[str, Any] = {}
    family = layouts.family(model_name)
    if family == "preact-resnet-18":
        probe = _probe_rules(model_name, lay)
        kwargs["final_norm"] = _source(tensors, probe["params/bn/scale"]) is not None
    if family == "vit":
        kwargs["gelu_approximate"] = fmt != "torch"  # timm's nn.GELU is the exact one
        probe = _probe_rules(model_name, lay)
        positions = _required(tensors, probe["params/pos_embedding"], src, model_name)
        rows = positions.shape[1]
        tokens = rows if fmt == "npz" and math.isqrt(rows) ** 2 == rows else rows - 1
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise errors.UserError(
                f"{src}: its position embeddings have {rows} rows, which is no square grid of "
                "patches (plus a class token)."
            )
        patch = models.get_model(model_name, num_classes=1).patch_size
        kwargs["image_size"] = side * patch
    probe = _probe_rules(model_name, lay, **kwargs)
    head = probe["params/head/kernel"]
    kernel = _required(tensors, head, src, model_name)
    kwargs["num_classes"] = int(head.transform.apply(kernel, kernel.shape).shape[-1])
    return kwargs


def _required(tensors, rule: layouts.Rule, src: str, model_name: str) -> np.ndarray:
    key = _source(tensors, rule)
    if key is None:
        raise errors.UserError(
            f"{src} has no {rule.keys[0]}, which model {model_name!r} needs: is --model right? "
            f"Its first keys: {', '.join(list(tensors)[:5])}."
        )
    return tensors[key]


def _input_shape(model_name, kwargs, tensors, lay) -> tuple[int, int, int]:
    """An input shape for the model: its image size (ViTs) or 32x32, and the channels of the
    checkpoint's first convolution."""
    rules = _probe_rules(model_name, lay, **{k: v for k, v in kwargs.items() if k != "num_classes"})
    channels = 3
    for path in _STEMS:
        key = _source(tensors, rules[path]) if path in rules else None
        if key is not None:
            stored = tensors[key]
            if stored.ndim == 4:
                channels = rules[path].transform.apply(stored, stored.shape).shape[2]
    size = kwargs.get("image_size", 32)
    return (size, size, channels)


def _fill(tensors, rules, expected, lay, model_name, src) -> dict[str, Any]:
    """Our variables from the checkpoint's arrays, after checking that each array has its
    place and shape and that nothing is missing (the first offender is named)."""
    shapes = {path: tuple(leaf.shape) for path, leaf in _flat(expected).items()}
    sources = {path: _source(tensors, rule) for path, rule in rules.items()}
    users: dict[str, list[str]] = {}
    for path, key in sources.items():
        if key is not None:
            users.setdefault(key, []).append(path)
    for key, value in tensors.items():  # in the file's order
        if key not in users:
            if re.fullmatch(lay.ignored, key):
                continue
            raise errors.UserError(
                f"{src}: {key} (shape {value.shape}) has no place in model {model_name!r}: is "
                f"--model right? The model's first keys: "
                f"{', '.join(r.keys[0] for r in list(rules.values())[:3])}."
            )
        for path in users[key]:
            fits = rules[path].transform.source_shapes(shapes[path])
            if value.shape not in fits:
                raise errors.UserError(
                    f"{src}: {key} has shape {value.shape}, but model {model_name!r} expects "
                    f"{fits[0]} (for its {path} of shape {shapes[path]}): is --model right?"
                )
    for path, rule in rules.items():
        if sources[path] is None:
            raise errors.UserError(
                f"{src} has no {' or '.join(rule.keys)} (shape "
                f"{rule.transform.source_shapes(shapes[path])[0]}), which model {model_name!r} "
                f"needs for its {path}."
            )
    flat = {}
    for path, rule in rules.items():
        value = rule.transform.apply(tensors[sources[path]], shapes[path])
        flat[tuple(path.split("/"))] = np.ascontiguousarray(value, np.float32)
    return flax.traverse_util.unflatten_dict(flat)


def _flat(tree: Any) -> dict[str, Any]:
    return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}
