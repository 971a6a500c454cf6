"""TFDS datasets through `tfds.data_source`: random access, array_record, no TensorFlow.

Records are read with their images left encoded; the preprocessing ops decode them.
"""

from __future__ import annotations

import os

import numpy as np

from seasoning import errors
from seasoning.data.source import DatasetEntry, Head

# The fraction of the resized image kept by the centre crop (the usual 224/256 for ImageNet)
# when a config gives `dataset.image_size` instead of preprocessing ops.
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
            label_key=label_key,
            max_labels=max_labels,
        )

    return DatasetEntry(
        load=load,
        tfds_name=tfds_name,
        threats=threats,
        default_split=default_split,
        head=head,
        model_classes=model_classes,
    )


class TfdsSource:
    """The records of one split of a TFDS dataset prepared in the array_record format.

    `read(indices)` gives the images as stored (encoded JPEG/PNG bytes; the `decode` op
    decodes them) and their labels. Labels come from the feature `label_key`: a
    `ClassLabel` gives int32 [n]; a `Sequence` of `ClassLabel` (several correct labels per
    image, e.g. ImageNet-ReaL's `real_label`) gives int32 [n, W] padded with -1, W the
    sequence's fixed length or else `max_labels`.

    Picklable (the training pipeline's workers reopen the files).

    Attributes:
      num_classes: the class count of the label feature.
      label_names: the names of those classes, in label order.
      label_width: W for a multi-label feature, None for a single label.
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str = "",
        label_key: str = "label",
        max_labels: int | None = None,
    ):
        self._args = dict(
            name=name, split=split, data_dir=data_dir, label_key=label_key, max_labels=max_labels
        )
        self._name, self._label_key = name, label_key
        self._source = open_records(name, split, data_dir)
        import tensorflow_datasets as tfds

        labels = _class_label(tfds, self._source.dataset_info.features, name, label_key)
        self.num_classes = labels.num_classes
        self.label_names = tuple(labels.names)
        feature = self._source.dataset_info.features[label_key]
        self.label_width = _label_width(tfds, feature, name, label_key, max_labels)

    def __getstate__(self) -> dict:
        return {"args": self._args}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["args"])

    def __deepcopy__(self, memo: dict) -> TfdsSource:
        return self  # read-only: Grain's in-process copies share the open files

    def __len__(self) -> int:
        return len(self._source)

    def read(self, indices: np.ndarray, *, labels: bool = True) -> tuple[list, np.ndarray | None]:
        """(images as stored, labels int32 [n] or [n, label_width]) at `indices`; labels None
        when not asked for.

        Raises:
          UserError: a record with more labels than `label_width`.
        """
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        if getattr(self._source, "mock", False):  # the mock's __getitems__ is broken
            records = [self._source[i] for i in indices]
            images = [r["image"] for r in records]
            raw = [r[self._label_key] for r in records] if labels else None
        else:
            images, raw = _parse(
                self._source.__getitems__(indices) if indices else [],
                self._label_key if labels else None,
            )
        if not labels:
            return images, None
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


def _parse(serialized: list[bytes], label_key: str | None) -> tuple[list[bytes], list | None]:
    """(encoded images, label values) of serialized `tf.train.Example` records (how TFDS
    stores them), parsed without TFDS's generic per-feature decoding (twice as fast)."""
    from tensorflow_datasets.proto import tf_example_pb2

    images, labels = [], [] if label_key else None
    for record in serialized:
        features = tf_example_pb2.Example.FromString(record).features.feature
        images.append(features["image"].bytes_list.value[0])
        if label_key:
            values = features[label_key].int64_list.value
            labels.append(values[0] if len(values) == 1 else list(values))
    return images, labels


def open_records(name: str, split: str, data_dir: str):
    """`tfds.data_source` of a prepared split, its records left serialized (`TfdsSource.read`
    parses them; the `decode` op decodes the images); its first record read.

    Raises:
      MissingInputError: the dataset is not there or half-built (no folder, no splits, another
        file format, a missing split or missing files), in one line with the command that
        prepares it.
    """
    import tensorflow_datasets as tfds  # late: importing TFDS costs ~3 s

    try:
        # download=False: offline, a download attempt hangs instead of failing.
        source = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir or None,
            download=False,
            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
        )
        try:
            if len(source):
                source[0]  # missing or unreadable files fail here, not in a worker later
        except ModuleNotFoundError:
            # Only `tfds.testing.mock_data` gets here: it serializes its fake records with
            # TensorFlow. Read them decoded instead.
            source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
            source.mock = True
    except (RuntimeError, OSError, KeyError, ValueError, AssertionError) as e:
        where = data_dir or tfds.core.constants.DATA_DIR  # TFDS's default: TFDS_DATA_DIR or ~
        folder = os.path.join(os.path.expanduser(where), name)
        if not os.path.isdir(folder):
            reason = f"no folder {folder}"
        else:
            reason = " ".join(str(e).split())
            reason = reason if len(reason) <= 160 else reason[:157] + "..."
            reason = f"{type(e).__name__}: {reason}"
        raise errors.MissingInputError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared for random access in "
            f"{where} ({reason}): prepare it with "
            f"`{build_command(name, data_dir)}` on a machine with internet (ImageNet and its "
            "ReaL/-C variants also need ImageNet's manual download), then copy the data_dir "
            "here."
        ) from e
    if not len(source):
        where = data_dir or tfds.core.constants.DATA_DIR
        raise errors.MissingInputError(
            f"TFDS dataset {name!r} (split {split!r}) in {where} holds no records: prepare "
            f"it again with `{build_command(name, data_dir)}`."
        )
    return source


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
