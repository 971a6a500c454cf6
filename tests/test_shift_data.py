"""The shifted test sets of CIFAR-10 and ImageNet: registry entries, TFDS loading on mock data,
and the label-space heads (ImageNet-A/R masks, the 16 categories of the conflict stimuli)."""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from seasoning import data, errors
from seasoning.data import shifts
from seasoning.data.tfds_source import TfdsSource

IMAGENET_SETS = [
    "imagenet2012_real",
    "imagenet_v2/matched-frequency",
    "imagenet_a",
    "imagenet_r",
    "imagenet_sketch",
    "geirhos_conflict_stimuli",
]
CIFAR10_SETS = ["cifar10_1/v6"]
GROUPS = {"imagenet2012_corrupted": "imagenet2012", "cifar10_corrupted": "cifar10"}


def _config(name: str, image_size: int, data_dir: str = "") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name=name, data_dir=data_dir, image_size=image_size))


def test_entries_are_registered_with_their_parents_radii():
    parents = {**{n: "imagenet2012" for n in IMAGENET_SETS}, **{n: "cifar10" for n in CIFAR10_SETS}}
    for group, parent in GROUPS.items():
        parents |= {group: parent} | {m: parent for m in data.DATASETS[group].members}
    assert set(shifts.ENTRIES) == set(parents)
    for name, parent in parents.items():
        entry = data.DATASETS[name]
        assert ":" not in name and entry is shifts.ENTRIES[name]
        assert data.default_threats(name) == data.default_threats(parent)
        assert entry.tfds_name == (None if entry.members else name)
    splits = {n: data.DATASETS[n].default_split for n in parents}
    assert splits["imagenet2012_real"] == "validation"
    assert splits["imagenet2012_corrupted/fog_3"] == "validation"
    assert splits["imagenet_a"] == splits["cifar10_corrupted/fog_3"] == "test"
    assert data.DATASETS["geirhos_conflict_stimuli"].model_classes == 1000


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_groups_have_75_members_that_tfds_knows(group):
    members = data.members(group)
    assert len(members) == len(set(members)) == 75
    assert all(data.DATASETS[m].load is not None and not data.DATASETS[m].members for m in members)
    # The config names exist in the TFDS builder (its spelling: frosted_glass_blur, elastic).
    configs = {c.name for c in tfds.builder_cls(group).BUILDER_CONFIGS}
    assert {m.split("/")[1] for m in members} <= configs
    with pytest.raises(errors.UserError, match="is a group of 75 datasets"):
        data.get_source(_config(group, 0), "test")


def test_other_tfds_configs_exist():
    for name in ["imagenet_v2/matched-frequency", "cifar10_1/v6"]:
        family, config = name.split("/")
        assert config in {c.name for c in tfds.builder_cls(family).BUILDER_CONFIGS}


@pytest.mark.parametrize(
    "name, image_size, num_classes",
    [
        ("imagenet_a", 32, 1000),
        ("imagenet_r", 32, 1000),
        ("imagenet_sketch", 32, 1000),
        ("imagenet_v2/matched-frequency", 32, 1000),
        ("imagenet2012_corrupted/glass_blur_2", 32, 1000),
        ("geirhos_conflict_stimuli", 32, 16),
        ("cifar10_1/v6", 0, 10),
        ("cifar10_corrupted/frosted_glass_blur_5", 0, 10),
    ],
)
def test_entries_load_mock_data(name, image_size, num_classes):
    entry = data.DATASETS[name]
    with tfds.testing.mock_data(num_examples=6):
        source = data.get_source(_config(name, image_size), entry.default_split)
        images, labels = source.get(np.arange(6))
    assert len(source) == 6 and source.num_classes == num_classes
    assert source.image_shape == (32, 32, 3)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (6,) and labels.dtype == np.int32
    assert ((labels >= 0) & (labels < num_classes)).all()


def test_conflict_stimuli_label_names_are_the_head_order():
    with tfds.testing.mock_data(num_examples=2):
        source = data.get_source(_config("geirhos_conflict_stimuli", 32), "test")
    assert source.label_names == shifts.CONFLICT_CATEGORIES


def test_imagenet_real_pads_label_sets_and_rejects_longer_ones():
    entry = data.DATASETS["imagenet2012_real"]
    with tfds.testing.mock_data(num_examples=4):
        source = data.get_source(_config("imagenet2012_real", 32), entry.default_split)
        assert len(source) == 4 and source.num_classes == 1000
        assert source.image_shape == (32, 32, 3) and source.label_width == shifts.REAL_MAX_LABELS
        # Mock label lists hold 5 to 49 labels, more than ReaL's 9: reading them must fail.
        with pytest.raises(errors.UserError, match=r"has \d+ labels in 'real_label'.*at most 9"):
            source.get(np.arange(4))
        records = TfdsSource(
            "imagenet2012_real", "validation", label_key="real_label", max_labels=64
        )
        wide = data.Preprocessed(records, data.ops.parse("resize_small(37)|central_crop(32)"), "")
        images, labels = wide.get(np.array([3, 0]))
        raw = [np.asarray(records._source[i]["real_label"]) for i in (3, 0)]
    assert images.shape == (2, 32, 32, 3) and labels.shape == (2, 64) and labels.dtype == np.int32
    for row, found in zip(labels, raw, strict=True):
        np.testing.assert_array_equal(row[: len(found)], found)
        assert (row[len(found) :] == -1).all() and (found >= 0).all() and (found < 1000).all()


