r"""Fine-tunes the CIFAR-10 WRN-28-10 Linf model to L2 eps 0.5 (an ingredient).

  python -m seasoning.train --config=configs/cifar10_wrn28_10_linf_to_l2.py \
      --workdir=runs/cifar10_wrn28_10_linf_to_l2      # parent: runs/cifar10_wrn28_10_linf

Args: parent (the Linf run's workdir), eps, epochs, runlocal. The recipe is the fine-tuning
reference's (Croce & Hein 2022; see `recipes.finetune_config`),
3 epochs as the fine-tuning reference on CIFAR-10.
The soups paper publishes no other fine-tuning settings.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.child_config(
        __file__, "cifar10_wrn28_10_linf.py", arg, norm="l2", eps=0.5, num_epochs=3
    )
