"""The paper's recipes, built on the schemas (`train_config`, `soup.config`, `shift.config`).

The experiment configs in `configs/` call these: `child_config` is the `get_config` of a
fine-tuning config (`configs/*_to_*.py`, the recipe `finetune_config`), `paper_soup_config` the
`get_config` of a soup config (`configs/soup_*.py`, the ingredient sets `PAPER_SOUPS`).
`config_lib` only loads configs and the schemas say what keys exist; what an experiment is lives
here.
"""

from __future__ import annotations

import os

import ml_collections

from seasoning import config_lib, train_config
from seasoning.shift import config as shift_config
from seasoning.soup import config as soup_config


def finetune_config(
    parent: ml_collections.ConfigDict,
    *,
    norm: str,
    eps: float,
    init_from: str,
    num_epochs: int,
    attack_steps: int = 10,
    multi: tuple[str, ...] = (),
) -> ml_collections.ConfigDict:
    """A child of `parent`'s run: the same model and data, fine-tuned to another threat model.

    The recipe of the fine-tuning reference (Croce & Hein 2022, fra31/robust-finetuning):
    APGD-CE (L1-APGD for l1) with `attack_steps` iterations and no random start, SGD with
    momentum 0.9 and weight decay 5e-4, lr 0.01 divided by 10 after 1/3 and 2/3 of the run,
    batch 128, no label smoothing, a fresh optimiser state. Every value stays overridable.

    Args:
      parent: the parent's training config (its model and dataset are kept).
      norm: the child's threat model norm; "none" for nominal (clean) fine-tuning.
      eps: its radius (0 for "none").
      init_from: the parent's workdir, whose last checkpoint gives the starting weights.
      num_epochs: epochs of fine-tuning (the reference: 3 on CIFAR-10, 1 on ImageNet).
      attack_steps: iterations of the training attack.
      multi: for norm "multi" (E-AT): the "norm:eps" threat models drawn from per batch.

    Returns:
      The child's training config (unlocked).
    """
    c = ml_collections.ConfigDict(parent.to_dict())
    c.threat.update(norm=norm, eps=float(eps), multi=tuple(multi))
    if norm == "none":
        c.attack.update(name="none", steps=attack_steps, step_size=0.0, random_start=False)
    else:
        c.attack.update(
            name="apgd", loss="ce", steps=attack_steps, step_size=0.0, random_start=False
        )
    c.optimizer.update(
        name="sgd",
        lr=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        decay_bn_and_bias=False,
        grad_clip_norm=0.0,
    )
    c.schedule.update(name="piecewise", boundaries=(1 / 3, 2 / 3), decay_factor=0.1, warmup_steps=0)
    c.label_smoothing = 0.0
    c.batch_size = 128
    c.num_epochs = num_epochs
    c.max_steps = 0
    c.init_from = init_from
    c.imported_from = train_config.base_train_config().imported_from  # the child is trained
    return c


def child_config(
    child_file: str,
    parent_file: str,
    arg: str | None,
    *,
    norm: str,
    eps: float,
    num_epochs: int,
    multi: tuple[str, ...] = (),
) -> ml_collections.ConfigDict:
    """The `get_config` of a fine-tuning config file (`configs/*_to_*.py`).

    Args:
      child_file: the child config's `__file__`; the parent config is its sibling.
      parent_file: the parent config's file name, e.g. "fmnist_cnn_linf.py".
      arg: the child's `arg`: `parent=RUN_DIR` (default `runs/<parent name>`), `eps`,
        `epochs`, `runlocal` (the parent's runlocal sizes, a few steps).
      norm, eps, num_epochs: the child's threat model and length (defaults of `arg`).
      multi: the threat models of norm "multi" (E-AT).

    Returns:
      `finetune_config` of the parent config.
    """
    parent_name = os.path.splitext(parent_file)[0]
    arg = config_lib.parse_arg(
        arg, runlocal=False, parent=f"runs/{parent_name}", eps=float(eps), epochs=num_epochs
    )
    parent_path = os.path.join(os.path.dirname(os.path.abspath(child_file)), parent_file)
    parent = config_lib.load_config(f"{parent_path}:runlocal" if arg.runlocal else parent_path)
    c = finetune_config(
        parent,
        norm=norm,
        eps=arg.eps if norm not in ("none", "multi") else 0.0,
        init_from=arg.parent,
        num_epochs=arg.epochs,
        multi=multi,
    )
    if arg.runlocal:
        c.batch_size, c.max_steps = parent.batch_size, parent.max_steps
    return c


