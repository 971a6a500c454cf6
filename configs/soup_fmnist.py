r"""The paper's soups on Fashion-MNIST: the Linf CNN with its fine-tuned children.

  python -m seasoning.soup --config=configs/soup_fmnist.py:soup=l2 --workdir=runs/soup_fmnist_l2

Args: soup (l2: Linf + Linf->L2; nominal: Linf + Linf->nominal; l2_l1: Linf + Linf->L2 +
Linf->L1), runs (the folder holding fmnist_cnn_linf and its children; default runs/demo, where
`make demo` makes them), step (grid step, 0.1), bn (interpolate or recalibrate), runlocal.
Evaluated on 500 test images with AutoAttack fast under Fashion-MNIST's radii.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.paper_soup_config(
        arg, parent="fmnist_cnn_linf", threats=("linf:0.1", "l2:0.8", "l1:10"), runs="runs/demo"
    )
