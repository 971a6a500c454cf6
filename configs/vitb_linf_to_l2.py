r"""Fine-tunes the ImageNet ViT-B/16 Linf model to L2 eps 2 (an ingredient).

  python -m seasoning.train --config=configs/vitb_linf_to_l2.py \
      --workdir=runs/vitb_linf_to_l2      # parent: runs/vitb_linf

Args: parent (the Linf run's workdir), eps, epochs, runlocal. The recipe is the fine-tuning
reference's (Croce & Hein 2022; see `recipes.finetune_config`),
1 epoch as the fine-tuning reference and the soups paper on ImageNet.
The soups paper publishes no other fine-tuning settings.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.child_config(__file__, "vitb_linf.py", arg, norm="l2", eps=2.0, num_epochs=1)
