"""The input pipeline: preprocessing ops (parsing, the crops, decoding), batches that are a pure
function of (seed, step) whatever the hosts and worker processes, TFDS datasets written offline
(read, preprocessed, missing or half-built), ops checked in configs before anything is written,
and the evaluator's decode-once cache.

Cheap on purpose: tiny images, tiny batches, three iterators with worker processes in all
(each start costs seconds: the workers import JAX)."""

import io
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from seasoning import config_lib, data, errors, evaluation, threat, train
from seasoning.data import ops as ops_lib
from seasoning.data.tfds_source import CROP_FRACTION, TfdsSource
from seasoning.testing import tfds_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "configs/fmnist_cnn_linf.py")
OP_NAMES = "decode, resize_small, central_crop, inception_crop, flip_lr, pad_crop"

tfds.disable_progress_bar()


# ------------------------------------------------------------------------------------------
# Parsing.


_BAD_OPS = [
    ("decode|foo", "'foo'", f"Unknown preprocessing op 'foo'.*expected one of: {OP_NAMES}"),
    ("value_range(0, 1)", "'value_range(0, 1)'", r"batches are always float32 in \[0, 1\]"),
    ("central_crop(0)", "'central_crop(0)'", "size=0: expected an integer >= 1"),
    ("central_crop('a')", "\"central_crop('a')\"", "size='a': expected an integer >= 1"),
    (
        "inception_crop(224, area=(0.5, 0.1))",
        "'inception_crop(224, area=(0.5, 0.1))'",
        r"area=\(0.5, 0.1\): expected \(low, high\) with 0.0 < low <= high <= 1.0",
    ),
    (
        "inception_crop(224, aspect=(0, 1))",
        "'inception_crop(224, aspect=(0, 1))'",
        r"aspect=\(0, 1\): expected \(low, high\) with 0.0 < low",
    ),
    (
        "resize_small(256, method='lanczos')",
        "\"resize_small(256, method='lanczos')\"",
        r"method='lanczos'; expected one of \['area', 'bilinear', 'bicubic'\]",
    ),
    ("flip_lr(3)", "'flip_lr(3)'", "takes 1 positional argument but 2 were given"),
    ("flip_lr(p=0.3)", "'flip_lr(p=0.3)'", "unexpected keyword argument 'p'"),
    ("pad_crop(-1)", "'pad_crop(-1)'", "padding=-1: expected an integer >= 0"),
    ("decode||flip_lr", "'decode||flip_lr'", r"empty op between '\|'s"),
    ("flip_lr|", "'flip_lr|'", r"empty op between '\|'s"),
    ("__import__('os')", "\"__import__('os')\"", "Unknown preprocessing op '__import__'"),
    ("os.system('true')", "\"os.system('true')\"", "is not NAME or NAME\\(arguments\\)"),
    ("central_crop(224", "'central_crop(224'", "is not NAME or NAME\\(arguments\\)"),
]


@pytest.mark.parametrize("spec, named, pattern", _BAD_OPS, ids=[c[0] for c in _BAD_OPS])
def test_parse_refuses_bad_ops_naming_them(spec, named, pattern):
    with pytest.raises(errors.UserError) as e:
        ops_lib.parse(spec)
    message = str(e.value)
    assert named in message, message  # the op as written
    assert re.search(pattern, message), message
    assert "\n" not in message


def test_parse_never_executes_arguments(tmp_path):
    """Arguments are literals only: a call in them is refused, not run."""
    path = tmp_path / "created"
    calls = [
        f"central_crop(open({str(path)!r}, 'w'))",
        "pad_crop(__import__('os').getpid())",
        "resize_small(size=len('abc'))",
    ]
    for spec in calls:
        with pytest.raises(errors.UserError, match="arguments must be numbers, strings or tuples"):
            ops_lib.parse(spec)
    assert not path.exists()


