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
    label_key: str = "label",
    max_labels: int | None = None,
) -> DatasetEntry:
    """The registry entry of a dataset read through `tfds.data_source` under `tfds_name`.

    `label_key` and `max_labels` are passed to `TfdsSource`; the other arguments are the
    `DatasetEntry` fields of the same names.
    """

    def load(dataset, split: str, seed: int) -> TfdsSource:
        del seed  # a fixed dataset
        return TfdsSource(
            tfds_name,
            split,
            data_dir=dataset.data_dir,
            image_size=dataset.image_size,
            label_key=label_key,
            max_labels=max_labels,
        )

    return DatasetEntry(load=load, tfds_name=tfds_name, threats=threats,
                        default_split=default_split, head=head,
                        model_classes=model_classes)  # fmt: skip


class TfdsSource:
    """One split of a TFDS dataset, prepared in the array_record format.

    Images come back as uint8 [n, S, S, C]: at native size when `image_size` is 0 (every image
    must then have the same shape, as in CIFAR), else resized (shorter side to
    image_size / 0.875) and centre-cropped to `image_size`.

    Labels come from the feature `label_key`: a `ClassLabel` gives int32 [n]; a `Sequence` of
    `ClassLabel` (several correct labels per image, e.g. ImageNet-ReaL's `real_label`) gives
    int32 [n, W] padded with -1, W the sequence's fixed length or else `max_labels`.

    Attributes:
      num_classes: the class count of the label feature.
      label_names: the names of those classes, in label order.
      label_width: W for a multi-label feature, None for a single label.
      image_shape: the (H, W, C) of every image.
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str = "",
        image_size: int = 0,
        label_key: str = "label",
        max_labels: int | None = None,
    ):
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
                "on a machine with internet (imagenet2012, imagenet2012_real and "
                "imagenet2012_corrupted also need ImageNet's manual download in "
                "~/tensorflow_datasets/downloads/manual), then copy the data_dir here."
            ) from e
        self._name, self._image_size, self._label_key = name, image_size, label_key
        labels = _class_label(tfds, self._source.dataset_info.features, name, label_key)
        self.num_classes = labels.num_classes
        self.label_names = tuple(labels.names)
        feature = self._source.dataset_info.features[label_key]
        self.label_width = _label_width(tfds, feature, name, label_key, max_labels)
        first = self._decode(self._source[0]["image"])
        self.image_shape = tuple(first.shape)

    def __len__(self) -> int:
        return len(self._source)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [n, H, W, C], labels int32 [n] or [n, label_width]) at `indices`.

        Raises:
          UserError: a record with more labels than `label_width`.
        """
        indices = [int(i) for i in indices]
        records = [self._source[i] for i in indices]
        images = np.stack([self._decode(r["image"]) for r in records])
        raw = [r[self._label_key] for r in records]
        if self.label_width is None:
            return images, np.array(raw, dtype=np.int32)
        return images, self._pad(raw, indices)

    def _pad(self, label_lists: list, indices: list[int]) -> np.ndarray:
        labels = np.full((len(label_lists), self.label_width), -1, dtype=np.int32)
        for row, (found, index) in enumerate(zip(label_lists, indices, strict=True)):
            found = np.asarray(found, dtype=np.int32).reshape(-1)
            if len(found) > self.label_width:
                raise errors.UserError(
                    f"Record {index} of TFDS dataset {self._name!r} has {len(found)} labels in "
                    f"{self._label_key!r}; expected at most {self.label_width} (the width its "
                    "registry entry pads label sets to): raise the entry's max_labels."
                )
            labels[row, : len(found)] = found
        return labels

    def _decode(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        return centre_crop(image, self._image_size) if self._image_size else image


def _class_label(tfds, features, name: str, label_key: str):
    """The `ClassLabel` of feature `label_key` (itself, or the element of a `Sequence`)."""
    feature = features[label_key] if label_key in features else None
    if isinstance(feature, tfds.features.Sequence):
        feature = feature.feature
    if not isinstance(feature, tfds.features.ClassLabel):
        keys = ", ".join(repr(k) for k in features if _is_label(tfds, features[k]))
        raise errors.UserError(
            f"TFDS dataset {name!r} has no class-label feature {label_key!r}; expected one of: "
            f"{keys or '(none)'}."
        )
    return feature


def _is_label(tfds, feature) -> bool:
    if isinstance(feature, tfds.features.Sequence):
        feature = feature.feature
    return isinstance(feature, tfds.features.ClassLabel)


def _label_width(tfds, feature, name: str, label_key: str, max_labels: int | None) -> int | None:
    """None for one label per image, else the width label sets are padded to."""
    if not isinstance(feature, tfds.features.Sequence):
        return None
    fixed = feature.shape[0]
    if fixed is not None:
        return int(fixed)
    if max_labels is None:
        raise errors.UserError(
            f"Feature {label_key!r} of TFDS dataset {name!r} holds a variable number of labels: "
            "pass max_labels, the most labels one image may have."
        )
    return errors.check_count("max_labels", max_labels, 1)


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