def run_child_config(arg: str | None) -> ml_collections.ConfigDict:
    """The `get_config` of `configs/finetune.py`: a child of any run, trained or imported.

    The parent's config comes from its workdir's config.json, so a run imported with
    `seasoning.import_weights` (no config file of ours) fine-tunes like a trained one.

    Args:
      arg: `parent=RUN_DIR` (required), `norm` (linf, l2, l1 or none; default l1), `eps`
        (default: the dataset's usual radius for `norm`), `epochs` (default 1: the reference's
        ImageNet recipe, the shortest), `runlocal` (4 steps of batch 32 on the run's data).

    Raises:
      UserError: no parent given, a parent that is not a run, a bad norm, or no usual radius
        for the parent's dataset (pass `eps`).
    """
    from seasoning import data, errors, runs, threat  # imports JAX, which config loading defers
    from seasoning import workdir as workdir_lib

    arg = config_lib.parse_arg(arg, runlocal=False, parent="", norm="l1", eps=0.0, epochs=1)
    if not arg.parent:
        raise errors.UserError("configs/finetune.py needs the parent run: ...:parent=RUN_DIR.")
    config_lib.check_choice("norm", arg.norm, ("linf", "l2", "l1", "none"))
    # A config.json written before a key existed reads that key as its default.
    parent = ml_collections.ConfigDict(
        workdir_lib.with_defaults(
            runs.read_config(arg.parent).to_dict(),
            config_lib.as_json(train_config.base_train_config()),
        )
    )
    eps = arg.eps
    if arg.norm != "none" and not eps:
        usual = {tm.norm: tm.eps for tm in data.default_threats(parent.dataset.name)}
        eps = usual[arg.norm]
    if arg.norm != "none":
        threat.ThreatModel(arg.norm, eps)  # checks the radius
    c = finetune_config(
        parent,
        norm=arg.norm,
        eps=eps if arg.norm != "none" else 0.0,
        init_from=arg.parent,
        num_epochs=arg.epochs,
    )
    if arg.runlocal:
        c.batch_size, c.eval_batch_size, c.max_steps, c.log_every_steps = 32, 64, 4, 2
    return c


# The paper's soups of a Linf parent and its children: config arg `soup` -> child suffixes.
PAPER_SOUPS = {
    "l2": ("", "_to_l2"),  # Linf + Linf->L2
    "nominal": ("", "_to_nominal"),  # Linf + Linf->nominal
    "l2_l1": ("", "_to_l2", "_to_l1"),  # Linf + Linf->L2 + Linf->L1
    "four": ("", "_to_l2", "_to_l1", "_to_nominal"),  # the shift soups' four ingredients
}


def paper_soup_config(
    arg: str | None, *, parent: str, threats: tuple[str, ...], runs: str = "runs"
) -> ml_collections.ConfigDict:
    """The `get_config` of a soup config file (`configs/soup_*.py`).

    Args:
      arg: `soup=l2|nominal|l2_l1|four` (which ingredients), `runs=DIR` (where the runs of
        `parent` and its children are), `step` (grid step), `bn=interpolate|recalibrate`,
        `runlocal` (a coarse grid and a short attack on a few points).
      parent: the parent run's (and config's) name, e.g. "fmnist_cnn_linf".
      threats: the threat models to evaluate, "norm:eps".
      runs: the default of `runs`.

    Returns:
      The soup config (`soup.config.base_soup_config` with these settings).
    """
    arg = config_lib.parse_arg(
        arg, runlocal=False, soup="l2", runs=runs, step=0.1, bn="interpolate"
    )
    config_lib.check_choice("soup", arg.soup, tuple(PAPER_SOUPS))
    suffixes = PAPER_SOUPS[arg.soup]
    c = soup_config.base_soup_config()
    c.ingredients = tuple(f"{arg.runs}/{parent}{s}" for s in suffixes)
    c.labels = tuple(s.removeprefix("_to_") or "linf" for s in suffixes)
    c.grid.update(kind="simplex", step=arg.step)
    c.bn_policy = arg.bn
    c.eval.threats = threats
    c.front = ("clean", threats[0]) if arg.soup == "nominal" else (threats[0], threats[1])
    if arg.runlocal:
        c.grid.step = 0.5
        c.eval.update(n_examples=64, batch_size=64, n_iter=5, n_target_classes=1)
        c.calibration_examples = 128
    return c


def paper_shift_config(
    arg: str | None,
    *,
    parent: str,
    shifts: dict[str, str],
    runs: str = "runs",
    n_unseen: int = 0,
    robust_examples: int = 500,
) -> ml_collections.ConfigDict:
    """The `get_config` of a shift config file (`configs/shift_*.py`): the paper's four
    ingredients (Linf and its L2, L1 and nominal children) and shifted datasets.

    Args:
      arg: `runs=DIR` (where the runs of `parent` and its children are), `step` (grid step),
        `runlocal` (a coarse grid, short selection and attack, few images: seconds).
      parent: the parent run's (and config's) name, e.g. "fmnist_cnn_linf".
      shifts: column name -> "NAME[:split]" of the registry, in table order.
      runs: the default of `runs`.
      n_unseen: unseen images per shift (0: all).
      robust_examples: test images of the AutoAttack evaluation of the selected soups.

    Returns:
      The shift config (`shift.config.base_shift_config` with these settings).
    """
    arg = config_lib.parse_arg(arg, runlocal=False, runs=runs, step=0.1)
    suffixes = ("", "_to_l2", "_to_l1", "_to_nominal")
    c = shift_config.base_shift_config()
    c.ingredients = tuple(f"{arg.runs}/{parent}{s}" for s in suffixes)
    c.labels = tuple(s.removeprefix("_to_") or "linf" for s in suffixes)
    c.shifts = tuple(shifts.values())
    c.columns = tuple(shifts)
    c.grid_step = arg.step
    c.n_unseen = n_unseen
    c.robust.n_examples = robust_examples
    if arg.runlocal:
        c.grid_step = 0.5
        c.update(n_adaptation=75, n_unseen=75, batch_size=64)
        c.learned.update(steps=5, batch_size=16)
        c.robust.update(n_examples=16, batch_size=16, n_iter=2, n_target_classes=1)
    return c