def test_parse_round_trips_a_good_spec():
    spec = (
        " decode | resize_small(256, method='bicubic')|central_crop(224)|"
        "inception_crop(224, area=(0.05, 1.0))|flip_lr|pad_crop(4)"
    )
    ops = ops_lib.parse(spec)
    assert ops == (
        ops_lib.Decode(),
        ops_lib.ResizeSmall(256, "bicubic"),
        ops_lib.CentralCrop(224),
        ops_lib.InceptionCrop(224, area=(0.05, 1.0), aspect=(3 / 4, 4 / 3), method="bilinear"),
        ops_lib.FlipLr(),
        ops_lib.PadCrop(4),
    )
    assert [op.name for op in ops] == OP_NAMES.split(", ")
    # Each op's repr is an op as written: the ops written out parse back to themselves.
    assert ops_lib.parse("|".join(map(repr, ops))) == ops
    assert ops_lib.parse("") == () and ops_lib.parse("decode()") == (ops_lib.Decode(),)
    assert ops_lib.is_random(ops) and not ops_lib.is_random(ops[:3])
    assert [d is None for d in ops_lib.draw(ops, np.random.default_rng(0), 3)] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_random_ops_need_draws():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(errors.UserError, match="Op flip_lr is random; it needs draws"):
        ops_lib.apply(ops_lib.parse("central_crop(4)|flip_lr"), images)
    with pytest.raises(errors.UserError, match="'decode\\|flip_lr' is random"):
        data.Preprocessed(
            data.ArraySource(images, np.zeros(2, np.int32), 2),
            ops_lib.parse("decode|flip_lr"),
            "decode|flip_lr",
        )


# ------------------------------------------------------------------------------------------
# Resizing and central crops.


def _old_centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The project's resize before preprocessing ops (`dataset.image_size`), written out: the
    shorter side to size / 0.875 with PIL's bicubic, then the central size x size."""
    h, w, c = image.shape
    scale = size / 0.875 / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    resized = np.asarray(pil.resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size]
    return crop[..., None] if c == 1 else crop


# Shapes (height, width, channels) of random images: RGB and grey, portrait and landscape.
_SHAPES = [(40, 56, 3), (56, 40, 1), (37, 91, 3), (64, 64, 3), (23, 61, 1), (300, 20, 3)]


# 24, 64 and 224 have size / 0.875 with a fractional part below one half (224: none at all).
@pytest.mark.parametrize("size", [24, 32, 48, 64, 224])
def test_image_size_ops_equal_the_old_resize_and_crop(size):
    rng = np.random.default_rng(size)
    ops = (ops_lib.ResizeSmall(size / CROP_FRACTION, "bicubic"), ops_lib.CentralCrop(size))
    for shape in _SHAPES:
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        got = ops_lib.apply(ops, [image])
        assert got.shape == (1, size, size, shape[2]) and got.dtype == np.uint8
        np.testing.assert_array_equal(got[0], _old_centre_crop(image, size), err_msg=str(shape))
    # A TFDS dataset's `image_size` is exactly these ops after decode, for evaluation and
    # (with no crop_padding or flip) training.
    config = ml_collections.ConfigDict(
        dict(name="imagenet2012", data_dir="", image_size=size, crop_padding=0, flip=False)
    )
    for make_ops in (data.eval_ops, data.train_ops):
        spec, found = make_ops(config)
        assert found == (ops_lib.Decode(), *ops), spec
    png = tfds_datasets.png_images(image[None])[0]
    np.testing.assert_array_equal(ops_lib.apply(found, [png])[0], _old_centre_crop(image, size))


def test_resize_small_accepts_the_sizes_parse_accepts():
    """parse takes a whole float size (an integer by value, as errors.check_count checks)."""
    image = np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    for spec in ("resize_small(24)", "resize_small(24.0)", "resize_small(24.0, 'bicubic')"):
        assert ops_lib.apply(ops_lib.parse(spec), [image]).shape == (1, 24, 34, 3), spec


def test_central_crop_of_a_batch_is_its_centre():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 13, 18, 3), dtype=np.uint8)
    crop = ops_lib.parse("central_crop(8)")
    np.testing.assert_array_equal(ops_lib.apply(crop, images), images[:, 2:10, 5:13])
    np.testing.assert_array_equal(ops_lib.apply(crop, list(images)), images[:, 2:10, 5:13])
    np.testing.assert_array_equal(
        ops_lib.apply(ops_lib.parse("central_crop(13)"), images), images[:, :, 2:15]
    )
    with pytest.raises(errors.UserError, match=r"central_crop\(14\) got an image of 13x18"):
        ops_lib.apply(ops_lib.parse("central_crop(14)"), images)
    # Images of different sizes need a crop to one size to end up in one batch.
    mixed = [images[0], images[1, :12]]
    with pytest.raises(errors.UserError, match="'resize_small\\(9\\)' leaves images of"):
        ops_lib.apply(ops_lib.parse("resize_small(9)"), mixed, spec="resize_small(9)")
    assert ops_lib.apply(ops_lib.parse("resize_small(9)|central_crop(9)"), mixed).shape == (
        2,
        9,
        9,
        3,
    )


