"""Preprocessing as a list of named ops, the way big_vision's `pp` strings read.

A config lists its ops as one string, `"decode|inception_crop(224)|flip_lr"`: each element
is an op's name, with arguments in brackets when it takes any (Python literals only; nothing
in the string is executed). `parse(spec)` turns the string into ops, or raises a one-line
`UserError` naming the op that is unknown or badly called.

The ops run on the host, in the input pipeline's workers, on uint8 images: one batch at a
time, as a list of per-example images (encoded bytes or arrays of any size) or as one array
[n, H, W, C] once they share a shape. Batches are float32 in [0, 1] after the ops (the
threat models' box; normalisation is the model's), so there is no value-range op.

Random ops draw their numbers for the whole global batch from one generator per step
(`np.random.default_rng([seed, step])`), in the order the ops are listed, and each host
applies the draws of its own rows: an example is augmented the same way whatever the number
of hosts and workers.

Ops:
  decode: encoded JPEG/PNG bytes -> uint8 [H, W, C] (arrays pass through unchanged). JPEGs
    are decoded by simplejpeg (libjpeg-turbo), anything else by OpenCV.
  resize_small(size, method="area"): the shorter side to `size`, the aspect kept.
  central_crop(size): the central size x size window.
  inception_crop(size, area=(0.08, 1.0), aspect=(3/4, 4/3), method="bilinear"): a random
    window of `area` times the image's area and aspect ratio in `aspect` (log-uniform),
    resized to size x size; after 10 draws that do not fit, the central window of the
    largest aspect in range (the random-resized crop of Szegedy et al. 2015, as torchvision
    and big_vision draw it).
  flip_lr: a horizontal flip with probability 1/2.
  pad_crop(padding): zero padding by `padding` pixels, then a random window of the original
    size (the CIFAR recipe).

Resizing methods: "area" (OpenCV's area average: antialiased when shrinking; big_vision's
`resize_small` default), "bilinear" (OpenCV, no antialiasing, as `tf.image.resize`), and
"bicubic" (PIL's antialiased bicubic: the project's resize before this pipeline).
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from seasoning import errors

# OpenCV's own threads would compete with the input workers for the host's cores.
cv2.setNumThreads(1)

# A batch of images: one array [n, H, W, C] or a list of n per-example images.
Images = np.ndarray | list

RESIZE_METHODS = ("area", "bilinear", "bicubic")
_CV2_METHODS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR}
# Draws of a window before inception_crop falls back to the central one (torchvision's 10).
INCEPTION_ATTEMPTS = 10


class Op:
    """One named preprocessing op.

    Subclasses set `name`; a random op sets `random` and overrides `draw`, which returns its
    numbers for `n` examples as arrays with a leading axis n (the pipeline draws for the
    global batch and hands each host its rows); `apply` gets the images and those rows (None
    for a deterministic op).
    """

    name = ""
    random = False

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...] | None:
        del rng, n
        return None

    def apply(self, images: Images, draws: tuple[np.ndarray, ...] | None) -> Images:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        args = ", ".join(repr(getattr(self, f.name)) for f in fields)
        return f"{self.name}({args})" if args else self.name


def _per_example(fn: Callable[[np.ndarray], np.ndarray], images: Images) -> list:
    return [fn(np.asarray(image)) for image in images]


def stack(images: Images, spec: str = "") -> np.ndarray:
    """The batch as one uint8 array [n, H, W, C].

    Raises:
      UserError: images of different shapes (naming the ops that left them so).
    """
    if isinstance(images, np.ndarray):
        return images
    shapes = {np.shape(image) for image in images}
    if encoded(images):
        raise errors.UserError(
            f"Preprocessing {spec!r} leaves encoded images: start it with 'decode'."
        )
    if len(shapes) > 1:
        raise errors.UserError(
            f"Preprocessing {spec!r} leaves images of different shapes ({sorted(shapes)[:3]} "
            "...): end it with a crop to one size, e.g. central_crop(224)."
        )
    return np.stack(images) if images else np.zeros((0, 0, 0, 0), np.uint8)


def encoded(images: Images) -> bool:
    """Whether a batch holds encoded images (bytes) that `decode` has not decoded."""
    return not isinstance(images, np.ndarray) and any(
        isinstance(image, bytes | bytearray) for image in images
    )


def _check_decoded(name: str, images: Images) -> None:
    if encoded(images):
        raise errors.UserError(f"Op {name!r} got encoded images: list 'decode' before it.")


def decode_image(encoded: bytes) -> np.ndarray:
    """JPEG or PNG bytes -> uint8 [H, W, C] (C = 1 for grey images, else 3)."""
    if encoded[:3] == b"\xff\xd8\xff":
        grey = simplejpeg.decode_jpeg_header(encoded)[2] == "Gray"
        image = simplejpeg.decode_jpeg(encoded, colorspace="GRAY" if grey else "RGB")
    else:
        image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise errors.UserError(f"Cannot decode an image of {len(encoded)} bytes.")
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        elif image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image if image.ndim == 3 else image[..., None]


def resize(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C] with `method` (see RESIZE_METHODS)."""
    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[2]
    if method == "bicubic":
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        out = np.asarray(pil.resize((width, height), Image.BICUBIC))
    else:
        out = cv2.resize(image, (width, height), interpolation=_CV2_METHODS[method])
    return out.reshape(height, width, channels)


