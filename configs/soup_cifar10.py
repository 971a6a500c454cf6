r"""The paper's soups on CIFAR-10: WRN-28-10 Linf with its fine-tuned children.

  python -m seasoning.soup --config=configs/soup_cifar10.py:soup=l2_l1 --workdir=runs/soup_c10

Args as configs/soup_fmnist.py (runs default: runs). CIFAR-10's radii (Linf 8/255, L2 0.5,
L1 12), AutoAttack fast on 500 test images; raise `eval.n_examples` and set
`eval.version=standard` for numbers to publish.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.paper_soup_config(
        arg, parent="cifar10_wrn28_10_linf", threats=("linf:8/255", "l2:0.5", "l1:12")
    )
