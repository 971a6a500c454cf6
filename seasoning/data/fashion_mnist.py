"""Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` package."""

from __future__ import annotations

import gzip
import os

import numpy as np

from seasoning import errors
from seasoning.data.source import ArraySource

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_COMMAND = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def data_dir(override: str = "") -> str:
    """The folder holding the IDX files: `override`, else $FASHION_MNIST_DIR, else Debian's."""
    return override or os.environ.get("FASHION_MNIST_DIR", "") or DEFAULT_DIR


def load(split: str, directory: str = "") -> ArraySource:
    """Loads a split ("train": 60000 images, "test": 10000) as uint8 [N, 28, 28, 1].

    Raises:
      ValueError: an unknown split.
      FileNotFoundError: the files are missing; the message has the command that installs them.
    """
    if split not in _FILES:
        raise errors.UserError(
            f"Unknown fashion_mnist split {split!r}; expected one of {list(_FILES)}."
        )
    folder = data_dir(directory)
    paths = [os.path.join(folder, name) for name in _FILES[split]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise errors.MissingInputError(
            f"Fashion-MNIST not found: {missing[0]} is missing. Install it with\n"
            f"  {INSTALL_COMMAND}\n"
            "or point FASHION_MNIST_DIR (or config dataset.data_dir) at a folder with the "
            "IDX files."
        )
    images = _read_idx(paths[0])
    labels = _read_idx(paths[1]).astype(np.int32)
    return ArraySource(images[..., None], labels, num_classes=10)


def _read_idx(path: str) -> np.ndarray:
    """Reads a (gzipped) IDX file of unsigned bytes."""
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise errors.UserError(f"{path}: not an IDX file of unsigned bytes (magic {magic:#x}).")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise errors.UserError(f"{path}: header says {shape}, file holds {array.size} bytes.")
    return array.reshape(shape)