# ------------------------------------------------------------------------------------------
# Inception crops.


def _fallback(h: int, w: int, aspect: tuple[float, float]) -> tuple[int, int, int, int]:
    """The documented fallback: the central window of the largest aspect in range."""
    if w / h < aspect[0]:
        ch, cw = round(w / aspect[0]), w
    elif w / h > aspect[1]:
        ch, cw = h, round(h * aspect[1])
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _in_range(op, h, w, ch, cw) -> bool:
    """Whether a ch x cw window has an area fraction in op.area and an aspect in op.aspect, up
    to the rounding of each side (one pixel either way)."""
    low, high = op.area[0] * h * w, op.area[1] * h * w
    area_ok = (ch - 1) * (cw - 1) <= high and (ch + 1) * (cw + 1) >= low
    aspect_ok = (cw - 1) / (ch + 1) <= op.aspect[1] and (cw + 1) / max(ch - 1, 0.5) >= op.aspect[0]
    return area_ok and aspect_ok


@pytest.mark.parametrize(
    "op",
    [ops_lib.InceptionCrop(16), ops_lib.InceptionCrop(16, area=(0.25, 0.5), aspect=(0.5, 2.0))],
    ids=repr,
)
def test_inception_crop_windows_over_many_draws(op):
    n = 2000
    for h, w in [(40, 56), (56, 40), (64, 64), (20, 300), (300, 20), (9, 7)]:
        uniforms = op.draw(np.random.default_rng([h, w]), n)[0]
        assert uniforms.shape == (n, ops_lib.INCEPTION_ATTEMPTS, 4)
        fallback = _fallback(h, w, op.aspect)
        windows = np.array([op.window(h, w, u) for u in uniforms])
        top, left, ch, cw = windows.T
        assert np.all((ch >= 1) & (cw >= 1) & (top >= 0) & (left >= 0))
        assert np.all((top + ch <= h) & (left + cw <= w)), (h, w)
        random = np.array([_in_range(op, h, w, *win[2:]) for win in windows])
        is_fallback = np.all(windows == fallback, axis=1)
        # Every window is a random one in range, or the fallback.
        assert np.all(random | is_fallback), windows[~(random | is_fallback)][:5]
        area = (ch * cw / (h * w))[random & ~is_fallback]
        if (h, w) in [(20, 300), (300, 20)]:
            # Mostly nothing in range fits the elongated image: the fallback, central.
            assert 0.5 < is_fallback.mean() <= 1, is_fallback.mean()
            widest = max(op.aspect[1], 1 / op.aspect[0])  # both ops' ranges are symmetric
            assert sorted(fallback[2:]) == [min(h, w), round(min(h, w) * widest)]
        else:
            assert random.any() and not is_fallback.all()
            # Not degenerate: area fractions spread inside the range, both aspects occur, the
            # windows move.
            assert op.area[0] < area.mean() < op.area[1], area.mean()
            assert area.std() > 0.05 * (op.area[1] - op.area[0])
            assert (cw > ch).any() and (cw < ch).any()
            assert len(set(top.tolist())) > 3 and len(set(left.tolist())) > 3


def test_inception_crop_falls_back_only_after_every_attempt():
    op = ops_lib.InceptionCrop(16)
    # Full area at aspect 3/4 fits none of these images: every attempt fails.
    impossible = np.tile([0.999, 0.0, 0.5, 0.5], (ops_lib.INCEPTION_ATTEMPTS, 1))
    assert op.window(20, 300, impossible) == (0, 136, 20, 27)  # wide: the height, aspect 4/3
    assert op.window(40, 56, impossible) == (0, 1, 40, 53)
    wide_impossible = impossible.copy()
    wide_impossible[:, 1] = 0.999  # aspect 4/3 fits no tall image
    assert op.window(300, 20, wide_impossible) == (136, 0, 27, 20)  # tall: the width, 3/4
    # The last attempt fits: it is taken, not the fallback.
    last_fits = impossible.copy()
    last_fits[-1] = [0.0, 0.5, 0.0, 0.999]  # the smallest area, aspect 1, top-right
    top, left, ch, cw = op.window(40, 56, last_fits)
    assert (top, left + cw) == (0, 56) and ch == cw and abs(ch * cw - 0.08 * 40 * 56) < 2 * ch + 1


