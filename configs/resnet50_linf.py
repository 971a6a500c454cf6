r"""Linf adversarial training of ResNet-50 on ImageNet (TFDS `imagenet2012`, array_record).

  python -m seasoning.train --config=configs/resnet50_linf.py --workdir=runs/resnet50_linf
  python -m seasoning.train --config=configs/resnet50_linf.py:runlocal --workdir=runs/smoke

Args: runlocal (ResNet-50 on synthetic 32x32 images for two steps), eps (default 4/255).

Sources of the numbers: the standard ImageNet recipe (Goyal et al. 2017: SGD momentum 0.9,
weight decay 1e-4, lr 0.1 per 256 images, divided by 10 every 30 of 90 epochs, random-resized
crops and flips) with few-step PGD, as in the robust ImageNet models of Salman et al. 2020
(eps 4/255, 3 steps of 2.5 eps / 3, random start). Batch 512 (lr 0.2): our choice.
"""

from seasoning import config_lib, train_config
from seasoning.models.normalization import IMAGENET_MEAN, IMAGENET_STD


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, runlocal=False, eps=4 / 255)
    c = train_config.base_train_config()
    # torchvision's RandomResizedCrop(224) (8-100% of the area, aspect 3/4-4/3) and flip;
    # eval: Resize(256) + CenterCrop(224).
    c.dataset.update(
        name="imagenet2012",
        eval_split="validation",
        pp_train="decode|inception_crop(224, area=(0.08, 1.0))|flip_lr",
        pp_eval="decode|resize_small(256)|central_crop(224)",
    )
    c.model = dict(name="resnet-50", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    c.threat.update(norm="linf", eps=arg.eps)
    c.attack.update(name="pgd", loss="ce", steps=3, step_size=2.5 * arg.eps / 3, random_start=True)
    c.optimizer.update(name="sgd", lr=0.2, momentum=0.9, nesterov=False, weight_decay=1e-4)
    c.schedule.update(name="piecewise", boundaries=(1 / 3, 2 / 3), decay_factor=0.1)
    c.batch_size = 512
    c.eval_batch_size = 1024
    c.num_epochs = 90
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.eval_every_steps = 2500
    if arg.runlocal:
        c.dataset.update(
            name="synthetic", image_size=32, num_train_examples=64, pp_train="", pp_eval=""
        )
        c.attack.steps = 1
        c.batch_size, c.eval_batch_size = 16, 32
        c.num_epochs, c.max_steps = 1, 2
        c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 1, 0, 0
    return c
