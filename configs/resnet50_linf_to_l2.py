r"""Fine-tunes the ImageNet ResNet-50 Linf model to L2 eps 2 (an ingredient).

  python -m seasoning.train --config=configs/resnet50_linf_to_l2.py \
      --workdir=runs/resnet50_linf_to_l2      # parent: runs/resnet50_linf

Args: parent (the Linf run's workdir), eps, epochs, runlocal. The recipe is the fine-tuning
reference's (Croce & Hein 2022; see `recipes.finetune_config`),
1 epoch as the fine-tuning reference on ImageNet.
The soups paper publishes no other fine-tuning settings.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.child_config(__file__, "resnet50_linf.py", arg, norm="l2", eps=2.0, num_epochs=1)
