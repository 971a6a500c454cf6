"""The training config schema (`python -m seasoning.train`): every key, its default, its checks.

Training configs (`configs/*.py`) start from `base_train_config()`; `seasoning.train` checks
them with `validate_train_config`, which rejects keys it does not know, values of the wrong
type, unknown names (model, dataset, optimizer, ...) and numbers out of range, each with a
message naming the key, the value and what is expected. The allowed names come from the
modules that own them (`data.DATASET_NAMES`, `models.COMPUTE_DTYPES`, `optim.OPTIMIZER_NAMES`,
...), imported when a config is validated: loading a config imports no JAX.

Loading, overrides and the checks every schema shares are in `seasoning.config_lib`; the
paper's fine-tuning recipe built on this schema is in `seasoning.recipes`.
"""

from __future__ import annotations

import ml_collections

from seasoning import config_lib, errors

# Training config keys that say how a run executes, not what it computes: a run resumes with
# other values of these (its config.json keeps the first ones).
EXECUTION_KEYS = ("dataset.num_workers",)


def base_train_config() -> ml_collections.ConfigDict:
    """Every key a training config may hold, with defaults (SGD, piecewise, nominal)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = dict(
        name="fashion_mnist",
        data_dir="",  # "" = the dataset's default location
        train_split="train",
        eval_split="test",
        # Preprocessing as '|'-separated named ops (seasoning.data.ops), e.g.
        # "decode|inception_crop(224)|flip_lr"; "" = decode, then image_size, crop_padding, flip.
        pp_train="",
        pp_eval="",  # e.g. "decode|resize_small(256)|central_crop(224)"
        image_size=0,  # 0 = native resolution; else resize (shorter side) + centre crop
        crop_padding=0,  # random crop after zero padding by this many pixels; 0 = off
        flip=False,  # random horizontal flip
        # Input worker processes: -1 = automatic (every core for encoded images, else 0);
        # 0 = a background thread of the training process.
        num_workers=-1,
        num_eval_examples=0,  # 0 = the whole eval split
        num_classes=10,  # for "synthetic" only; other datasets know theirs
        num_train_examples=2048,  # for "synthetic" only
    )
    c.model = dict(name="cnn-small")  # + keyword arguments of models.get_model
    # norm linf/l2/l1 with eps: adversarial training; none: nominal; multi: E-AT (Croce & Hein
    # 2022), each batch attacked under one of `multi` ("norm:eps" strings), drawn by `sampling`:
    # "adaptive" (the reference: probability 1 - running robust accuracy) or "uniform".
    c.threat = dict(norm="none", eps=0.0, multi=(), sampling="adaptive")
    # chunks: the attack runs on this many parts of each (micro-)batch one after another, to
    # bound its memory; x_adv is the same (training.perturb_batch).
    c.attack = dict(name="none", loss="ce", steps=10, step_size=0.0, random_start=False, chunks=1)
    c.optimizer = dict(
        name="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        b1=0.9,
        b2=0.999,
        weight_decay=5e-4,
        decay_bn_and_bias=False,  # weight decay on 1-d leaves (BN scales, biases)
        grad_clip_norm=0.0,  # 0 = off
    )
    c.schedule = dict(
        name="piecewise",
        boundaries=(0.5, 0.75),  # fractions of the run
        decay_factor=0.1,
        warmup_steps=0,
    )
    c.label_smoothing = 0.0
    c.compute_dtype = "float32"
    c.batch_size = 128  # global, over all devices and hosts
    # Gradient accumulation: the batch is split into this many micro-batches, each attacked and
    # differentiated in turn, for one update with their mean gradient (training.train_step).
    c.accumulate_steps = 1
    c.eval_batch_size = 500
    c.num_epochs = 10
    c.max_steps = 0  # 0 = num_epochs decides; else at most this many steps
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = once per epoch and at the end
    c.checkpoint_every_steps = 0  # 0 = once per epoch and at the end
    c.keep_checkpoints = 2
    # A step with a NaN or infinite loss, gradient or weights: "stop" the run (no state of it
    # saved, exit status 3) or "skip" its update, stopping after this many in a row
    # (seasoning.divergence).
    c.nonfinite = "stop"
    c.max_nonfinite_in_row = 10
    c.init_from = ""  # a finished run's workdir: fine-tune from its weights
    # A run written by `seasoning.import_weights`: the source file, its format and SHA-256,
    # and where the model's input statistics came from ("checkpoint", "flags", "default").
    c.imported_from = dict(format="", file="", sha256="", normalization="")
    return c


def validate_train_config(config: ml_collections.ConfigDict) -> None:
    """Checks a training config against `base_train_config()`.

    Names are checked against the modules that own them (data, models, optim, adversarial),
    numbers against their ranges.

    Raises:
      UserError: naming the first unknown key, wrongly typed value, unknown name or value out
        of range, with what is expected.
    """
    config_lib.check_against_schema(config, base_train_config(), prefix="")
    # Late: these import JAX, which config loading does not need.
    from seasoning import adversarial, data, divergence, models, optim, threat
    from seasoning.attacks import losses

    config_lib.check_choice("dataset.name", config.dataset.name, data.DATASET_NAMES)
    try:
        models.check_name(config.model.name)
    except ValueError as e:
        raise errors.UserError(f"Config model.name: {e}") from None
    config_lib.check_choice("optimizer.name", config.optimizer.name, optim.OPTIMIZER_NAMES)
    config_lib.check_choice("schedule.name", config.schedule.name, optim.SCHEDULE_NAMES)
    config_lib.check_choice("attack.name", config.attack.name, adversarial.ATTACK_NAMES)
    config_lib.check_choice("compute_dtype", config.compute_dtype, models.COMPUTE_DTYPES)
    if config.threat.norm == "multi":
        if len(config.threat.multi) < 2 or config.threat.eps:
            raise errors.UserError(
                f"Config threat.norm='multi' (E-AT) needs threat.multi with two or more "
                f"'norm:eps' threat models and threat.eps=0, got multi={config.threat.multi!r}, "
                f"eps={config.threat.eps}."
            )
        for spec in config.threat.multi:
            try:
                trivial = threat.parse(spec).trivial
            except errors.UserError as e:
                raise errors.UserError(f"Config threat.multi: {e}") from None
            if trivial:
                raise errors.UserError(
                    f"Config threat.multi: {spec!r} is not an adversarial threat."
                )
        config_lib.check_choice(
            "threat.sampling", config.threat.sampling, adversarial.MULTI_SAMPLING
        )
    else:
        try:
            threat.ThreatModel(config.threat.norm, config.threat.eps)
        except errors.UserError as e:
            raise errors.UserError(f"Config threat (norm, eps): {e}") from None
        if config.threat.multi:
            raise errors.UserError(
                f"Config threat.multi={config.threat.multi!r} is used only with "
                f"threat.norm='multi' (E-AT), not with norm={config.threat.norm!r}."
            )
    if config.attack.name != "none":
        config_lib.check_choice("attack.loss", config.attack.loss, losses.LOSSES)
        config_lib.check_int(config, "attack.steps", 1)
        config_lib.check_number(config, "attack.step_size", 0)
    config_lib.check_int(config, "attack.chunks", 1)
    config_lib.check_int(config, "seed", 0)
    for key in ("image_size", "crop_padding", "num_eval_examples", "num_train_examples"):
        config_lib.check_int(config, f"dataset.{key}", 0)
    config_lib.check_int(config, "dataset.num_classes", 2)
    config_lib.check_int(config, "dataset.num_workers", -1)
    for key, make_ops in (("pp_train", data.train_ops), ("pp_eval", data.eval_ops)):
        try:
            make_ops(config.dataset)
        except errors.UserError as e:
            raise errors.UserError(f"Config dataset.{key}: {e}") from None
    for key in ("batch_size", "eval_batch_size", "log_every_steps", "keep_checkpoints"):
        config_lib.check_int(config, key, 1)
    config_lib.check_choice("nonfinite", config.nonfinite, divergence.POLICIES)
    config_lib.check_int(config, "max_nonfinite_in_row", 1)
    config_lib.check_int(config, "accumulate_steps", 1)
    if config.batch_size % config.accumulate_steps:
        raise errors.UserError(
            f"Config batch_size={config.batch_size} is not divisible by "
            f"accumulate_steps={config.accumulate_steps}: micro-batches are equal slices of the "
            "batch (and each must also split evenly over the devices)."
        )
    for key in ("num_epochs", "max_steps", "eval_every_steps", "checkpoint_every_steps"):
        config_lib.check_int(config, key, 0)
    if config.num_epochs == 0 and config.max_steps == 0:
        raise errors.UserError("Config sets num_epochs=0 and max_steps=0: nothing to train.")
    for key in ("lr", "weight_decay", "grad_clip_norm"):
        config_lib.check_number(config, f"optimizer.{key}", 0)
    for key in ("momentum", "b1", "b2"):
        config_lib.check_number(config, f"optimizer.{key}", 0, 1)
    boundaries = tuple(config.schedule.boundaries)
    if any(not 0 < b < 1 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise errors.UserError(
            f"Config schedule.boundaries={boundaries}: expected increasing fractions in (0, 1)."
        )
    config_lib.check_number(config, "schedule.decay_factor", 0, low_open=True)
    config_lib.check_int(config, "schedule.warmup_steps", 0)
    config_lib.check_number(config, "label_smoothing", 0, 1)
