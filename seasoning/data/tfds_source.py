"""TFDS datasets through `tfds.data_source`: random access, array_record, no TensorFlow."""

from __future__ import annotations

import numpy as np
from PIL import Image

from seasoning import errors
from seasoning.data.source import DatasetEntry, Head

# The fraction of the resized image kept by the centre crop (the usual 224/256 for ImageNet).
CROP_FRACTION = 0.875


def build_command(name: str, data_dir: str) -> str:
    """The command that prepares `name` for random access (on a machine with internet)."""
    where = f" --data_dir={data_dir}" if data_dir else ""
    return f"tfds build {name} --file_format=array_record{where}"


def tfds_entry(
    tfds_name: str,
    threats: tuple | None = None,
    *,
    default_split: str = "test",
    head: Head | None = None,
    model_classes: int | None = None,
) -> DatasetEntry:
    """The registry entry of a dataset read through `tfds.data_source` under `tfds_name`."""

    def load(dataset, split: str, seed: int) -> TfdsSource:
        del seed  # a fixed dataset
        return TfdsSource(
            tfds_name, split, data_dir=dataset.data_dir, image_size=dataset.image_size
        )

    return DatasetEntry(load=load, tfds_name=tfds_name, threats=threats,
                        default_split=default_split, head=head,
                        model_classes=model_classes)  # fmt: skip


class TfdsSource:
    """One split of a TFDS dataset, prepared in the array_record format.

    Images come back as uint8 [n, S, S, C]: at native size when `image_size` is 0 (every image
    must then have the same shape, as in CIFAR), else resized (shorter side to
    image_size / 0.875) and centre-cropped to `image_size`.
    """

    def __init__(self, name: str, split: str, *, data_dir: str = "", image_size: int = 0):
        import tensorflow_datasets as tfds  # late: importing TFDS costs ~3 s

        try:
            # download=False: offline, a download attempt hangs instead of failing.
            self._source = tfds.data_source(
                name, split=split, data_dir=data_dir or None, download=False
            )
        except (RuntimeError, FileNotFoundError, AssertionError) as e:
            raise errors.MissingInputError(
                f"TFDS dataset {name!r} (split {split!r}) is not prepared for random access "
                f"({type(e).__name__}: {str(e).splitlines()[0]}). Prepare it with\n"
                f"  {build_command(name, data_dir)}\n"
                "on a machine with internet (imagenet2012 also needs its manual download in "
                "~/tensorflow_datasets/downloads/manual), then copy the data_dir here."
            ) from e
        self._image_size = image_size
        self.num_classes = self._source.dataset_info.features["label"].num_classes
        first = self._decode(self._source[0]["image"])
        self.image_shape = tuple(first.shape)

    def __len__(self) -> int:
        return len(self._source)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        records = [self._source[int(i)] for i in indices]
        images = np.stack([self._decode(r["image"]) for r in records])
        labels = np.array([r["label"] for r in records], dtype=np.int32)
        return images, labels

    def _decode(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        return centre_crop(image, self._image_size) if self._image_size else image


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to size / CROP_FRACTION, then crops the centre size x size."""
    h, w, c = image.shape
    scale = size / CROP_FRACTION / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    resized = np.asarray(pil.resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    return crop[..., None] if c == 1 else crop