@dataclasses.dataclass(frozen=True, repr=False)
class Decode(Op):
    name = "decode"

    def apply(self, images, draws):
        if isinstance(images, np.ndarray):
            return images
        return [decode_image(i) if isinstance(i, bytes | bytearray) else i for i in images]


@dataclasses.dataclass(frozen=True, repr=False)
class ResizeSmall(Op):
    size: int
    method: str = "area"
    name = "resize_small"

    def apply(self, images, draws):
        _check_decoded(self.name, images)

        def one(image):
            h, w = image.shape[:2]
            scale = self.size / min(h, w)
            low = round(self.size)  # size may be fractional (image_size / 0.875)
            return resize(
                image, max(low, round(h * scale)), max(low, round(w * scale)), self.method
            )

        return _per_example(one, images)


@dataclasses.dataclass(frozen=True, repr=False)
class CentralCrop(Op):
    size: int
    name = "central_crop"

    def apply(self, images, draws):
        _check_decoded(self.name, images)
        s = self.size

        def window(h, w):
            if h < s or w < s:
                raise errors.UserError(
                    f"Op central_crop({s}) got an image of {h}x{w}: resize it first, e.g. "
                    f"resize_small({s})."
                )
            return (h - s) // 2, (w - s) // 2

        if isinstance(images, np.ndarray):
            top, left = window(*images.shape[1:3])
            return images[:, top : top + s, left : left + s]

        def one(image):
            top, left = window(*image.shape[:2])
            return image[top : top + s, left : left + s]

        return _per_example(one, images)


