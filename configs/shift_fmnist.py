r"""Soups for distribution shifts on Fashion-MNIST, offline: the Linf CNN and its children.

  python -m seasoning.shift --config=configs/shift_fmnist.py --workdir=runs/shift_fmnist

Args: runs (the folder holding fmnist_cnn_linf and its children; default runs/demo, where
`make demo` makes them), step (grid step, 0.1: 286 soups), runlocal.

Columns: the clean test set, Fashion-MNIST-C (15 ImageNet-C corruptions x 5 severities,
generated offline and cached; the mean over the 75 sets), inverted contrast, rotations and
translations (`seasoning/data/corruptions.py` says why these). 1000 adaptation images per
shift, 5000 unseen ones; AutoAttack (fast) of the selected soups on 500 test images.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.paper_shift_config(
        arg,
        parent="fmnist_cnn_linf",
        runs="runs/demo",
        shifts={
            "FMNIST": "fashion_mnist:test",
            "FMNIST-C": "fashion_mnist_corrupted",
            "inverted": "fashion_mnist_inverted",
            "rotated": "fashion_mnist_rotated",
            "translated": "fashion_mnist_translated",
        },
        n_unseen=5000,
    )
