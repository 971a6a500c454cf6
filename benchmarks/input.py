"""Input pipeline throughput: images/s of the Grain pipeline per dataset and worker count.

  .venv/bin/python benchmarks/input.py [--pipelines=...] [--workers=0,1,2] [--seconds=4]
      [--data_dir=DIR] [--jpegs=512] [--pngs=20000] [--batch_size=128]

Writes its own data first (in --data_dir, default a temporary folder; kept there for the next
run): an ImageNet-like TFDS dataset of `--jpegs` JPEGs in array_record (ImageNet's usual sizes,
500x375 and the like, quality 90, ~100 kB each) and a CIFAR-like one of `--pngs` 32x32 PNGs
(how TFDS stores CIFAR-10), both through `seasoning.testing.tfds_datasets`; Fashion-MNIST is
the real one (in memory). Then, for each pipeline and worker count, reads batches of
`--batch_size` through `data.train_batches` (what training reads) for `--seconds` after a
first batch (the workers' start) and prints one JSON line:

  {"benchmark": "input", "pipeline": NAME, "workers": N, "images_per_s": X, ...}

Pipelines:
  pil_one_thread: the project's path before Grain, kept as the baseline: one thread, PIL
    decode, PIL bicubic resize of the shorter side to 256, centre crop 224.
  imagenet_train: decode|inception_crop(224)|flip_lr (the ImageNet configs' training ops).
  imagenet_eval: decode|resize_small(256)|central_crop(224) (their evaluation ops).
  imagenet_eval_threads: the same ops as the evaluator reads them (`data.Preprocessed`:
    decoding threads in this process, one per core; `workers` is the thread count).
  cifar10_train: decode|pad_crop(4)|flip_lr on the PNG records.
  fashion_mnist_train: the in-memory Fashion-MNIST training split, no augmentation.

Run by hand; results go into docs/benchmarks.md ("Input throughput").
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from seasoning import data
from seasoning.data import fashion_mnist
from seasoning.data.tfds_source import TfdsSource
from seasoning.testing import tfds_datasets

PIPELINES = (
    "pil_one_thread",
    "imagenet_train",
    "imagenet_eval",
    "imagenet_eval_threads",
    "cifar10_train",
    "fashion_mnist_train",
)
OPS = {
    "imagenet_train": "decode|inception_crop(224)|flip_lr",
    "imagenet_eval": "decode|resize_small(256)|central_crop(224)",
    "imagenet_eval_threads": "decode|resize_small(256)|central_crop(224)",
    "cifar10_train": "decode|pad_crop(4)|flip_lr",
    "fashion_mnist_train": "decode",
}

_PIPELINES = flags.DEFINE_list("pipelines", list(PIPELINES), f"From {list(PIPELINES)}.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to measure.")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Seconds measured per pipeline and worker count.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where the datasets are written ('' = temp).")
_JPEGS = flags.DEFINE_integer("jpegs", 512, "Images of the ImageNet-like dataset.")
_PNGS = flags.DEFINE_integer("pngs", 20_000, "Images of the CIFAR-like dataset.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Images per batch.")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _write_datasets(data_dir: str) -> None:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    if not os.path.isdir(os.path.join(data_dir, "imagenet_like")):
        jpegs = tfds_datasets.imagenet_like_jpegs(_JPEGS.value)
        print(
            f"# ImageNet-like JPEGs: mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB",
            flush=True,
        )
        labels = np.arange(len(jpegs)) % 1000
        tfds_datasets.write(data_dir, "imagenet_like", {"train": (jpegs, labels)}, num_classes=1000)
    if not os.path.isdir(os.path.join(data_dir, "cifar_like")):
        rng = np.random.default_rng(0)
        # Smooth images with noise, so PNG compresses them about as much as CIFAR's.
        coarse = rng.uniform(0, 255, size=(_PNGS.value, 8, 8, 3))
        images = np.clip(
            coarse.repeat(4, 1).repeat(4, 2) + rng.normal(0, 12, (1, 32, 32, 3)), 0, 255
        ).astype(np.uint8)
        pngs = tfds_datasets.png_images(images)
        tfds_datasets.write(
            data_dir,
            "cifar_like",
            {"train": (pngs, np.arange(len(pngs)) % 10)},
            num_classes=10,
            encoding="png",
        )


def _old_centre_crop(encoded: bytes, size: int = 224) -> np.ndarray:
    """The project's decode + resize + crop before Grain (PIL, bicubic, one image at a time)."""
    image = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    h, w, _ = image.shape
    scale = size / 0.875 / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def _rate(next_batch, seconds: float) -> tuple[float, int]:
    """(images/s, batches) over `seconds` after a first, untimed batch."""
    next_batch()
    images, batches, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += len(next_batch()["label"])
        batches += 1
    return images / (time.perf_counter() - start), batches


def _measure(name: str, workers: int, data_dir: str) -> dict:
    batch = _BATCH.value
    if name == "fashion_mnist_train":
        source = fashion_mnist.load("train")
    else:
        source = TfdsSource(
            "cifar_like" if name.startswith("cifar") else "imagenet_like",
            "train",
            data_dir=data_dir,
        )
    rng = np.random.default_rng(0)
    if name == "pil_one_thread":
        if workers:
            return {}

        def next_batch():
            images, labels = source.read(rng.integers(0, len(source), batch))
            return {"image": np.stack([_old_centre_crop(i) for i in images]), "label": labels}

        rate, batches = _rate(next_batch, _SECONDS.value)
    elif name == "imagenet_eval_threads":
        if workers == 0:
            return {}
        source = data.Preprocessed(source, data.ops.parse(OPS[name]), OPS[name], threads=workers)

        def next_batch():
            images, labels = source.get(rng.integers(0, len(source), batch))
            return {"image": images, "label": labels}

        rate, batches = _rate(next_batch, _SECONDS.value)
    else:
        ops = data.ops.parse(OPS[name])
        iterator = data.train_batches(
            source, batch, seed=0, ops=ops, spec=OPS[name], num_workers=workers
        )
        try:
            rate, batches = _rate(lambda: next(iterator), _SECONDS.value)
        finally:
            iterator.close()
    return {
        "benchmark": "input",
        "pipeline": name,
        "workers": workers,
        "images_per_s": round(rate, 1),
        "batch_size": batch,
        "batches": batches,
        "cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu(),
    }


def main(argv):
    del argv
    unknown = sorted(set(_PIPELINES.value) - set(PIPELINES))
    if unknown:
        raise app.UsageError(f"Unknown pipelines {unknown}; expected some of {list(PIPELINES)}.")
    workers = [int(w) for w in _WORKERS.value]
    if any(w < 0 for w in workers):
        raise app.UsageError(f"--workers={_WORKERS.value}: expected counts >= 0.")
    if _BATCH.value < 1 or _SECONDS.value <= 0 or _JPEGS.value < 1 or _PNGS.value < 1:
        raise app.UsageError("--batch_size, --seconds, --jpegs and --pngs must be positive.")
    data_dir = _DATA_DIR.value or tempfile.mkdtemp(prefix="seasoning_input_")
    _write_datasets(data_dir)
    for name in _PIPELINES.value:
        for n in workers:
            result = _measure(name, n, data_dir)
            if result:
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
