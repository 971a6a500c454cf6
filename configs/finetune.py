r"""Fine-tunes any run, trained here or imported, to another threat model (an ingredient).

  python -m seasoning.train --config=configs/finetune.py:parent=runs/rb_linf,norm=l1 \
      --workdir=runs/rb_linf_to_l1

Args: parent (the run's workdir, required), norm (linf, l2, l1 or none; default l1), eps
(default: the parent's dataset's usual radius for norm, e.g. 12 for L1 on CIFAR-10), epochs
(default 1), runlocal (4 steps). The model, dataset and augmentation are the parent's (its
config.json); the recipe is the fine-tuning reference's (Croce & Hein 2022, see
`recipes.finetune_config`): APGD-CE with 10 steps (L1-APGD for l1), SGD lr 0.01 with momentum
0.9, weight decay 5e-4, lr / 10 after 1/3 and 2/3 of the run, batch 128. Any value stays
overridable (`--config.num_epochs=3`, the reference's CIFAR-10 length).
"""

from seasoning import recipes


def get_config(arg=None):
    return recipes.run_child_config(arg)
