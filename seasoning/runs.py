"""A finished (or running) run of `seasoning.train`: the one way every driver reads a run.

    run = runs.load("runs/fmnist_cnn_linf")            # latest checkpoint
    logits = run.model.apply(run.variables, x, train=False)

`seasoning.evaluate`, the soup and shift drivers, and fine-tuning (`init_from`) all read runs
through `load`, so a run reads back the same everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np

from seasoning import checkpoints, errors, models, trees
from seasoning import workdir as workdir_lib


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (a cache key)
class Run:
    """A run's config, model and weights at one checkpoint.

    Attributes:
      workdir: the run's directory.
      config: its training config (from config.json).
      model: the Flax module, computing in the dtype asked of `load`.
      variables: {'params'} plus {'batch_stats'} for BatchNorm models (numpy trees).
      step: the checkpoint's step.
      num_classes: the class count the model was built for.
      image_shape: the (H, W, C) of its training images.
    """

    workdir: str
    config: ml_collections.ConfigDict
    model: nn.Module
    variables: dict[str, Any]
    step: int
    num_classes: int
    image_shape: tuple[int, ...]

    def check_source(self, source: Any, name: str, num_classes: int | None = None) -> None:
        """Raises UserError unless data `source` (called `name`) has the class count and image
        shape this run's model was trained on.

        `num_classes`: the logit count the dataset needs when it differs from its labels'
        (`DatasetEntry.model_classes`, e.g. 1000 for Conflict Stimuli's 16 labels).
        """
        needed = num_classes or source.num_classes
        if needed != self.num_classes:
            raise errors.UserError(
                f"Dataset {name} needs {needed} classes but the model of "
                f"{self.workdir} was trained on {self.num_classes}: its logits cannot score "
                "that dataset's labels."
            )
        if self.image_shape and tuple(source.image_shape) != tuple(self.image_shape):
            raise errors.UserError(
                f"Dataset {name} has images of shape {tuple(source.image_shape)} but the model "
                f"of {self.workdir} was trained on {tuple(self.image_shape)}."
            )

    @property
    def apply_fn(self) -> Callable[[Any, Any], Any]:
        """The model in eval mode, (variables, x) -> logits (see `eval_apply_fn`)."""
        return eval_apply_fn(self.model)

    def apply_fn_in(self, compute_dtype: str) -> Callable[[Any, Any], Any]:
        """`apply_fn` of the same model computing in `compute_dtype` (same variables): what
        an evaluation's attacks search with (`evaluation.Evaluator`'s `search_apply_fn`).

        Raises:
          UserError: an unknown compute dtype.
        """
        model = models.from_config(self.config, self.num_classes, compute_dtype)
        return eval_apply_fn(model)


@functools.lru_cache(maxsize=64)
def eval_apply_fn(model: nn.Module) -> Callable[[Any, Any], Any]:
    """`model` in eval mode, (variables, x) -> logits: one function object per model config.

    Equal modules (runs of one architecture) get the same object, so the evaluator's
    compiled programs, cached per apply function, serve every run and soup of that model.
    """
    return functools.partial(_apply_eval, model)


def _apply_eval(model: nn.Module, variables: Any, x: Any) -> Any:
    return model.apply(variables, x, train=False)


def soup_prepare(run: Run, policy: str, calibration_examples: int) -> Callable[[Any], Any] | None:
    """The BatchNorm policy of soups of `run`'s architecture (`soup.bn.make_prepare`):
    "recalibrate" measures the statistics on the first `calibration_examples` images of the
    run's own training split (read here, so that the soup core takes arrays, not datasets).

    Args:
      run: the first ingredient (its model and training dataset are used).
      policy: one of `soup.bn.BN_POLICIES`.
      calibration_examples: how many training images (at most the split's size).
    """
    from seasoning import data  # late: data imports TFDS lazily
    from seasoning.soup import bn

    if policy != "recalibrate":
        return bn.make_prepare(policy, run.model)
    train_source = data.get_source(run.config.dataset, run.config.dataset.train_split)
    images, _ = train_source.get(np.arange(min(calibration_examples, len(train_source))))
    return bn.make_prepare(policy, run.model, data.to_float(images))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The training config of the run in `workdir` (its config.json), as written.

    Raises:
      MissingInputError: `workdir` holds no config.json.
    """
    path = workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)
    try:
        return ml_collections.ConfigDict(workdir_lib.read_json(path))
    except FileNotFoundError:
        raise errors.MissingInputError(
            f"{path} not found: {workdir!r} is not a run of `python -m seasoning.train` or "
            "`python -m seasoning.import_weights`."
        ) from None


def load(workdir: str, step: int | None = None, compute_dtype: str = "float32") -> Run:
    """Reads the run in `workdir` at checkpoint `step` (default: the latest).

    The model computes in `compute_dtype` (float32 by default, whatever the run trained in:
    attacks in bfloat16 round away steps smaller than its ~3 significant digits).

    Raises:
      MissingInputError: no config.json or no checkpoint in `workdir`.
      UserError: an unknown compute dtype, or weights holding a NaN or infinity (a diverged
        run: named by their first such leaf).
    """
    config = read_config(workdir)
    try:
        tree, meta, step = checkpoints.read_numpy(workdir, step)
    except FileNotFoundError:
        raise errors.MissingInputError(
            f"{workdir!r} holds no checkpoint: train the run there first."
        ) from None
    nonfinite = trees.first_nonfinite({k: tree.get(k) or {} for k in ("params", "batch_stats")})
    if nonfinite:
        raise errors.UserError(
            f"{workdir!r}: the weights of its checkpoint at step {step} are not finite "
            f"({nonfinite}): the run diverged. Use a run (or an earlier checkpoint) with finite "
            "weights."
        )
    model = models.from_config(config, meta["num_classes"], compute_dtype)
    variables = {"params": tree["params"]}
    if tree.get("batch_stats"):
        variables["batch_stats"] = tree["batch_stats"]
    shape = tuple(meta.get("image_shape") or ())
    return Run(workdir, config, model, variables, int(step), int(meta["num_classes"]), shape)


def load_ingredients(run_dirs: list[str], compute_dtype: str = "float32") -> list[Run]:
    """The runs of `run_dirs` (soup ingredients), the model computing in `compute_dtype`.

    Raises:
      UserError: the runs differ in model or dataset, or their weights in structure (the
        message names the first differing path).
    """
    loaded = [load(d, compute_dtype=compute_dtype) for d in run_dirs]
    first = loaded[0]
    for run in loaded[1:]:
        for key in ("model", "dataset"):
            if run.config[key].to_dict() != first.config[key].to_dict():
                diffs = "; ".join(
                    workdir_lib.diff_dicts(first.config[key].to_dict(), run.config[key].to_dict())
                )
                raise errors.UserError(
                    f"Ingredient {run.workdir} has another {key} than {first.workdir}: {diffs}"
                )
    return loaded


def ingredient_labels(run_dirs: list[str], labels: Sequence[str] = ()) -> list[str]:
    """Short names of ingredients for tables and plots: `labels`, else the run dirs' names."""
    return list(labels) or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
