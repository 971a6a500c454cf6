r"""The paper's shift table: ViT-B/16 Linf and its children on eight ImageNet test sets.

  python -m seasoning.shift --config=configs/shift_imagenet_vitb16.py --workdir=runs/shift_in

Args: runs (the folder holding vitb_linf and its children, made by the vitb_* training
configs), step (grid step, 0.1), runlocal.

Columns as the paper's table: IN (validation), IN-ReaL, IN-V2 (matched-frequency), IN-A and
IN-R (200-class logit masks), IN-Sketch, Conflict Stimuli (16 shape categories from the 1000
logits) and IN-C (mean over 15 corruptions x 5 severities), all through `tfds.data_source`
(prepare each with `tfds build ... --file_format=array_record`; a missing one names its
command).
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.paper_shift_config(
        arg,
        parent="vitb_linf",
        shifts={
            "IN": "imagenet2012:validation",
            "IN-ReaL": "imagenet2012_real",
            "V2": "imagenet_v2/matched-frequency",
            "A": "imagenet_a",
            "R": "imagenet_r",
            "Sketch": "imagenet_sketch",
            "Conflict": "geirhos_conflict_stimuli",
            "IN-C": "imagenet2012_corrupted",
        },
    )
