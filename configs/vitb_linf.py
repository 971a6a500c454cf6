r"""Linf adversarial training of ViT-B/16 on ImageNet (TFDS `imagenet2012`, array_record).

  python -m seasoning.train --config=configs/vitb_linf.py --workdir=/mnt/runs/vitb_linf
  python -m seasoning.train --config=configs/vitb_linf.py:runlocal --workdir=runs/vit_smoke

Args: runlocal (a tiny ViT on synthetic 32x32 images for a few steps), variant (b16, s16,
ti16), eps (default 4/255).

Sources of the numbers:
- Optimiser and schedule: big_vision's `configs/vit_i1k.py` (Steiner et al. 2021, "How to
  train your ViT"): batch 4096, Adam(0.9, 0.999) with decoupled weight decay 1e-4, lr 1e-3,
  10k warm-up steps then cosine, gradient clipping at global norm 1.0, 300 epochs.
- eps = 4/255: the ImageNet Linf radius of the fine-tuning reference (Croce & Hein 2022) and
  of the soups paper's ImageNet models.
- Attack: APGD-CE without random start, 2 steps, our choice for a from-scratch run at this
  scale (each step is one more forward+backward per image); the fine-tuned children use the
  reference's 10 steps.
- Input: big_vision's `vit_i1k` preprocessing (inception crop of 5-100% of the image's area,
  aspect 3/4-4/3, bilinear, and a flip; eval: shorter side 256, central 224).
- Label smoothing 0.1 and bf16 compute: our choices (usual for ViT on TPU).
- Memory: the encoder blocks are rematerialised (`model.remat`: the backward pass keeps each
  block's input and recomputes the rest). Each device attacks and differentiates 4096 /
  devices images at once; on fewer devices, where that does not fit, set
  `--config.accumulate_steps=k` (k micro-batches of 4096 / k, each attacked and differentiated
  in turn, one update with their mean gradient; ViT has no BatchNorm, so this is the same
  update up to float rounding) and, if the attack alone still does not fit,
  `--config.attack.chunks=c` (it runs on c parts of each micro-batch in turn; same x_adv).
"""

from seasoning import config_lib, train_config
from seasoning.models.normalization import IMAGENET_MEAN, IMAGENET_STD

_VARIANTS = {"b16": "vit-b16", "s16": "vit-s16", "ti16": "vit-ti16"}


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, runlocal=False, variant="b16", eps=4 / 255)
    if arg.variant not in _VARIANTS:
        raise ValueError(f"Unknown variant {arg.variant!r}; expected one of {list(_VARIANTS)}.")
    c = train_config.base_train_config()
    c.dataset.name = "imagenet2012"
    c.dataset.eval_split = "validation"
    # big_vision's vit_i1k ops: inception crop of 5-100% of the area, flip; eval: the shorter
    # side to 256 (area resampling), the central 224 x 224.
    c.dataset.pp_train = "decode|inception_crop(224, area=(0.05, 1.0))|flip_lr"
    c.dataset.pp_eval = "decode|resize_small(256)|central_crop(224)"
    c.model = dict(name=_VARIANTS[arg.variant], mean=IMAGENET_MEAN, std=IMAGENET_STD, remat=True)
    c.threat.update(norm="linf", eps=arg.eps)
    c.attack.update(name="apgd", loss="ce", steps=2, random_start=False)
    c.optimizer.update(
        name="adamw", lr=1e-3, b1=0.9, b2=0.999, weight_decay=1e-4, grad_clip_norm=1.0
    )
    c.schedule.update(name="cosine", warmup_steps=10_000)
    c.label_smoothing = 0.1
    c.compute_dtype = "bfloat16"
    c.batch_size = 4096
    # > 1 on few devices, e.g. 8 on one host of 8 accelerators: micro-batches of 512, 64 rows
    # a device (see the module doc).
    c.accumulate_steps = 1
    c.eval_batch_size = 1024
    c.num_epochs = 300
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.eval_every_steps = 2500
    if arg.runlocal:
        c.dataset.update(
            name="synthetic", image_size=32, num_train_examples=256, pp_train="", pp_eval=""
        )
        c.model = dict(
            name="vit-ti16",
            image_size=32,
            patch_size=8,
            depth=2,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            remat=True,
        )
        c.compute_dtype = "float32"
        c.batch_size, c.eval_batch_size = 32, 64
        c.num_epochs, c.max_steps = 1, 4
        c.schedule.warmup_steps = 1
        c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 2, 0, 0
    return c