def test_tfds_source_label_key_errors():
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(errors.UserError, match=r"no class-label feature 'label'.*'real_label'"):
            TfdsSource("imagenet2012_real", "validation")
        with pytest.raises(errors.UserError, match="variable number of labels: pass max_labels"):
            TfdsSource("imagenet2012_real", "validation", label_key="real_label")


def test_missing_dataset_names_the_build_command_with_its_config(tmp_path):
    config = _config("imagenet_v2/matched-frequency", 32, data_dir=str(tmp_path))
    command = (
        f"tfds build imagenet_v2/matched-frequency --file_format=array_record --data_dir={tmp_path}"
    )
    with pytest.raises(errors.MissingInputError, match=re.escape(command)):
        data.get_source(config, "test")


@pytest.mark.parametrize(
    "name, indices",
    [("imagenet_a", shifts.IMAGENET_A_INDICES), ("imagenet_r", shifts.IMAGENET_R_INDICES)],
)
def test_imagenet_a_r_masks(name, indices):
    head = data.DATASETS[name].head
    mask = np.flatnonzero(np.isfinite(head(jnp.zeros(1000))))
    assert len(set(indices)) == 200 and mask.tolist() == sorted(indices)
    assert (mask >= 0).all() and (mask < 1000).all()
    logits = jax.random.normal(jax.random.key(0), (8, 1000))
    outside = np.setdiff1d(np.arange(1000), mask)[:8]
    logits = logits.at[np.arange(8), outside].set(100.0)  # the largest logit lies outside
    best_inside = mask[np.argmax(np.asarray(logits)[:, mask], axis=1)]
    np.testing.assert_array_equal(shifts.predictions(head, logits), best_inside)
    np.testing.assert_allclose(jnp.exp(shifts.label_log_probs(head, logits)).sum(-1), 1, rtol=1e-5)


def _conflict_head():
    return data.DATASETS["geirhos_conflict_stimuli"].head


def test_conflict_stimuli_one_class_predicts_its_category():
    categories = shifts.CONFLICT_CATEGORIES
    # Two points a category: nearly all mass on its first, then on its last ImageNet class.
    hot = [shifts.CONFLICT_IMAGENET_INDICES[c][k] for c in categories for k in (0, -1)]
    logits = np.zeros((len(hot), 1000), np.float32)
    logits[np.arange(len(hot)), hot] = 50.0
    predicted = jax.jit(functools.partial(shifts.predictions, _conflict_head()))(logits)
    np.testing.assert_array_equal(predicted, np.repeat(np.arange(len(categories)), 2))


def test_conflict_stimuli_decide_by_mean_not_sum():
    dog, cat = (shifts.CONFLICT_IMAGENET_INDICES[c] for c in ("dog", "cat"))
    probs = np.full(1000, 1e-9)
    probs[list(dog)] = 0.6 / len(dog)  # dog: more total mass, spread over 109 classes
    probs[list(cat)] = 0.4 / len(cat)  # cat: less total mass, over 6 classes
    log_probs = jax.jit(_conflict_head())(jnp.log(probs / probs.sum()))
    # model-vs-human averages: cat's mean (0.4 / 6) beats dog's (0.6 / 109); a sum would pick dog.
    assert shifts.CONFLICT_CATEGORIES[int(jnp.argmax(log_probs))] == "cat"
    # The head is the log of the normalised means.
    p = probs / probs.sum()
    means = np.array(
        [p[list(shifts.CONFLICT_IMAGENET_INDICES[c])].mean() for c in shifts.CONFLICT_CATEGORIES]
    )
    np.testing.assert_allclose(jnp.exp(log_probs), means / means.sum(), rtol=1e-4)


def test_heads_reject_logits_that_are_not_imagenet_1k():
    for name in ["imagenet_a", "geirhos_conflict_stimuli"]:
        with pytest.raises(errors.UserError, match="expected 1000 logits"):
            data.DATASETS[name].head(jnp.zeros((2, 10)))


def test_multi_label_scoring_with_padding_and_an_unlabelled_row():
    labels = np.array([[3, 5, -1], [-1, -1, -1], [2, -1, -1]], dtype=np.int32)
    log_probs = jax.nn.log_softmax(jax.random.normal(jax.random.key(1), (3, 8)))
    p = np.exp(np.asarray(log_probs))
    nll = shifts.label_nll(log_probs, jnp.asarray(labels))
    np.testing.assert_allclose(nll, [-np.log(p[0, 3] + p[0, 5]), 0.0, -np.log(p[2, 2])], rtol=1e-5)
    np.testing.assert_array_equal(shifts.scored(labels), [True, False, True])
    predicted = np.array([[5, 0, 1], [3, 4, 2], [0, 0, 0]])  # one row per model
    np.testing.assert_array_equal(
        shifts.correct(predicted, labels),
        [[True, False, False], [True, False, True], [False, False, False]],
    )
    np.testing.assert_allclose(shifts.accuracy(predicted, labels), [0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="No scored point"):
        shifts.accuracy(predicted[:, 1:2], labels[1:2])


@pytest.mark.parametrize("name", ["imagenet_a", "imagenet_r", "geirhos_conflict_stimuli"])
def test_evaluate_and_soup_refuse_datasets_scored_through_a_head(name):
    train = ml_collections.ConfigDict(
        dict(name="imagenet2012", data_dir="", image_size=224, eval_split="validation")
    )
    with pytest.raises(errors.UserError, match=f"{name}.*seasoning.shift"):
        data.eval_dataset(train, name)
    section, split = data.eval_dataset(train, name, allow_heads=True)
    assert section.name == name and split == "test" and section.image_size == 224
