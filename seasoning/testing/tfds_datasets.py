"""Small TFDS datasets written offline in the array_record format, as `tfds build` leaves them.

`write(data_dir, name, splits, ...)` prepares dataset `name` under `data_dir` from encoded
images (JPEG or PNG bytes) with no download and no TensorFlow, so that `tfds.data_source(name,
data_dir=data_dir)` (and `dataset.data_dir` in a config) reads it exactly as a real prepared
dataset. `imagenet_like_jpegs` and `png_images` make such images.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from PIL import Image


def write(
    data_dir: str,
    name: str,
    splits: Mapping[str, tuple[Sequence[bytes], Sequence[int]]],
    *,
    num_classes: int,
    channels: int = 3,
    encoding: str = "jpeg",
) -> None:
    """Prepares TFDS dataset `name` (version 1.0.0) in `data_dir`, one record per image.

    Args:
      data_dir: the TFDS data_dir.
      name: the dataset's name (snake_case).
      splits: split name -> (encoded images, labels).
      num_classes: the label feature's class count.
      channels: the image feature's channel count.
      encoding: "jpeg" or "png", the image feature's encoding format.
    """
    import tensorflow_datasets as tfds

    def info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(
                    shape=(None, None, channels), encoding_format=encoding
                ),
                "label": tfds.features.ClassLabel(num_classes=num_classes),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self, features=features, supervised_keys=("image", "label")
        )

    def split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in splits}

    def generate_examples(self, split):
        images, labels = splits[split]
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}

    builder_class = type(
        "".join(part.title() for part in name.split("_")),
        (tfds.core.GeneratorBasedBuilder,),
        {
            "name": name,
            "VERSION": tfds.core.Version("1.0.0"),
            "_info": info,
            "_split_generators": split_generators,
            "_generate_examples": generate_examples,
        },
        skip_registration=True,
    )
    builder = builder_class(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))


def imagenet_like_jpegs(
    n: int,
    *,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = ((375, 500), (500, 375), (333, 500), (500, 500)),
    quality: int = 90,
) -> list[bytes]:
    """`n` JPEGs of ImageNet's usual sizes (height, width) with natural-image-like content:
    smooth colour fields with edges and noise texture, about 75-110 kB at quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        coarse = rng.uniform(0, 255, size=(h // 25 + 2, w // 25 + 2, 3)).astype(np.float32)
        image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        image += rng.normal(0, 18, size=image.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            buffer, "JPEG", quality=quality
        )
        out.append(buffer.getvalue())
    return out


def png_images(images: np.ndarray) -> list[bytes]:
    """uint8 [n, H, W, C] -> PNG bytes each (how TFDS stores CIFAR and MNIST)."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out
