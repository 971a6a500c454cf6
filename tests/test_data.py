"""Data sources, the dataset registry and the batch pipeline."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from seasoning import data, errors
from seasoning.data import fashion_mnist, synthetic
from seasoning.data.tfds_source import TfdsSource


@pytest.fixture(scope="module")
def fmnist_test():
    return fashion_mnist.load("test")


def test_fashion_mnist_real_files(fmnist_test):
    assert len(fmnist_test) == 10_000
    assert fmnist_test.image_shape == (28, 28, 1)
    images, labels = fmnist_test.get(np.arange(100))
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert set(np.unique(fmnist_test.labels)) == set(range(10))
    assert np.bincount(fmnist_test.labels).tolist() == [1000] * 10
    assert 0.2 < images.mean() / 255 < 0.4


def test_fashion_mnist_missing_prints_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist.load("train", str(tmp_path))


def test_fashion_mnist_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert fashion_mnist.data_dir() == str(tmp_path)
    assert fashion_mnist.data_dir("/explicit") == "/explicit"


def _source(n=100, shape=(8, 8, 1)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return data.ArraySource(images, np.arange(n, dtype=np.int32) % 10, 10)


def _ops(spec):
    return {"ops": data.ops.parse(spec), "spec": spec}


def test_train_batches_deterministic_and_resumable():
    source = _source()
    kwargs = dict(seed=3, **_ops("pad_crop(2)|flip_lr"))
    a = [next(it) for it in [data.train_batches(source, 16, **kwargs)] for _ in range(9)]
    resumed = data.train_batches(source, 16, start_step=7, **kwargs)
    for expected in a[7:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])
    other_seed = next(data.train_batches(source, 16, seed=4))
    assert not np.array_equal(other_seed["label"], a[0]["label"])


def test_train_batches_epochs_cover_dataset_once():
    source = _source(n=64)
    it = data.train_batches(source, 16, seed=0)
    labels = np.concatenate([next(it)["label"] for _ in range(4)])
    assert sorted(labels.tolist()) == sorted(source.labels.tolist())


def test_hosts_read_disjoint_slices_of_the_same_global_batch():
    source = _source()
    kwargs = dict(seed=1, **_ops("pad_crop(1)|flip_lr"))
    whole = next(data.train_batches(source, 16, **kwargs))
    parts = [
        next(data.train_batches(source, 16, process_index=i, process_count=4, **kwargs))
        for i in range(4)
    ]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])


def test_pad_crop_and_flip_give_windows_of_the_padded_image():
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    ops = data.ops.parse("pad_crop(2)|flip_lr")
    same = data.ops.apply(data.ops.parse("pad_crop(0)"), images, [(np.zeros(2, int),) * 2])
    np.testing.assert_array_equal(same, images)
    for seed in range(10):
        out = data.ops.apply(ops, images, data.ops.draw(ops, np.random.default_rng(seed), 2))
        assert out.shape == images.shape
        for img, orig in zip(out, images, strict=True):
            # Every output is a shifted (and maybe mirrored) window of the zero-padded original.
            padded = np.pad(orig, ((2, 2), (2, 2), (0, 0)))
            windows = [padded[y : y + 4, x : x + 4] for y in range(5) for x in range(5)]
            windows += [w[:, ::-1] for w in windows]
            assert any(np.array_equal(img, w) for w in windows)


def test_batches_are_uint8_and_float_images_in_unit_box():
    batch = next(data.train_batches(_source(), 16, seed=0))
    assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
    images = data.to_float(batch["image"])
    assert images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1


def test_synthetic_is_seeded_and_split():
    a = synthetic.load("train", num_examples=32, image_shape=(16, 16, 3))
    b = synthetic.load("train", num_examples=32, image_shape=(16, 16, 3))
    c = synthetic.load("test", num_examples=32, image_shape=(16, 16, 3))
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.image_shape == (16, 16, 3)


def test_tfds_source_with_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        cifar = TfdsSource("cifar10", "train")
        images, labels = cifar.read(np.array([0, 5]))
        assert len(cifar) == 12 and cifar.num_classes == 10
        assert len(images) == 2 and labels.dtype == np.int32
        config = ml_collections.ConfigDict(dict(name="imagenet2012", data_dir="", image_size=48))
        imagenet = data.get_source(config, "validation")
        assert imagenet.image_shape == (48, 48, 3) and imagenet.num_classes == 1000
        ops = data.ops.parse("decode|inception_crop(48)|flip_lr")
        batch = next(data.train_batches(TfdsSource("imagenet2012", "train"), 4, seed=0, ops=ops))
        assert batch["image"].shape == (4, 48, 48, 3) and batch["image"].dtype == np.uint8


def test_tfds_missing_prints_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
        TfdsSource("cifar10", "train", data_dir=str(tmp_path))


def test_registry_names_and_entries():
    assert data.DATASET_NAMES == tuple(data.DATASETS)
    assert set(data.DATASET_NAMES) >= {
        "fashion_mnist",
        "synthetic",
        "cifar10",
        "cifar100",
        "imagenet2012",
    }
    assert all(":" not in name for name in data.DATASET_NAMES)  # ":" separates the split
    assert data.DATASETS["cifar10"].tfds_name == "cifar10"
    assert data.DATASETS["fashion_mnist"].tfds_name is None
    assert data.DATASETS["synthetic"].threats is None
    assert [str(t) for t in data.default_threats("imagenet2012")] == [
        "linf:0.0156863",
        "l2:2",
        "l1:255",
    ]


@pytest.mark.parametrize("name", ["synthetic", "cifar100", "svhn"])
def test_default_threats_without_radii_ask_for_them(name):
    with pytest.raises(errors.UserError, match=f"dataset '{name}'.*--threat / eval.threats"):
        data.default_threats(name)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("cifar10", ("cifar10", "")),
        ("cifar10:test", ("cifar10", "test")),
        ("imagenet2012:validation[:1000]", ("imagenet2012", "validation[:1000]")),
        (" fashion_mnist : train ", ("fashion_mnist", "train")),
        ("synthetic:", ("synthetic", "")),
    ],
)
def test_parse_dataset(spec, expected):
    assert data.parse_dataset(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cifar1:test", r"Unknown dataset 'cifar1'; expected one of: fashion_mnist, .*'cifar10'"),
        ("fmnist", r"Unknown dataset 'fmnist'.*imagenet2012, .*cifar10_corrupted \(or a member"),
        ("", "names no dataset"),
        (":test", "names no dataset"),
    ],
)
def test_parse_dataset_rejects(spec, message):
    with pytest.raises(errors.UserError, match=message):
        data.parse_dataset(spec)


def test_get_source_through_the_registry():
    config = ml_collections.ConfigDict(
        dict(name="synthetic", data_dir="", image_size=8, num_classes=3, num_train_examples=16)
    )
    source = data.get_source(config, "train", seed=1)
    assert len(source) == 16 and source.image_shape == (8, 8, 3) and source.num_classes == 3
    assert len(data.get_source(config, "test")) == 512
    config.name = "cifar-10"
    with pytest.raises(errors.UserError, match=r"Unknown dataset 'cifar-10'.*'cifar10'"):
        data.get_source(config, "test")
    with tfds.testing.mock_data(num_examples=4):
        config.update(name="cifar10", image_size=0)
        assert data.get_source(config, "test").image_shape == (32, 32, 3)
