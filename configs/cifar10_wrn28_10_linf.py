r"""Linf adversarial training of WideResNet-28-10 on CIFAR-10 (TFDS `cifar10`), the root
ingredient of the CIFAR-10 soups.

  python -m seasoning.train --config=configs/cifar10_wrn28_10_linf.py \
      --workdir=runs/cifar10_wrn28_10_linf
  python -m seasoning.train --config=configs/cifar10_wrn28_10_linf.py:runlocal --workdir=runs/smoke

Args: runlocal (a WRN-10-2 on synthetic 32x32 images for a few steps), eps (default 8/255).

Sources of the numbers: PGD adversarial training (Madry et al. 2018) as tuned by Rice et al.
2020 ("Overfitting in adversarially robust deep learning"): PGD-10 with step 2/255 and a
random start, SGD momentum 0.9, weight decay 5e-4, lr 0.1 divided by 10 at epochs 100 and
150 of 200, batch 128, random crop (padding 4) and flip. Nesterov momentum is our choice.

Memory: a batch of 128 is the reference's on one GPU, so no switch is on. Where it does not
fit, `--config.model.remat=True` recomputes each block's activations in the backward pass
(same parameters, same function) and `--config.attack.chunks=c` attacks the batch in c parts
(same x_adv up to the random start's draws). `--config.accumulate_steps=k` also works but is
not the reference's training: BatchNorm then normalises each micro-batch of 128 / k by its own
statistics.
"""

from seasoning import config_lib, train_config


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, runlocal=False, eps=8 / 255)
    c = train_config.base_train_config()
    c.dataset.update(
        name="cifar10", train_split="train", eval_split="test", crop_padding=4, flip=True
    )
    c.model = dict(name="wrn-28-10")  # CIFAR-10's mean and std are the model's defaults
    c.threat.update(norm="linf", eps=arg.eps)
    c.attack.update(name="pgd", loss="ce", steps=10, step_size=2 / 255, random_start=True)
    c.optimizer.update(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    c.schedule.update(name="piecewise", boundaries=(0.5, 0.75), decay_factor=0.1)
    c.batch_size = 128
    c.num_epochs = 200
    if arg.runlocal:
        c.dataset.update(name="synthetic", image_size=32, num_train_examples=256)
        c.model = dict(name="wrn-10-2")
        c.attack.steps = 2
        c.batch_size, c.eval_batch_size = 32, 64
        c.num_epochs, c.max_steps = 1, 4
        c.log_every_steps = 2
    return c
