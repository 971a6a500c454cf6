r"""Fine-tunes the CIFAR-10 WRN-28-10 Linf model to nominal (clean) training (an ingredient).

  python -m seasoning.train --config=configs/cifar10_wrn28_10_linf_to_nominal.py \
      --workdir=runs/cifar10_wrn28_10_linf_to_nominal      # parent: runs/cifar10_wrn28_10_linf

Args: parent (the Linf run's workdir), eps, epochs, runlocal. The recipe is the fine-tuning
reference's (Croce & Hein 2022; see `recipes.finetune_config`),
3 epochs as the fine-tuning reference on CIFAR-10.
The soups paper publishes no other fine-tuning settings.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.child_config(
        __file__, "cifar10_wrn28_10_linf.py", arg, norm="none", eps=0, num_epochs=3
    )
