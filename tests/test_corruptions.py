"""Fashion-MNIST's shifted test sets: registry, determinism, disk cache, shifts, errors."""

import functools
import os

import imagecorruptions
import ml_collections
import numpy as np
import pytest

from seasoning import data, errors
from seasoning.data import corruptions, fashion_mnist

FEW = [0, 5, 9999]


@functools.cache
def clean_test():
    return fashion_mnist.load("test")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test's cache in its own folder (and never the user's ~/.cache)."""
    root = tmp_path / "cache"
    monkeypatch.setenv(corruptions.CACHE_ENV, str(root))
    return root


def load(corruption, severity, seed=0, cache_dir=""):
    return corruptions.load_corrupted(corruption, severity, seed=seed, cache_dir=cache_dir)


def mean_abs_change(images, indices):
    return np.abs(images.astype(np.float64) - clean_test().images[indices]).mean()


def test_registry_has_the_75_corrupted_sets_their_group_and_the_shifts():
    assert corruptions.CORRUPTIONS == tuple(imagecorruptions.get_corruption_names())
    members = data.members("fashion_mnist_corrupted")
    assert len(members) == len(set(members)) == 75
    assert members[:6] == (
        "fashion_mnist_corrupted/gaussian_noise_1",
        "fashion_mnist_corrupted/gaussian_noise_2",
        "fashion_mnist_corrupted/gaussian_noise_3",
        "fashion_mnist_corrupted/gaussian_noise_4",
        "fashion_mnist_corrupted/gaussian_noise_5",
        "fashion_mnist_corrupted/shot_noise_1",
    )
    assert "fashion_mnist_corrupted/glass_blur_3" in members
    names = {
        *members,
        "fashion_mnist_corrupted",
        "fashion_mnist_inverted",
        "fashion_mnist_rotated",
        "fashion_mnist_translated",
    }
    assert names <= set(data.DATASET_NAMES)
    radii = [str(t) for t in data.default_threats("fashion_mnist")]
    for name in names:
        entry = data.DATASETS[name]
        assert [str(t) for t in entry.threats] == radii, name
        assert entry.default_split == "test" and entry.tfds_name is None
        assert (entry.load is None) == (name == "fashion_mnist_corrupted")
    with pytest.raises(errors.UserError, match="group of 75 datasets"):
        data.get_source(ml_collections.ConfigDict(dict(name="fashion_mnist_corrupted")), "test")


def test_registry_source_has_the_clean_labels_and_fashion_mnist_shapes(cache_dir):
    section = ml_collections.ConfigDict(dict(name="fashion_mnist_corrupted/fog_2", data_dir=""))
    source = data.get_source(section, "test", seed=0)
    assert (source.num_classes, source.image_shape, len(source)) == (10, (28, 28, 1), 10000)
    images, labels = source.get(np.array(FEW))
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and (labels == clean_test().labels[FEW]).all()
    assert not (images == clean_test().images[FEW]).all()
    assert os.path.isfile(os.path.join(source.cache.folder, "images.npy"))
    assert source.cache.folder.startswith(str(cache_dir / "fashion_mnist_corrupted"))
    assert source.cache.folder.endswith(os.path.join("seed0", "fog_2"))


# The two corruptions seeded through an argument (numba's, scikit-image's generator) and one
# seeded through the global np.random.
@pytest.mark.parametrize("corruption", ["gaussian_noise", "glass_blur", "impulse_noise"])
def test_an_image_depends_on_the_seed_only_not_on_what_else_is_read(corruption, tmp_path):
    together, _ = load(corruption, 3, cache_dir=str(tmp_path / "a")).get(np.array([9999, 0]))
    apart = load(corruption, 3, cache_dir=str(tmp_path / "b"))
    first, second = apart.get([0])[0], apart.get([9999])[0]
    np.testing.assert_array_equal(together, np.concatenate([second, first]))
    other, _ = load(corruption, 3, seed=1, cache_dir=str(tmp_path / "c")).get(np.array([9999, 0]))
    assert (other != together).any(axis=(1, 2, 3)).all()


def test_corrupting_leaves_the_global_numpy_generator_alone():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    corruptions.corrupt(clean_test().images[0], 7, corruption="shot_noise", severity=2)
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_cache_serves_a_second_source_without_corrupting_again(monkeypatch):
    first = load("gaussian_noise", 3)
    images, _ = first.get(np.array([5, 0]))
    done = np.load(os.path.join(first.cache.folder, "done.npy"))
    assert done.dtype == np.bool_ and done.shape == (10000,)
    assert np.flatnonzero(done).tolist() == [0, 5]

    def fail(*args, **kwargs):
        raise AssertionError("corrupted an image that is cached")

    monkeypatch.setattr(imagecorruptions, "corrupt", fail)
    second = load("gaussian_noise", 3)
    assert second.cache.folder == first.cache.folder
    again, labels = second.get(np.array([0, 5, 5]))
    np.testing.assert_array_equal(again, images[[1, 0, 0]])
    np.testing.assert_array_equal(labels, clean_test().labels[[0, 5, 5]])
    with pytest.raises(AssertionError, match="cached"):  # the patch is what would corrupt
        second.get(np.array([1]))


def test_cache_folder_names_the_seed_and_fingerprints_the_clean_images(tmp_path):
    clean = clean_test()
    base = corruptions.corrupted_cache(clean, "fog", 1, 0, str(tmp_path)).folder
    assert base != corruptions.corrupted_cache(clean, "fog", 1, 1, str(tmp_path)).folder
    other = data.ArraySource(clean.images[::-1].copy(), clean.labels, 10)
    changed = corruptions.corrupted_cache(other, "fog", 1, 0, str(tmp_path)).folder
    assert os.path.dirname(os.path.dirname(changed)) != os.path.dirname(os.path.dirname(base))
    metas = sorted(os.listdir(tmp_path / "fashion_mnist_corrupted"))
    assert len(metas) == 2
    meta = (tmp_path / "fashion_mnist_corrupted" / metas[0] / "meta.json").read_text()
    assert "imagecorruptions-imaug==1.1.5" in meta and "test_images_sha256" in meta


def test_files_are_created_once_and_never_replaced(tmp_path):
    path = str(tmp_path / "x.npy")
    corruptions._create_npy(path, np.uint8, (4,))
    array = np.lib.format.open_memmap(path, mode="r+")
    array[1] = 7
    array.flush()
    corruptions._create_npy(path, np.uint8, (4,))  # a racing process: keeps the first file
    assert np.load(path).tolist() == [0, 7, 0, 0]
    assert os.listdir(tmp_path) == ["x.npy"]  # no temporary file left


@pytest.mark.parametrize("corruption", ["gaussian_noise", "contrast"])
def test_severity_5_changes_images_more_than_severity_1(corruption):
    indices = np.arange(0, 10000, 500)  # 20 images
    changes = [
        mean_abs_change(
            np.stack(
                [
                    corruptions.corrupt(
                        clean_test().images[i], int(i), corruption=corruption, severity=severity
                    )
                    for i in indices
                ]
            ),
            indices,
        )
        for severity in (1, 5)
    ]
    assert changes[1] > 1.5 * changes[0] > 0


def test_inverted_is_255_minus_the_clean_image():
    source = corruptions.load_shift("fashion_mnist_inverted")
    images, labels = source.get(FEW)
    np.testing.assert_array_equal(images, 255 - clean_test().images[FEW])
    np.testing.assert_array_equal(labels, clean_test().labels[FEW])


@pytest.mark.parametrize("name", ["fashion_mnist_rotated", "fashion_mnist_translated"])
def test_geometric_shifts_keep_labels_move_every_image_and_are_seeded(name):
    indices = np.arange(20)
    section = ml_collections.ConfigDict(dict(name=name, data_dir=""))
    source = data.get_source(section, "test", seed=0)
    images, labels = source.get(indices)
    assert images.shape == (20, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, clean_test().labels[indices])
    assert (images != clean_test().images[indices]).any(axis=(1, 2, 3)).all()
    np.testing.assert_array_equal(source.get(indices[::-1])[0], images[::-1])
    other = data.get_source(section, "test", seed=1).get(indices)[0]
    # Another seed moves most images otherwise (a translation has 16 offsets to choose from).
    assert (other != images).any(axis=(1, 2, 3)).mean() > 0.6


def test_translation_is_an_exact_shift_of_2_or_3_pixels_per_axis():
    image = clean_test().images[0]
    padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))  # zero fill
    steps = (-3, -2, 2, 3)
    seen = set()
    for seed in range(20):
        moved = corruptions.translate(image, seed)
        offsets = [
            (dy, dx)
            for dy in steps
            for dx in steps
            if (padded[3 - dy : 31 - dy, 3 - dx : 31 - dx] == moved).all()
        ]
        assert len(offsets) == 1, seed
        seen.add(offsets[0])
    assert len(seen) > 5


def test_rotation_keeps_most_of_the_garment():
    indices = np.arange(20)
    images, _ = corruptions.load_shift("fashion_mnist_rotated").get(indices)
    mass = images.reshape(20, -1).sum(1) / clean_test().images[indices].reshape(20, -1).sum(1)
    assert (mass > 0.7).all() and (mass < 1.1).all()


@pytest.mark.parametrize("name", ["fashion_mnist_corrupted/fog_1", "fashion_mnist_rotated"])
def test_only_the_test_split_exists(name):
    section = ml_collections.ConfigDict(dict(name=name, data_dir=""))
    with pytest.raises(errors.UserError, match=r"split 'train'; expected one of \['test'\]"):
        data.get_source(section, "train")


@pytest.mark.parametrize(
    "indices, match",
    [
        ([10000], "index 10000 is out of range; expected 0 <= index < 10000"),
        ([3, -1], "index -1 is out of range"),
        ([0.5], "indices must be a 1-D array of integers, got float64"),
    ],
)
@pytest.mark.parametrize("name", ["fashion_mnist_corrupted/fog_1", "fashion_mnist_inverted"])
def test_bad_indices_are_named(name, indices, match):
    section = ml_collections.ConfigDict(dict(name=name, data_dir=""))
    with pytest.raises(errors.UserError, match=match):
        data.get_source(section, "test").get(np.array(indices))


def test_bad_corruption_severity_and_seed_are_named():
    with pytest.raises(errors.UserError, match="'fashion_mnist_corrupted/fog_6'.*severity"):
        corruptions.load_corrupted("fog", 6)
    with pytest.raises(errors.UserError, match="'fashion_mnist_corrupted/rain_1'.*corruption"):
        corruptions.load_corrupted("rain", 1)
    with pytest.raises(errors.UserError, match="seed=-1; expected an integer >= 0"):
        corruptions.load_shift("fashion_mnist_rotated", seed=-1)


def test_generate_fills_the_first_images_of_each_set(tmp_path):
    corruptions.generate(["brightness", "pixelate"], [2], n_images=4, cache_dir=str(tmp_path))
    for corruption in ("brightness", "pixelate"):
        cache = load(corruption, 2, cache_dir=str(tmp_path)).cache
        assert np.flatnonzero(np.load(os.path.join(cache.folder, "done.npy"))).tolist() == [
            0,
            1,
            2,
            3,
        ]
