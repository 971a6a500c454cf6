r"""The paper's soups on ImageNet: ViT-B/16 Linf with its fine-tuned children (no BatchNorm).

  python -m seasoning.soup --config=configs/soup_vitb.py:soup=l2 --workdir=runs/soup_vitb

Args as configs/soup_fmnist.py (runs default: runs). ImageNet's radii (Linf 4/255, L2 2,
L1 255), AutoAttack fast on 500 validation images.
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.paper_soup_config(
        arg, parent="vitb_linf", threats=("linf:4/255", "l2:2", "l1:255")
    )
