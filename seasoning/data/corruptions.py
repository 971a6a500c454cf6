"""Fashion-MNIST's shifted test sets, made offline from its 10000 test images.

Four kinds of shift, each a registered dataset with the one split "test", the clean test
labels, and Fashion-MNIST's threat models (Linf 0.1, L2 0.8, L1 10):

- `fashion_mnist_corrupted/<corruption>_<severity>` (75 sets) and the group
  `fashion_mnist_corrupted` (their mean): the 15 ImageNet-C benchmark corruptions of
  Hendrycks & Dietterich (2019) at severities 1 to 5, computed by `imagecorruptions` (the
  reference code as a library). They test texture and sensor shifts: noise (gaussian, shot,
  impulse), blur (defocus, glass, motion, zoom), weather (snow, frost, fog), digital
  (brightness, contrast, elastic, pixelate, JPEG). The library takes RGB images of at least
  32x32, so each 28x28 image is padded by 2 pixels a side, repeating its border pixels
  ("edge": equal to zero padding on Fashion-MNIST's black background, and no artificial black
  frame where a garment touches the border, which the blurs would smear inward); stacked to
  RGB; corrupted; turned back to gray by ITU-R 601 luminance (0.299 R + 0.587 G + 0.114 B,
  PIL's "L" and the library's own gray conversion); and cropped back to 28x28. Corruptions
  that act on the three channels alike return the same gray under any conversion; the
  channel-wise random noises (gaussian, shot, impulse) come out weaker than in RGB (the
  luminance of independent per-channel noise has 0.67 times its standard deviation) and
  impulse noise takes grey levels besides black and white. The library's sizes are
  ImageNet's (e.g. defocus radius 3 to 10 pixels), so on 28x28 images the blurs are harsher
  than CIFAR-10-C's. Corrupting costs milliseconds an image, so images are generated when
  first read and cached on disk (see `cache_root`, `generate` and the command line below).
- `fashion_mnist_inverted`: 255 - image. Inverted contrast polarity (light garments on
  black become dark ones on white): a model that learnt shapes survives it, one that learnt
  "bright pixels here" does not.
- `fashion_mnist_rotated`: each image rotated about its centre by a random angle of 20 to 45
  degrees either way (bilinear, zero fill). Fashion-MNIST's garments are always upright and
  training does not rotate them, so this tests geometry; 20 degrees is past the tilt small
  misalignments give, 45 keeps a garment recognisable and mostly inside the frame.
- `fashion_mnist_translated`: each image shifted by 2 or 3 pixels along each axis, random
  signs (zero fill). Garments are always centred and Fashion-MNIST training uses no random
  crops, so this tests translation invariance; at most 3 pixels keeps at least 89% of a
  full-height garment (trousers, dresses) in view.

Every random choice is a pure function of (dataset seed, dataset name, image index) (see
`image_seed`), so an image is the same whichever other images are read, in whatever order,
by whichever process. The dataset seed is the loader's `seed` (`data.get_source(...,
seed=...)`, default 0).

Fill the cache of all 75 corrupted sets (or some) ahead of time, with a progress line:

  python -m seasoning.data.corruptions --seed=0 [--corruptions=fog,frost] [--n_images=1000]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.metadata
import json
import os
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from seasoning import errors
from seasoning.data import fashion_mnist, radii
from seasoning.data.source import ArraySource, DatasetEntry

# The 15 benchmark corruptions of ImageNet-C, spelt and ordered as
# `imagecorruptions.get_corruption_names()` (listed here so that building the registry does not
# import the library, which takes a second).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
GROUP = "fashion_mnist_corrupted"
INVERTED = "fashion_mnist_inverted"
ROTATED = "fashion_mnist_rotated"
TRANSLATED = "fashion_mnist_translated"
SPLITS = ("test",)
ROTATION_DEGREES = (20.0, 45.0)  # |angle| is uniform in this range, its sign random
SHIFT_PIXELS = (2, 3)  # |shift| along each axis is one of these, its sign random
# Fashion-MNIST's radii: every shifted set keeps them.
THREATS = radii.FASHION_MNIST

CACHE_ENV = "SEASONING_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/seasoning"
# Bump when the images a corruption makes change (padding, gray conversion, seeding), so that
# older caches are never read.
CACHE_FORMAT = 1
_LIBRARY = "imagecorruptions-imaug"
_PAD = 2  # 28 + 2 * 2 = 32, the library's smallest image side
_LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as PIL's convert("L")
# Corruptions whose randomness does not come from the global np.random but from a `seed`
# argument (glass_blur: numba's generator; impulse_noise: scikit-image's).
_SEED_ARGUMENT = frozenset({"glass_blur", "impulse_noise"})
_CHUNK = 250  # images corrupted between two cache writes

# image [28, 28, 1] uint8, its seed -> the shifted image [28, 28, 1] uint8
Transform = Callable[[np.ndarray, int], np.ndarray]


def corrupted_name(corruption: str, severity: int) -> str:
    """The registry name of one corrupted set, e.g. "fashion_mnist_corrupted/fog_3"."""
    return f"{GROUP}/{corruption}_{severity}"


# The group's members, corruption-major, severities 1 to 5.
MEMBERS: tuple[str, ...] = tuple(corrupted_name(c, s) for c in CORRUPTIONS for s in SEVERITIES)


def image_seed(seed: int, name: str, index: int) -> int:
    """The seed (a uint32) of image `index` of dataset `name` under dataset seed `seed`."""
    entropy = (seed, zlib.crc32(name.encode()), index)
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


# ----------------------------------------------------------------------------- transforms


def corrupt(image: np.ndarray, seed: int, *, corruption: str, severity: int) -> np.ndarray:
    """One 28x28 gray image under an ImageNet-C corruption (see the module docstring).

    Args:
      image: uint8 [28, 28, 1].
      seed: seeds the corruption's randomness; the global np.random state is restored after.
      corruption: one of `CORRUPTIONS`.
      severity: 1 to 5.

    Returns:
      uint8 [28, 28, 1].
    """
    imagecorruptions = importlib.import_module("imagecorruptions")
    padded = np.pad(image[..., 0], _PAD, mode="edge")
    rgb = np.repeat(padded[..., None], 3, axis=-1)
    kwargs = {"seed": seed} if corruption in _SEED_ARGUMENT else {}
    state = np.random.get_state()
    try:
        np.random.seed(seed)  # the library draws from the global generator
        out = imagecorruptions.corrupt(rgb, severity=severity, corruption_name=corruption, **kwargs)
    finally:
        np.random.set_state(state)
    gray = np.clip(np.rint(out.astype(np.float64) @ _LUMINANCE), 0, 255).astype(np.uint8)
    return gray[_PAD:-_PAD, _PAD:-_PAD, None]


def invert(image: np.ndarray, seed: int) -> np.ndarray:
    """255 - image (contrast polarity reversed); `seed` is unused."""
    del seed
    return 255 - image


def rotate(image: np.ndarray, seed: int) -> np.ndarray:
    """The image rotated about its centre by a seeded angle (`ROTATION_DEGREES`), zero fill."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(*ROTATION_DEGREES) * rng.choice((-1.0, 1.0))
    rotated = Image.fromarray(image[..., 0]).rotate(
        angle, resample=Image.Resampling.BILINEAR, fillcolor=0
    )
    return np.asarray(rotated, np.uint8)[..., None]