def test_inception_crop_and_flip_apply():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(40 + i, 56 - i, 3), dtype=np.uint8) for i in range(12)]
    ops = ops_lib.parse("inception_crop(16)|flip_lr")
    draws = ops_lib.draw(ops, np.random.default_rng([7, 0]), 12)
    out = ops_lib.apply(ops, images, draws)
    assert out.shape == (12, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(ops_lib.apply(ops, images, draws), out)  # same draws
    other = ops_lib.apply(ops, images, ops_lib.draw(ops, np.random.default_rng([7, 1]), 12))
    assert not np.array_equal(other, out)
    flips = draws[1][0]
    assert flips.any() and not flips.all()  # both outcomes
    unflipped = ops_lib.apply(ops[:1], images, draws[:1])
    np.testing.assert_array_equal(
        out, np.where(flips[:, None, None, None], unflipped[:, :, ::-1], unflipped)
    )
    # The window is cropped out of the image and resized (bilinear: a constant stays constant).
    flat = [np.full((40, 56, 3), 200, np.uint8)] * 12
    np.testing.assert_array_equal(ops_lib.apply(ops, flat, draws), 200)
    # A host's rows of a global batch: its slice of the draws.
    rows = slice(4, 8)
    np.testing.assert_array_equal(ops_lib.apply(ops, images[rows], draws, rows=rows), out[rows])


# ------------------------------------------------------------------------------------------
# Decoding.


def _pil_decode(encoded: bytes) -> np.ndarray:
    image = np.asarray(Image.open(io.BytesIO(encoded)))
    return image[..., None] if image.ndim == 2 else image


def test_decode_gives_the_pixels_pil_decodes():
    jpegs = tfds_datasets.imagenet_like_jpegs(4, sizes=((40, 56), (56, 40)))
    for jpeg in jpegs:
        got, expected = ops_lib.decode_image(jpeg), _pil_decode(jpeg)
        assert got.shape == expected.shape and got.dtype == np.uint8
        # libjpeg-turbo and PIL's libjpeg may round the IDCT differently.
        assert np.abs(got.astype(int) - expected).mean() < 2
    rng = np.random.default_rng(0)
    for shape in [(12, 9, 3), (12, 9, 1), (7, 31, 3)]:
        images = rng.integers(0, 256, size=(2, *shape), dtype=np.uint8)
        decoded = ops_lib.apply(ops_lib.parse("decode"), tfds_datasets.png_images(images))
        np.testing.assert_array_equal(decoded, images)  # PNG: exact, grey with C = 1
    grey_jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(16, 24), dtype=np.uint8)).save(grey_jpeg, "JPEG")
    grey = ops_lib.decode_image(grey_jpeg.getvalue())
    assert grey.shape == (16, 24, 1)
    assert np.abs(grey.astype(int) - _pil_decode(grey_jpeg.getvalue())).mean() < 2
    rgba = io.BytesIO()
    pixels = rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(rgba, "PNG")
    np.testing.assert_array_equal(ops_lib.decode_image(rgba.getvalue()), pixels[..., :3])
    # Arrays pass through decode unchanged.
    np.testing.assert_array_equal(ops_lib.apply(ops_lib.parse("decode"), images), images)
    with pytest.raises(errors.UserError, match="Cannot decode an image of 9 bytes"):
        ops_lib.decode_image(b"not a png")


