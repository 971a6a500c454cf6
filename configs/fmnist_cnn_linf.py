r"""Linf adversarial training of the small CNN on Fashion-MNIST (the soups' root ingredient).

  python -m seasoning.train --config=configs/fmnist_cnn_linf.py --workdir=runs/fmnist_linf
  python -m seasoning.train --config=configs/fmnist_cnn_linf.py:runlocal --workdir=runs/smoke

Args (`:key=value,...`): runlocal (a few steps, seconds), eps (Linf radius, default 0.1).
eps 0.1 on Fashion-MNIST is the usual choice of the robustness literature for this dataset
(e.g. Croce & Hein 2020 evaluate Linf 0.1 there); pixels are in [0, 1].
"""

from seasoning import config_lib, train_config


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, runlocal=False, eps=0.1)
    c = train_config.base_train_config()
    c.dataset.name = "fashion_mnist"
    # Fashion-MNIST's pixel mean and std; the model normalises its [0, 1] input itself.
    c.model = dict(name="cnn-small", mean=(0.2860,), std=(0.3530,))
    c.threat.update(norm="linf", eps=arg.eps)
    c.attack.update(name="apgd", loss="ce", steps=10, random_start=False)
    c.optimizer.lr = 0.05
    c.schedule.boundaries = (0.5, 0.75)
    c.batch_size = 128
    c.num_epochs = 10
    if arg.runlocal:
        c.num_epochs, c.max_steps, c.batch_size = 1, 20, 64
        c.log_every_steps = 5
        c.dataset.num_eval_examples = 1000
    return c
