r"""Soups for distribution shifts on CIFAR-10: WRN-28-10 Linf and its children.

  python -m seasoning.shift --config=configs/shift_cifar10_wrn28_10.py --workdir=runs/shift_c10

Args: runs (the folder holding cifar10_wrn28_10_linf and its children, made by the
cifar10_wrn28_10_* training configs), step (grid step, 0.1), runlocal.

Columns: CIFAR-10 (test), CIFAR-10.1 (v6) and CIFAR-10-C (15 corruptions x 5 severities, the
mean over the 75 sets), all through `tfds.data_source` (prepare them with `tfds build ...
--file_format=array_record`; a missing one names its command).
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.paper_shift_config(
        arg,
        parent="cifar10_wrn28_10_linf",
        shifts={
            "CIFAR-10": "cifar10:test",
            "CIFAR-10.1": "cifar10_1/v6",
            "CIFAR-10-C": "cifar10_corrupted",
        },
    )