@pytest.mark.parametrize(
    "spec", ["resize_small(8)", "central_crop(8)", "inception_crop(8)", "flip_lr", "pad_crop(2)"]
)
def test_encoded_images_need_decode_first(spec):
    ops = ops_lib.parse(spec)
    encoded = tfds_datasets.png_images(np.zeros((2, 9, 9, 3), np.uint8))
    name = spec.partition("(")[0]
    with pytest.raises(errors.UserError, match=f"Op '{name}' got encoded images: list 'decode'"):
        ops_lib.apply(ops, encoded, ops_lib.draw(ops, np.random.default_rng(0), 2))
    decoded = ops_lib.parse(f"decode|{spec}")
    out = ops_lib.apply(decoded, encoded, ops_lib.draw(decoded, np.random.default_rng(0), 2))
    assert out.dtype == np.uint8 and len(out) == 2


def test_no_ops_on_encoded_images_ask_for_decode():
    encoded = tfds_datasets.png_images(np.zeros((2, 9, 9, 3), np.uint8))
    with pytest.raises(errors.UserError, match="leaves encoded images: start it with 'decode'"):
        ops_lib.apply((), encoded)


# ------------------------------------------------------------------------------------------
# Batches with worker processes: a pure function of (seed, step).


def _array_source(n=256, shape=(16, 16, 3)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return data.ArraySource(images, rng.integers(0, 10, size=n).astype(np.int32), 10)


def _take(iterator, steps: int) -> list[dict]:
    """`steps` batches of an iterator, which is closed after (its workers stop)."""
    try:
        return [next(iterator) for _ in range(steps)]
    finally:
        iterator.close()


def _assert_same(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a["image"].dtype == np.uint8 and a["label"].dtype == np.int32
        np.testing.assert_array_equal(a["image"], b["image"], err_msg=f"step {step}")
        np.testing.assert_array_equal(a["label"], b["label"], err_msg=f"step {step}")


def test_hosts_read_disjoint_rows_of_the_same_global_batches():
    """Resumed at step 5, two hosts read disjoint rows that make up the global batches one host
    reads from step 0 (with worker processes: test_tfds_jpegs_through_workers)."""
    source = _array_source()
    spec = "pad_crop(2)|flip_lr"
    kwargs = dict(seed=5, ops=ops_lib.parse(spec), spec=spec)
    expected = _take(data.train_batches(source, 8, num_workers=0, **kwargs), 8)
    assert len({e["image"].tobytes() for e in expected}) == 8
    hosts = [
        _take(
            data.train_batches(source, 8, start_step=5, process_index=i, process_count=2, **kwargs),
            3,
        )
        for i in range(2)
    ]
    make = data.StepBatch(
        source, kwargs["ops"], spec, global_batch_size=8, seed=5, rows=slice(0, 8)
    )
    for step, (zero, one) in enumerate(zip(*hosts, strict=True), start=5):
        assert len(zero["label"]) == len(one["label"]) == 4
        whole = {k: np.concatenate([zero[k], one[k]]) for k in ("image", "label")}
        _assert_same([whole], [expected[step]])
        assert len(set(make.indices(step).tolist())) == 8  # the hosts' rows: other examples


# ------------------------------------------------------------------------------------------
# TFDS datasets written offline.

IMAGENET_LIKE, CIFAR_LIKE = "tiny_imagenet_like", "tiny_cifar_like"


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A data_dir with an ImageNet-like JPEG dataset (24 images of 40x56 and 56x40, 4 classes)
    and a CIFAR-like PNG dataset (16 images of 32x32, labelled with their index)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    jpegs = tfds_datasets.imagenet_like_jpegs(24, sizes=((40, 56), (56, 40)))
    tfds_datasets.write(
        data_dir, IMAGENET_LIKE, {"train": (jpegs, [i % 4 for i in range(24)])}, num_classes=4
    )
    pixels = np.random.default_rng(1).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    tfds_datasets.write(
        data_dir,
        CIFAR_LIKE,
        {"train": (tfds_datasets.png_images(pixels), list(range(16)))},
        num_classes=16,
        encoding="png",
    )
    return {"dir": data_dir, "jpegs": jpegs, "pixels": pixels}


@pytest.mark.slow
def test_tfds_jpegs_through_workers(tfds_dir):
    """JPEG records through the ops: one host in a thread reads the global batches; resumed at
    step 1, host 1 of 2 reads its rows in 2 worker processes (the source reopened in each,
    steps interleaved over them) and host 0 in a thread; together they are those batches.
    (One iterator with workers in this file: each start costs seconds; test_train.py's kill -9
    test compares whole runs with and without a worker.)"""
    source = TfdsSource(IMAGENET_LIKE, "train", data_dir=tfds_dir["dir"])
    spec = "decode|inception_crop(32)|flip_lr"
    kwargs = dict(seed=2, ops=ops_lib.parse(spec), spec=spec)
    expected = _take(data.train_batches(source, 4, num_workers=0, **kwargs), 5)
    for batch in expected:
        assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    hosts = [
        _take(
            data.train_batches(
                source,
                4,
                start_step=1,
                process_index=i,
                process_count=2,
                num_workers=workers,
                **kwargs,
            ),
            4,
        )
        for i, workers in [(0, 0), (1, 2)]
    ]
    assert not multiprocessing.active_children()  # close() stopped the workers
    for step, (zero, one) in enumerate(zip(*hosts, strict=True), start=1):
        whole = {k: np.concatenate([zero[k], one[k]]) for k in ("image", "label")}
        _assert_same([whole], [expected[step]])


def test_tfds_records_are_the_encoded_images(tfds_dir):
    source = TfdsSource(IMAGENET_LIKE, "train", data_dir=tfds_dir["dir"])
    assert len(source) == 24 and source.num_classes == 4 and source.label_width is None
    images, labels = source.read(np.arange(24))
    # The JPEGs as written, not decoded, in the order TFDS shuffled them into, each with its label.
    written = [tfds_dir["jpegs"].index(image) for image in images]
    assert sorted(written) == list(range(24))
    np.testing.assert_array_equal(labels, np.array(written) % 4)
    assert labels.dtype == np.int32
    some, none = source.read(np.array([3, 0, 17]), labels=False)
    assert some == [images[3], images[0], images[17]] and none is None


def test_tfds_preprocessed_is_the_ops_on_each_record(tfds_dir):
    records = TfdsSource(IMAGENET_LIKE, "train", data_dir=tfds_dir["dir"])
    spec = "decode|resize_small(36)|central_crop(32)"
    ops = ops_lib.parse(spec)
    source = data.Preprocessed(records, ops, spec)
    assert source.image_shape == (32, 32, 3) and len(source) == 24 and source.num_classes == 4
    assert source.label_names == records.label_names
    indices = np.array([5, 0, 11, 11, 20])
    images, labels = source.get(indices)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    encoded, expected_labels = records.read(indices)
    np.testing.assert_array_equal(labels, expected_labels)
    for image, record in zip(images, encoded, strict=True):
        decoded = ops_lib.decode_image(record)
        assert decoded.shape in [(40, 56, 3), (56, 40, 3)]
        np.testing.assert_array_equal(image, ops_lib.apply(ops[1:], [decoded])[0])
    np.testing.assert_array_equal(images[2], images[3])
    assert not np.array_equal(images[0], images[1])


def test_tfds_pngs_with_pad_crop_and_flip(tfds_dir):
    source = TfdsSource(CIFAR_LIKE, "train", data_dir=tfds_dir["dir"])
    spec = "decode|pad_crop(4)|flip_lr"
    batches = _take(data.train_batches(source, 8, seed=0, ops=ops_lib.parse(spec), spec=spec), 4)
    seen = np.concatenate([b["label"] for b in batches])
    assert sorted(seen[:16].tolist()) == list(range(16))  # an epoch: every example once
    moved = 0
    for batch in batches:
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
        for image, label in zip(batch["image"], batch["label"], strict=True):
            padded = np.pad(tfds_dir["pixels"][label], ((4, 4), (4, 4), (0, 0)))
            windows = {(y, x): padded[y : y + 32, x : x + 32] for y in range(9) for x in range(9)}
            found = [
                k
                for k, win in windows.items()
                if np.array_equal(image, win) or np.array_equal(image, win[:, ::-1])
            ]
            assert found, label  # a window of the zero-padded original, maybe mirrored
            moved += found[0] != (4, 4)
    assert moved > 0


# ------------------------------------------------------------------------------------------
# Missing or half-built TFDS datasets: one line with the command that prepares them.


def _edit_info(folder: str, edit) -> None:
    path = os.path.join(folder, "dataset_info.json")
    with open(path) as f:
        info = json.load(f)
    edit(info)
    with open(path, "w") as f:
        json.dump(info, f)


def _copy(tfds_dir, tmp_path) -> tuple[str, str]:
    """(data_dir, dataset folder) of a copy of the written datasets."""
    data_dir = str(tmp_path / "copy")
    shutil.copytree(tfds_dir["dir"], data_dir)
    return data_dir, os.path.join(data_dir, IMAGENET_LIKE, "1.0.0")


def _no_splits(tfds_dir, tmp_path):
    data_dir, folder = _copy(tfds_dir, tmp_path)
    _edit_info(folder, lambda info: info.pop("splits"))
    return IMAGENET_LIKE, "train", data_dir


def _tfrecord(tfds_dir, tmp_path):
    data_dir, folder = _copy(tfds_dir, tmp_path)
    _edit_info(folder, lambda info: info.update(fileFormat="tfrecord"))
    for name in os.listdir(folder):
        if "array_record" in name:
            os.rename(
                os.path.join(folder, name),
                os.path.join(folder, name.replace("array_record", "tfrecord")),
            )
    return IMAGENET_LIKE, "train", data_dir


def _files_deleted(tfds_dir, tmp_path):
    data_dir, folder = _copy(tfds_dir, tmp_path)
    deleted = [n for n in os.listdir(folder) if "-train.array_record" in n]
    assert deleted
    for name in deleted:
        os.remove(os.path.join(folder, name))
    return IMAGENET_LIKE, "train", data_dir


def _default_dir(tfds_dir, tmp_path, monkeypatch):
    """cifar10 in the default data_dir, with HOME an empty folder. TFDS reads its default
    data_dir from HOME when it is imported, so it is set again as a fresh process would."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    constants = tfds.core.constants
    monkeypatch.setattr(constants, "DATA_DIR", constants.get_default_data_dir())
    assert constants.DATA_DIR == str(home / "tensorflow_datasets")
    return "cifar10", "train", ""


_MISSING = {
    "no_folder": lambda d, tmp, mp: ("cifar10", "train", str(tmp)),
    "no_splits": lambda d, tmp, mp: _no_splits(d, tmp),
    "tfrecord": lambda d, tmp, mp: _tfrecord(d, tmp),
    "missing_split": lambda d, tmp, mp: (IMAGENET_LIKE, "validation", d["dir"]),
    "files_deleted": lambda d, tmp, mp: _files_deleted(d, tmp),
    "default_data_dir": _default_dir,
}


@pytest.mark.parametrize("case", list(_MISSING))
def test_missing_or_half_built_tfds_dataset_is_one_line(case, tfds_dir, tmp_path, monkeypatch):
    name, split, data_dir = _MISSING[case](tfds_dir, tmp_path, monkeypatch)
    with pytest.raises(errors.MissingInputError) as e:
        TfdsSource(name, split, data_dir=data_dir)
    message = str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, errors.UserError)
    assert "\n" not in message, message
    where = f" --data_dir={data_dir}" if data_dir else ""
    assert f"`tfds build {name} --file_format=array_record{where}`" in message, message
    assert f"(split {split!r})" in message
    assert message.endswith(
        "on a machine with internet (ImageNet and its ReaL/-C variants also need ImageNet's "
        "manual download), then copy the data_dir here."
    )
    if case in ("no_folder", "default_data_dir"):
        folder = os.path.join(
            data_dir or os.path.join(os.environ["HOME"], "tensorflow_datasets"), name
        )
        assert f"(no folder {folder})" in message
    if case == "default_data_dir":
        assert f"in {os.environ['HOME']}/tensorflow_datasets" in message
        assert isinstance(e.value.__cause__, KeyError)  # TFDS: "splits is empty"
        assert not os.listdir(os.environ["HOME"])  # nothing written there
    if case == "missing_split":
        assert "Unknown split 'validation'" in message


@pytest.mark.slow
def test_cli_missing_dataset_is_one_line_and_writes_nothing(tmp_path):
    empty, workdir = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seasoning.train",
            "--config=configs/cifar10_wrn28_10_linf.py",
            f"--workdir={workdir}",
            f"--config.dataset.data_dir={empty}",
        ],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert last.startswith("error: TFDS dataset 'cifar10' (split 'train') is not prepared"), out
    assert f"`tfds build cifar10 --file_format=array_record --data_dir={empty}`" in last
    assert last.endswith("then copy the data_dir here.")
    assert not workdir.exists()


# ------------------------------------------------------------------------------------------
# Ops in configs: checked before anything is written.


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["dataset.pp_train=decode|flop_lr"], "Unknown preprocessing op 'flop_lr'"),
        (
            ["dataset.pp_train=decode|pad_crop(2)|flip_lr", "dataset.flip=True"],
            r"dataset.pp_train='decode\|pad_crop\(2\)\|flip_lr'.*dataset.flip=True",
        ),
        (
            ["dataset.pp_train=decode|flip_lr", "dataset.crop_padding=2"],
            r"dataset.pp_train='decode\|flip_lr'.*dataset.crop_padding=2",
        ),
        (["dataset.pp_eval=decode|flip_lr"], r"dataset.pp_eval='decode\|flip_lr' has a random op"),
        (["dataset.pp_eval=decode|central_crop(0)"], r"Op 'central_crop\(0\)': size=0"),
    ],
    ids=[
        "unknown_op",
        "pp_train_and_flip",
        "pp_train_and_crop_padding",
        "random_pp_eval",
        "bad_pp_eval",
    ],
)
def test_config_ops_are_refused_before_anything_is_written(overrides, pattern, tmp_path):
    config = config_lib.load_config(f"{FMNIST}:runlocal", overrides)
    workdir = tmp_path / "run"
    with pytest.raises(errors.UserError, match=pattern) as e:
        train.train_and_evaluate(config, str(workdir))
    assert "\n" not in str(e.value)
    assert not workdir.exists()


def test_config_image_size_with_ops_is_refused():
    config = ml_collections.ConfigDict(
        dict(
            name="imagenet2012",
            data_dir="",
            image_size=224,
            crop_padding=0,
            flip=False,
            pp_train="decode|inception_crop(224)",
            pp_eval="decode|central_crop(224)",
        )
    )
    for make_ops, key in ((data.train_ops, "pp_train"), (data.eval_ops, "pp_eval")):
        with pytest.raises(errors.UserError, match=f"dataset.{key}=.*image_size=224"):
            make_ops(config)


# ------------------------------------------------------------------------------------------
# The evaluator decodes each point once.


class _CountingRecords:
    """In-memory records that count how often each index is read."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int):
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.reads = np.zeros(len(images), np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices, *, labels=True):
        indices = np.asarray(indices, np.int64).reshape(-1)
        np.add.at(self.reads, indices, 1)
        return self.images[indices], self.labels[indices] if labels else None


def _linear(variables, x):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def test_evaluator_decodes_each_point_once():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 10, 10, 3), dtype=np.uint8)
    variables = {
        "w": rng.normal(size=(8 * 8 * 3, 10)).astype(np.float32),
        "b": np.zeros(10, np.float32),
    }
    crops = data.to_float(images[:, 1:9, 1:9])
    labels = np.argmax(np.asarray(_linear(variables, crops)), axis=1).astype(np.int32)
    settings = evaluation.AttackSettings.make(
        [threat.parse("linf:1/255")], "fast", attacks=("apgd-ce",), n_iter=2
    )
    evaluator = evaluation.Evaluator(_linear, settings, batch_size=8)
    results, reads = [], []
    for cache in (True, False):
        records = _CountingRecords(images, labels, 10)
        source = data.Preprocessed(records, ops_lib.parse("central_crop(8)"), "central_crop(8)")
        assert source.image_shape == (8, 8, 3)
        assert records.reads.tolist() == [1] + [0] * 15  # its first image, for the shape
        records.reads[:] = 0
        if not cache:
            source = data.Cached(source, max_bytes=0)  # reads through every time
        results.append(evaluator.run(variables, source, np.arange(16), key=jax.random.key(0)))
        reads.append(records.reads.copy())
    cached, uncached = results
    assert cached.accuracies()["clean"] == 1.0  # every point then goes through the attack
    np.testing.assert_array_equal(reads[0], 1)  # clean pass, attack and final check: one read
    assert np.all(reads[1] >= 2), reads[1]  # the clean pass and the final check at least
    np.testing.assert_array_equal(cached.flags, uncached.flags)
    assert evaluation.decoded_once(source) is source  # a Cached source is kept as it is
    assert isinstance(evaluation.decoded_once(source.source), data.Cached)
