r"""Fine-tunes the Fashion-MNIST Linf CNN with E-AT for 1 epoch: a multi-norm baseline for soups.

  python -m seasoning.train --config=configs/fmnist_cnn_linf_to_eat.py \
      --workdir=runs/fmnist_cnn_linf_to_eat      # parent: runs/fmnist_cnn_linf

E-AT (Croce & Hein 2022, "Adversarial robustness against multiple and single lp-threat models
via quick fine-tuning of robust classifiers"): each batch is attacked under one of Linf 0.1,
L2 0.8 and L1 10 (Fashion-MNIST's radii), drawn uniformly; otherwise the fine-tuning recipe of
the other children (`recipes.finetune_config`). Args: parent, epochs, runlocal.
"""

from seasoning import recipes

THREATS = ("linf:0.1", "l2:0.8", "l1:10")


def get_config(arg=None):
    return recipes.child_config(
        __file__, "fmnist_cnn_linf.py", arg, norm="multi", eps=0, num_epochs=1, multi=THREATS
    )