@dataclasses.dataclass(frozen=True, repr=False)
class InceptionCrop(Op):
    size: int
    area: tuple[float, float] = (0.08, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    method: str = "bilinear"
    name = "inception_crop"
    random = True

    def draw(self, rng, n):
        # Four uniforms per attempt: area fraction, log-aspect, top, left.
        return (rng.random((n, INCEPTION_ATTEMPTS, 4)),)

    def window(self, height: int, width: int, uniforms: np.ndarray) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop for an image of height x width, from its draws."""
        log_lo, log_hi = math.log(self.aspect[0]), math.log(self.aspect[1])
        for u_area, u_aspect, u_top, u_left in uniforms:
            target = height * width * (self.area[0] + u_area * (self.area[1] - self.area[0]))
            ratio = math.exp(log_lo + u_aspect * (log_hi - log_lo))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
        ratio = width / height  # the fallback: central, aspect clamped into range
        if ratio < self.aspect[0]:
            w, h = width, round(width / self.aspect[0])
        elif ratio > self.aspect[1]:
            h, w = height, round(height * self.aspect[1])
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, images, draws):
        _check_decoded(self.name, images)
        out = []
        for image, uniforms in zip(images, draws[0], strict=True):
            image = np.asarray(image)
            top, left, h, w = self.window(*image.shape[:2], uniforms)
            crop = image[top : top + h, left : left + w]
            out.append(resize(crop, self.size, self.size, self.method))
        return out


@dataclasses.dataclass(frozen=True, repr=False)
class FlipLr(Op):
    name = "flip_lr"
    random = True

    def draw(self, rng, n):
        return (rng.random(n) < 0.5,)

    def apply(self, images, draws):
        _check_decoded(self.name, images)
        flips = draws[0]
        if isinstance(images, np.ndarray):
            out = images.copy()
            out[flips] = images[flips, :, ::-1]
            return out
        return [i[:, ::-1] if f else i for i, f in zip(images, flips, strict=True)]


@dataclasses.dataclass(frozen=True, repr=False)
class PadCrop(Op):
    padding: int
    name = "pad_crop"
    random = True

    def draw(self, rng, n):
        p = self.padding
        return rng.integers(0, 2 * p + 1, size=n), rng.integers(0, 2 * p + 1, size=n)

    def apply(self, images, draws):
        _check_decoded(self.name, images)
        images = stack(images, self.name)
        dy, dx = draws
        p = self.padding
        if not p:
            return images
        n, h, w, _ = images.shape
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        out = np.empty_like(images)
        for i, (y, x) in enumerate(zip(dy, dx, strict=True)):
            out[i] = padded[i, y : y + h, x : x + w]
        return out


OPS: dict[str, type[Op]] = {
    op.name: op for op in (Decode, ResizeSmall, CentralCrop, InceptionCrop, FlipLr, PadCrop)
}


def _check_size(op: str, name: str, value: Any, low: int) -> None:
    try:
        errors.check_count(name, value, low)
    except errors.UserError as e:
        raise errors.UserError(f"Op {op!r}: {e}") from None


def _check_range(op: str, name: str, value: Any, low: float, high: float) -> None:
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and low < value[0] <= value[1] <= high
    )
    if not ok:
        raise errors.UserError(
            f"Op {op!r}: {name}={value!r}: expected (low, high) with {low} < low <= high <= {high}."
        )


def _check(op: str, instance: Op) -> None:
    """Range checks of an op's arguments; `op` is the op as written."""
    for name in ("size", "padding"):
        if hasattr(instance, name):
            _check_size(op, name, getattr(instance, name), 1 if name == "size" else 0)
    if hasattr(instance, "method") and instance.method not in RESIZE_METHODS:
        raise errors.UserError(
            f"Op {op!r}: method={instance.method!r}; expected one of {list(RESIZE_METHODS)}."
        )
    if isinstance(instance, InceptionCrop):
        _check_range(op, "area", instance.area, 0.0, 1.0)
        _check_range(op, "aspect", instance.aspect, 0.0, math.inf)


def _parse_one(text: str) -> Op:
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        node = None
    call = node if isinstance(node, ast.Call) else None
    name_node = call.func if call else node
    if not isinstance(name_node, ast.Name):
        raise errors.UserError(
            f"Preprocessing op {text!r} is not NAME or NAME(arguments); expected one of: "
            f"{', '.join(OPS)}."
        )
    name = name_node.id
    if name not in OPS:
        why = (
            " (batches are always float32 in [0, 1]: normalisation is the model's)"
            if name == "value_range"
            else ""
        )
        raise errors.UserError(
            f"Unknown preprocessing op {name!r} in {text!r}{why}; expected one of: "
            f"{', '.join(OPS)}."
        )
    try:
        args = [ast.literal_eval(a) for a in call.args] if call else []
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
    except ValueError:
        raise errors.UserError(
            f"Op {text!r}: arguments must be numbers, strings or tuples of them."
        ) from None
    if None in kwargs:
        raise errors.UserError(f"Op {text!r}: '**' arguments are not accepted.")
    try:
        instance = OPS[name](*args, **kwargs)
    except TypeError as e:
        raise errors.UserError(f"Op {text!r}: {e}".replace(f"{OPS[name].__name__}.", "")) from None
    _check(text, instance)
    return instance


def parse(spec: str) -> tuple[Op, ...]:
    """The ops of a `|`-separated spec, e.g. "decode|resize_small(256)|central_crop(224)".

    Raises:
      UserError: an unknown op name, a malformed element, or arguments an op does not take
        or that are out of range; the message names the op as written.
    """
    if not isinstance(spec, str):
        raise errors.UserError(f"Preprocessing {spec!r}: expected a string of '|'-separated ops.")
    parts = [p.strip() for p in spec.split("|")] if spec.strip() else []
    if "" in parts:
        raise errors.UserError(f"Preprocessing {spec!r} has an empty op between '|'s.")
    return tuple(_parse_one(p) for p in parts)


def draw(ops: Sequence[Op], rng: np.random.Generator, n: int) -> list:
    """Each op's numbers for `n` examples (None for deterministic ops), in op order."""
    return [op.draw(rng, n) for op in ops]


def apply(
    ops: Sequence[Op],
    images: Images,
    draws: Sequence | None = None,
    *,
    rows: slice | None = None,
    spec: str = "",
) -> np.ndarray:
    """Runs `ops` on a batch and returns it as uint8 [n, H, W, C].

    Args:
      ops: the parsed ops.
      images: the batch (an array or a list of per-example images or encoded bytes).
      draws: `draw(ops, rng, global_size)`; None for deterministic ops only.
      rows: the rows of the global draws that this batch holds (default: all).
      spec: the ops as written, for error messages.
    """
    for i, op in enumerate(ops):
        d = draws[i] if draws is not None else None
        if d is None and op.random:
            raise errors.UserError(f"Op {op!r} is random; it needs draws (a training pipeline).")
        if d is not None and rows is not None:
            d = tuple(a[rows] for a in d)
        images = op.apply(images, d)
    return stack(images, spec)


def is_random(ops: Sequence[Op]) -> bool:
    """Whether any op draws random numbers."""
    return any(op.random for op in ops)
