r"""Fine-tunes the Fashion-MNIST Linf CNN to nominal (clean) training for 1 epoch (an ingredient).

  python -m seasoning.train --config=configs/fmnist_cnn_linf_to_nominal.py \
      --workdir=runs/fmnist_cnn_linf_to_nominal      # parent: runs/fmnist_cnn_linf

Args: parent (the Linf run's workdir), eps, epochs, runlocal. The recipe is the fine-tuning
reference's (see `recipes.finetune_config`); 1 epoch as the soups paper's ImageNet children.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.child_config(
        __file__, "fmnist_cnn_linf.py", arg, norm="none", eps=0, num_epochs=1
    )