def translate(image: np.ndarray, seed: int) -> np.ndarray:
    """The image shifted by a seeded 2 or 3 pixels along each axis (`SHIFT_PIXELS`), zero fill."""
    rng = np.random.default_rng(seed)
    dy, dx = rng.choice(SHIFT_PIXELS, size=2) * rng.choice((-1, 1), size=2)
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


# ----------------------------------------------------------------------------- disk cache


def cache_root() -> str:
    """The cache folder: $SEASONING_CACHE_DIR, else ~/.cache/seasoning."""
    return os.path.expanduser(os.environ.get(CACHE_ENV, "") or DEFAULT_CACHE_DIR)


def _fingerprint(images: np.ndarray) -> dict[str, str | int]:
    """What a cached image depends on besides its seed: the clean images and the code."""
    return {
        "test_images_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
        "library": f"{_LIBRARY}=={importlib.metadata.version(_LIBRARY)}",
        "cache_format": CACHE_FORMAT,
    }


def _create_once(path: str, write: Callable[[str], None]) -> None:
    """Creates file `path` with `write(temp_path)` unless it exists, atomically.

    The file is written under a temporary name in the same folder, then hard-linked to `path`,
    which fails if another process created `path` first (then its file is kept): `path` is
    never a partly written file and never replaced once there.
    """
    if os.path.exists(path):
        return
    folder, base = os.path.split(path)
    # A name of its own per writer; created by `write` itself, so the umask sets its mode.
    tmp = os.path.join(folder, f".{base}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not os.path.exists(path):
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _create_npy(path: str, dtype: type, shape: tuple[int, ...]) -> None:
    def write(tmp: str) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        array.flush()
        del array

    _create_once(path, write)


def _create_json(path: str, content: Mapping[str, object]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, sort_keys=True)

    _create_once(path, write)


class DiskCache:
    """A member's images on disk: uint8 `images.npy` [N, H, W, C] and bool `done.npy` [N].

    Layout: `<root>/fashion_mnist_corrupted/<fingerprint>/seed<seed>/<corruption>_<severity>/`,
    with `<fingerprint>/meta.json` saying what the 16 hex digits of the fingerprint stand for
    (the clean images' sha256, the library version, `CACHE_FORMAT`). An image's bytes are
    written and flushed before its `done` flag, so a set flag always means a whole image;
    images are deterministic, so processes that fill the same image race harmlessly.
    """

    def __init__(self, folder: str, shape: tuple[int, ...]):
        self.folder = folder
        self._shape = shape
        self._images: np.memmap | None = None
        self._done: np.memmap | None = None

    def _open(self) -> tuple[np.memmap, np.memmap]:
        if self._images is None or self._done is None:
            os.makedirs(self.folder, exist_ok=True)
            images, done = (os.path.join(self.folder, f) for f in ("images.npy", "done.npy"))
            _create_npy(images, np.uint8, self._shape)
            _create_npy(done, np.bool_, self._shape[:1])
            self._images = np.lib.format.open_memmap(images, mode="r+")
            self._done = np.lib.format.open_memmap(done, mode="r+")
            if self._images.shape != self._shape or self._done.shape != self._shape[:1]:
                raise errors.UserError(
                    f"Cache {self.folder} holds images {self._images.shape} and flags "
                    f"{self._done.shape}, expected {self._shape}; delete the folder."
                )
        return self._images, self._done

    def done(self, indices: np.ndarray) -> np.ndarray:
        """bool [n]: whether each image is cached."""
        return np.asarray(self._open()[1][indices])

    def write(self, indices: np.ndarray, images: np.ndarray) -> None:
        """Stores images at `indices` and then marks them done."""
        stored, done = self._open()
        stored[indices] = images
        stored.flush()
        done[indices] = True
        done.flush()

    def read(self, indices: np.ndarray) -> np.ndarray:
        return np.array(self._open()[0][indices])


def corrupted_cache(
    clean: ArraySource, corruption: str, severity: int, seed: int, root: str = ""
) -> DiskCache:
    """The disk cache of one corrupted set of `clean` (see `DiskCache` for the layout)."""
    meta = _fingerprint(clean.images)
    fingerprint = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    base = os.path.join(root or cache_root(), GROUP, fingerprint)
    os.makedirs(base, exist_ok=True)
    _create_json(os.path.join(base, "meta.json"), {**meta, "fingerprint": fingerprint})
    folder = os.path.join(base, f"seed{seed}", f"{corruption}_{severity}")
    return DiskCache(folder, clean.images.shape)


# ----------------------------------------------------------------------------- source


@dataclasses.dataclass
class ShiftedSource:
    """The clean test set under a per-image transform: a `Source`.

    Attributes:
      clean: the clean test split (its labels are the labels here).
      name: the registry name (seeds each image, see `image_seed`).
      transform: (image, seed) -> shifted image, same shape and dtype.
      seed: the dataset seed.
      cache: where shifted images are kept; None: computed on every `get`.
    """

    clean: ArraySource
    name: str
    transform: Transform
    seed: int = 0
    cache: DiskCache | None = None

    @property
    def num_classes(self) -> int:
        return self.clean.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.clean.image_shape

    def __len__(self) -> int:
        return len(self.clean)

    def _indices(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(indices)
        if array.size == 0:
            return np.zeros(0, np.int64)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise errors.UserError(
                f"{self.name}: indices must be a 1-D array of integers, got {array.dtype} "
                f"{array.shape}."
            )
        bad = array[(array < 0) | (array >= len(self))]
        if bad.size:
            raise errors.UserError(
                f"{self.name}: index {int(bad[0])} is out of range; expected 0 <= index < "
                f"{len(self)}."
            )
        return array.astype(np.int64)

    def _compute(self, indices: np.ndarray) -> np.ndarray:
        images = self.clean.images[indices]
        seeds = [image_seed(self.seed, self.name, int(i)) for i in indices]
        shifted = [self.transform(image, s) for image, s in zip(images, seeds, strict=True)]
        return np.stack(shifted).astype(np.uint8)

    def get(self, indices: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [n, 28, 28, 1] images, int32 [n] labels) at `indices` (0 <= index < 10000).

        Raises:
          UserError: an index out of range or not an integer.
        """
        indices = self._indices(indices)
        labels = self.clean.labels[indices]
        if not indices.size:
            return np.zeros((0, *self.image_shape), np.uint8), labels
        if self.cache is None:
            return self._compute(indices), labels
        missing = np.unique(indices[~self.cache.done(indices)])
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start : start + _CHUNK]
            self.cache.write(chunk, self._compute(chunk))
        return self.cache.read(indices), labels


# ----------------------------------------------------------------------------- loaders


@functools.lru_cache(maxsize=2)
def _clean_test(directory: str) -> ArraySource:
    """The clean test set of IDX folder `directory`, read once for all the sets made from it."""
    return fashion_mnist.load("test", directory)


def _check(name: str, split: str, seed: int) -> None:
    if split not in SPLITS:
        raise errors.UserError(
            f"Unknown {name} split {split!r}; expected one of {list(SPLITS)} (it shifts the "
            "Fashion-MNIST test set)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise errors.UserError(f"{name}: seed={seed!r}; expected an integer >= 0.")


def load_corrupted(
    corruption: str,
    severity: int,
    split: str = "test",
    *,
    seed: int = 0,
    data_dir: str = "",
    cache_dir: str = "",
) -> ShiftedSource:
    """Fashion-MNIST-C: one corruption at one severity of the test set, cached on disk.

    Args:
      corruption: one of `CORRUPTIONS`.
      severity: 1 to 5.
      split: "test", the only one.
      seed: the dataset seed.
      data_dir: the Fashion-MNIST IDX folder ("" = `fashion_mnist.data_dir()`'s default).
      cache_dir: the cache root ("" = `cache_root()`).

    Raises:
      UserError: an unknown corruption, severity or split, or a negative seed.
      MissingInputError: Fashion-MNIST is not installed.
    """
    name = corrupted_name(corruption, severity)
    if corruption not in CORRUPTIONS or severity not in SEVERITIES:
        raise errors.UserError(
            f"Unknown corrupted set {name!r}: corruption must be one of {list(CORRUPTIONS)} "
            f"and severity one of {list(SEVERITIES)}."
        )
    _check(name, split, seed)
    clean = _clean_test(fashion_mnist.data_dir(data_dir))
    transform = functools.partial(corrupt, corruption=corruption, severity=severity)
    cache = corrupted_cache(clean, corruption, severity, int(seed), cache_dir)
    return ShiftedSource(clean, name, transform, int(seed), cache)


_SHIFTS: Mapping[str, Transform] = {INVERTED: invert, ROTATED: rotate, TRANSLATED: translate}


def load_shift(
    name: str, split: str = "test", *, seed: int = 0, data_dir: str = ""
) -> ShiftedSource:
    """`fashion_mnist_inverted`, `_rotated` or `_translated`, computed when read.

    Raises:
      UserError: an unknown name or split, or a negative seed.
      MissingInputError: Fashion-MNIST is not installed.
    """
    if name not in _SHIFTS:
        raise errors.UserError(f"Unknown shift {name!r}; expected one of {list(_SHIFTS)}.")
    _check(name, split, seed)
    clean = _clean_test(fashion_mnist.data_dir(data_dir))
    return ShiftedSource(clean, name, _SHIFTS[name], int(seed))


def _corrupted_loader(corruption: str, severity: int):
    def load(dataset, split: str, seed: int) -> ShiftedSource:
        return load_corrupted(corruption, severity, split, seed=seed, data_dir=dataset.data_dir)

    return load


def _shift_loader(name: str):
    def load(dataset, split: str, seed: int) -> ShiftedSource:
        return load_shift(name, split, seed=seed, data_dir=dataset.data_dir)

    return load


# Registry entries of this module (merged into `data.DATASETS`).
ENTRIES: Mapping[str, DatasetEntry] = {
    GROUP: DatasetEntry(load=None, threats=THREATS, members=MEMBERS),
    **{
        corrupted_name(c, s): DatasetEntry(load=_corrupted_loader(c, s), threats=THREATS)
        for c in CORRUPTIONS
        for s in SEVERITIES
    },
    **{name: DatasetEntry(load=_shift_loader(name), threats=THREATS) for name in _SHIFTS},
}


# ----------------------------------------------------------------------------- generation


def generate(
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    *,
    seed: int = 0,
    n_images: int | None = None,
    data_dir: str = "",
    cache_dir: str = "",
    log_every_s: float = 10.0,
) -> None:
    """Fills the disk cache of corrupted sets (all 75 by default), logging progress.

    Args:
      corruptions: which corruptions (names of `CORRUPTIONS`).
      severities: which severities.
      seed: the dataset seed.
      n_images: the first this many test images (None: all 10000).
      data_dir: the Fashion-MNIST IDX folder ("" = default).
      cache_dir: the cache root ("" = `cache_root()`).
      log_every_s: seconds between progress lines.

    Raises:
      UserError: an unknown corruption or severity, or a bad n_images.
    """
    from absl import logging  # noqa: PLC0415 (only the generator logs)

    from seasoning import metrics  # noqa: PLC0415

    sources = [
        load_corrupted(c, s, seed=seed, data_dir=data_dir, cache_dir=cache_dir)
        for c in corruptions
        for s in severities
    ]
    n = len(sources[0]) if sources and n_images is None else n_images
    if sources:
        errors.check_count("n_images", n, 1)
        n = min(n, len(sources[0]))
    progress = metrics.Progress(
        len(sources) * n, batch_size=1, every_s=log_every_s, name=f"{GROUP} images"
    )
    for k, source in enumerate(sources):
        for start in range(0, n, _CHUNK):
            source.get(np.arange(start, min(start + _CHUNK, n)))
            progress.update(k * n + min(start + _CHUNK, n))
        logging.info("%s: %d images cached in %s", source.name, n, source.cache.folder)


def _main() -> None:
    from absl import app, flags  # noqa: PLC0415 (flags only when run as a program)

    from seasoning import cli  # noqa: PLC0415

    flags.DEFINE_integer("seed", 0, "The dataset seed.")
    flags.DEFINE_list("corruptions", list(CORRUPTIONS), "Corruptions to generate.")
    flags.DEFINE_list("severities", [str(s) for s in SEVERITIES], "Severities to generate.")
    flags.DEFINE_integer("n_images", None, "Only the first this many test images.")
    flags.DEFINE_string("data_dir", "", "Fashion-MNIST IDX folder (default: the usual one).")
    flags.DEFINE_string("cache_dir", "", f"Cache root (default: ${CACHE_ENV} or ~/.cache).")

    def run() -> None:
        f = flags.FLAGS
        try:
            severities = [int(s) for s in f.severities]
        except ValueError:
            raise errors.UserError(
                f"--severities={','.join(f.severities)}: expected integers in 1..5."
            ) from None
        generate(
            f.corruptions,
            severities,
            seed=f.seed,
            n_images=f.n_images,
            data_dir=f.data_dir,
            cache_dir=f.cache_dir,
            log_every_s=5.0,
        )

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        cli.exit_on_user_error(run)

    app.run(main)


if __name__ == "__main__":
    _main()
