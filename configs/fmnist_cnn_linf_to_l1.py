r"""Fine-tunes the Fashion-MNIST Linf CNN to L1 eps 10 for 1 epoch (an ingredient).

  python -m seasoning.train --config=configs/fmnist_cnn_linf_to_l1.py \
      --workdir=runs/fmnist_cnn_linf_to_l1      # parent: runs/fmnist_cnn_linf

Args: parent (the Linf run's workdir), eps, epochs, runlocal. The recipe is the fine-tuning
reference's (see `recipes.finetune_config`); 1 epoch as the soups paper's ImageNet children.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.child_config(
        __file__, "fmnist_cnn_linf.py", arg, norm="l1", eps=10, num_epochs=1
    )
