"""Config loading, overrides and validation; the paper's recipes."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from seasoning import (
    adversarial,
    config_lib,
    data,
    errors,
    models,
    optim,
    recipes,
    soup,
    train_config,
)
from seasoning.attacks import autoattack
from seasoning.soup import config as soup_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FMNIST = "configs/fmnist_cnn_linf.py"


def test_parse_arg_types_and_flags():
    arg = config_lib.parse_arg("runlocal,eps=8/255,steps=3", runlocal=False, eps=0.1, steps=10)
    assert arg.runlocal is True
    assert arg.eps == pytest.approx(8 / 255)
    assert arg.steps == 3 and isinstance(arg.steps, int)


def test_parse_arg_unknown_key_names_nearest():
    with pytest.raises(ValueError, match=r"'runlcal'.*runlocal"):
        config_lib.parse_arg("runlcal", runlocal=False)


def test_load_applies_overrides_and_locks():
    config = config_lib.load_config(f"{FMNIST}:runlocal", ["optimizer.lr=0.5", "seed=3"])
    assert config.optimizer.lr == 0.5 and config.seed == 3
    assert config.max_steps == 20  # runlocal
    with pytest.raises(AttributeError):
        config.new_key = 1  # locked


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lrr=0.1", r"'optimizer.lrr'.*Did you mean 'lr'"),
        ("optimiser.lr=0.1", r"no section 'optimiser'.*Did you mean 'optimizer'"),
        ("optimizer.lr=abc", r"optimizer.lr='abc' is not a valid float"),
        ("batch_size=1.5", r"batch_size='1.5' is not a valid int"),
        ("optimizer.nesterov=maybe", r"not a valid bool"),
        ("seed", r"not of the form key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load_config(FMNIST, [override])


def test_split_config_flags():
    rest, spec, overrides = config_lib.split_config_flags(
        ["prog", "--config=a.py:runlocal", "--workdir=w", "--config.seed=2", "--config.lr", "3"]
    )
    assert rest == ["prog", "--workdir=w"]
    assert spec == "a.py:runlocal"
    assert overrides == ["seed=2", "lr=3"]


TRAIN_CONFIGS = sorted(
    os.path.join("configs", f)
    for f in os.listdir(os.path.join(ROOT, "configs"))
    # finetune.py reads its parent run's config.json: test_finetune_config_reads_its_parent;
    # demo.py is the demo's (test_demo.py).
    if f.endswith(".py")
    and not f.startswith(("soup_", "shift_"))
    and f not in ("finetune.py", "demo.py")
)


def test_finetune_config_reads_its_parent(tmp_path):
    spec = os.path.join(ROOT, "configs", "finetune.py")
    with pytest.raises(errors.UserError, match="needs the parent run"):
        config_lib.load_config(spec)
    with pytest.raises(errors.MissingInputError, match="is not a run"):
        config_lib.load_config(f"{spec}:parent={tmp_path}")
    parent = config_lib.load_config(os.path.join(ROOT, "configs", "fmnist_cnn_linf.py"))
    (tmp_path / "config.json").write_text(json.dumps(config_lib.as_json(parent)))
    child = config_lib.load_config(f"{spec}:parent={tmp_path},norm=l2")
    train_config.validate_train_config(child)
    assert child.init_from == str(tmp_path)
    assert config_lib.as_json(child)["model"] == config_lib.as_json(parent)["model"]
    assert (child.threat.norm, child.threat.eps) == ("l2", 0.8)  # Fashion-MNIST's usual L2
    with pytest.raises(errors.UserError, match="norm"):
        config_lib.load_config(f"{spec}:parent={tmp_path},norm=l3")


@pytest.mark.parametrize("path", TRAIN_CONFIGS)
@pytest.mark.parametrize("variant", ["", ":runlocal"])
def test_shipped_training_configs_validate_and_build(path, variant):
    """Every training config, full and runlocal: valid, its attack and its model build."""
    config = config_lib.load_config(os.path.join(ROOT, path) + variant)
    train_config.validate_train_config(config)
    adversarial.make_training_attack(config.threat, config.attack)
    model = models.from_config(config, config.dataset.num_classes or 10)
    crops = [
        op.size for op in data.eval_ops(config.dataset)[1] if isinstance(op, data.ops.CentralCrop)
    ]
    size = crops[-1] if crops else config.dataset.image_size or 28
    channels = 1 if config.dataset.name == "fashion_mnist" else 3
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False),
        jnp.zeros((1, size, size, channels)),
    )
    assert models.param_count(shapes["params"]) > 0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.model.update(name="resnet-51"), r"model.name 'resnet-51'.*resnet-50"),
        (lambda c: c.dataset.update(name="fmnist"), r"dataset.name 'fmnist'"),
        (lambda c: c.threat.update(norm="l3"), r"l3"),
        (lambda c: c.threat.update(eps=-0.1), r"-0.1"),
        (lambda c: c.optimizer.update(name="adam"), r"optimizer.name 'adam'.*adamw"),
        (lambda c: c.update(batch_size=0), r"batch_size=0: expected an integer >= 1"),
        (lambda c: c.schedule.update(boundaries=(0.7, 0.2)), r"increasing fractions"),
        (lambda c: c.schedule.update(name="linear"), r"schedule.name 'linear'"),
        (lambda c: c.update(compute_dtype="float16"), r"compute_dtype 'float16'.*bfloat16"),
    ],
)
def test_validate_rejects(mutate, message):
    config = train_config.base_train_config()
    mutate(config)
    with pytest.raises(ValueError, match=message):
        train_config.validate_train_config(config)


def test_validate_rejects_unknown_and_mistyped_keys():
    config = train_config.base_train_config()
    config.optimzer = dict(lr=0.1)
    with pytest.raises(ValueError, match=r"Unknown config key 'optimzer'.*'optimizer'"):
        train_config.validate_train_config(config)
    # A config file that builds its own ConfigDict can hold any type; the schema catches it.
    config = ml_collections.ConfigDict(
        dict(train_config.base_train_config().to_dict(), num_epochs="ten")
    )
    with pytest.raises(ValueError, match=r"num_epochs='ten' has type str, expected int"):
        train_config.validate_train_config(config)
    config = train_config.base_train_config()
    config.optimizer = dict(name="sgd", lr=0.1)
    with pytest.raises(ValueError, match=r"'optimizer' lacks .*momentum.*update"):
        train_config.validate_train_config(config)


def _adversarial(c):
    c.threat.update(norm="linf", eps=0.1)
    c.attack.update(name="apgd")


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("label_smoothing", 1.0, r"a number in \[0, 1\)"),
        ("label_smoothing", -0.1, r"a number in \[0, 1\)"),
        ("attack.steps", 0, "an integer >= 1"),
        ("attack.step_size", -1.0, "a finite number >= 0"),
        ("dataset.image_size", -1, "an integer >= 0"),
        ("dataset.crop_padding", -4, "an integer >= 0"),
        ("dataset.num_eval_examples", -1, "an integer >= 0"),
        ("dataset.num_train_examples", -1, "an integer >= 0"),
        ("dataset.num_classes", 1, "an integer >= 2"),
        ("optimizer.weight_decay", -5e-4, "a finite number >= 0"),
        ("optimizer.weight_decay", float("nan"), "a finite number >= 0"),
        ("optimizer.momentum", 1.0, r"a number in \[0, 1\)"),
        ("optimizer.b2", 1.5, r"a number in \[0, 1\)"),
        ("optimizer.lr", float("inf"), "a finite number >= 0"),
        ("optimizer.grad_clip_norm", -1.0, "a finite number >= 0"),
        ("schedule.decay_factor", 0.0, "a finite number > 0"),
        ("schedule.warmup_steps", -1, "an integer >= 0"),
        ("seed", -1, "an integer >= 0"),
        ("max_steps", -1, "an integer >= 0"),
        ("eval_batch_size", 0, "an integer >= 1"),
    ],
)
def test_validate_train_ranges(key, value, expected):
    """Each numeric key out of range: the message names the key, the value and the range."""
    config = train_config.base_train_config()
    if key.startswith("attack."):
        _adversarial(config)  # attack settings are checked only when there is an attack
    _set(config, key, value)
    message = re.escape(f"Config {key}={value!r}: expected ") + expected + r"\.$"
    with pytest.raises(errors.UserError, match=message):
        train_config.validate_train_config(config)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.attack.update(loss="cw"), r"attack.loss 'cw'.*ce, dlr"),
        (lambda c: c.threat.update(eps=float("inf")), r"Config threat \(norm, eps\).*inf"),
        (lambda c: c.threat.update(multi=("linf:0.1", "l2:x")), r"threat.multi: .*'l2:x'"),
    ],
)
def test_validate_train_rejects_attack_and_threat(mutate, message):
    config = train_config.base_train_config()
    _adversarial(config)
    mutate(config)
    if config.threat.multi:
        config.threat.update(norm="multi", eps=0.0)
    with pytest.raises(errors.UserError, match=message):
        train_config.validate_train_config(config)


def test_allowed_names_come_from_their_modules():
    """Every name the owning module accepts validates (config_lib keeps no copies)."""
    for name in data.DATASET_NAMES:
        config = train_config.base_train_config()
        config.dataset.name = name
        train_config.validate_train_config(config)
    for dtype in models.COMPUTE_DTYPES:
        config = train_config.base_train_config()
        config.compute_dtype = dtype
        train_config.validate_train_config(config)
    for optimizer in optim.OPTIMIZER_NAMES:
        for schedule in optim.SCHEDULE_NAMES:
            config = train_config.base_train_config()
            config.optimizer.name, config.schedule.name = optimizer, schedule
            train_config.validate_train_config(config)
    for name in adversarial.ATTACK_NAMES[1:]:
        config = train_config.base_train_config()
        _adversarial(config)
        config.attack.name = name
        train_config.validate_train_config(config)
    for copy in ("DATASET_NAMES", "COMPUTE_DTYPES", "BN_POLICIES", "GRID_KINDS", "ATTACK_NAMES"):
        assert not hasattr(config_lib, copy)


SOUP_CONFIGS = sorted(
    os.path.join("configs", f)
    for f in os.listdir(os.path.join(ROOT, "configs"))
    if f.startswith("soup_") and f.endswith(".py")
)


@pytest.mark.parametrize("path", SOUP_CONFIGS)
@pytest.mark.parametrize("variant", ["", ":runlocal", ":soup=l2_l1,bn=recalibrate"])
def test_shipped_soup_configs_validate(path, variant):
    soup_config.validate_soup_config(config_lib.load_config(os.path.join(ROOT, path) + variant))


def _soup_config():
    config = soup_config.base_soup_config()
    config.ingredients = ("runs/a", "runs/b")
    return config


def test_soup_config_accepts_every_owned_name_and_another_dataset():
    for kind in soup.GRID_KINDS:
        for bn in soup.BN_POLICIES:
            for version in autoattack.VERSIONS:
                config = _soup_config()
                config.grid.kind, config.bn_policy, config.eval.version = kind, bn, version
                config.grid.weights = ((0.25, 0.75),) if kind == "list" else ()
                soup_config.validate_soup_config(config)
    config = _soup_config()
    config.grid.update(kind="line", low=-0.5, high=1.5, step=0.5)
    config.eval.dataset = "cifar10:test[:1000]"
    soup_config.validate_soup_config(config)
    config.eval.update(dataset="cifar100", threats=("linf:8/255",))  # no radii: named here
    soup_config.validate_soup_config(config)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("eval.n_examples", -1, "an integer >= 0"),
        ("eval.batch_size", 0, "an integer >= 1"),
        ("eval.n_iter", -5, "an integer >= 0"),
        ("eval.n_target_classes", -1, "an integer >= 0"),
        ("grid.low", float("-inf"), "a finite number"),
        ("grid.high", float("nan"), "a finite number"),
        ("grid.step", 0.0, r"a number in \(0, 1\]"),
        ("calibration_examples", 0, "an integer >= 1"),
        ("chunk", 0, "an integer >= 1"),
        ("vectorize", -2, "an integer >= 1"),
        ("seed", -3, "an integer >= 0"),
    ],
)
def test_validate_soup_ranges(key, value, expected):
    """Each numeric key out of range: the message names the key, the value and the range."""
    config = _soup_config()
    _set(config, key, value)
    message = re.escape(f"Config {key}={value!r}: expected ") + expected + r"\.$"
    with pytest.raises(errors.UserError, match=message):
        soup_config.validate_soup_config(config)


@pytest.mark.parametrize("low, high", [(0.5, 0.5), (1.0, 0.0)])
def test_line_grid_needs_low_below_high(low, high):
    config = _soup_config()
    config.grid.update(kind="line", low=low, high=high)
    message = f"grid.low={low!r}, grid.high={high!r}: expected low < high for grid.kind='line'"
    with pytest.raises(errors.UserError, match=re.escape(message)):
        soup_config.validate_soup_config(config)
    config.grid.kind = "simplex"  # the bounds matter only to a line
    soup_config.validate_soup_config(config)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.grid.update(kind="lines"), r"grid.kind 'lines'.*simplex, line.*'line'"),
        (lambda c: c.update(bn_policy="recalibrated"), r"bn_policy 'recalibrated'.*'recalibrate'"),
        (lambda c: c.eval.update(version="plus"), r"eval.version 'plus'.*standard, fast"),
        (lambda c: c.eval.update(compute_dtype="fp16"), r"eval.compute_dtype 'fp16'"),
        (lambda c: c.update(evaluation="vmap"), r"evaluation 'vmap'.*one_by_one"),
        (lambda c: c.eval.update(threats=("linf:x",)), r"eval.threats: .*'linf:x'"),
        (
            lambda c: c.eval.update(dataset="cifar1"),
            r"eval.dataset='cifar1': Unknown dataset 'cifar1'.*'cifar10'",
        ),
        (
            lambda c: c.eval.update(dataset="synthetic"),
            r"eval.dataset='synthetic': .*'synthetic'.*eval.threats",
        ),
        (lambda c: c.eval.update(dataset=":test"), r"eval.dataset=':test': .*names no dataset"),
        (
            lambda c: c.eval.update(dataset="cifar10:test", split="train"),
            r"split 'test' and eval.split='train'",
        ),
    ],
)
def test_validate_soup_rejects(mutate, message):
    config = _soup_config()
    mutate(config)
    with pytest.raises(errors.UserError, match=message):
        soup_config.validate_soup_config(config)


def test_paper_soup_recipe():
    config = recipes.paper_soup_config("soup=l2_l1", parent="p", threats=("linf:0.1", "l2:0.8"))
    assert config.ingredients == ("runs/p", "runs/p_to_l2", "runs/p_to_l1")
    assert config.labels == ("linf", "l2", "l1")
    with pytest.raises(errors.UserError, match=r"soup 'l3'.*l2, nominal, l2_l1"):
        recipes.paper_soup_config("soup=l3", parent="p", threats=("linf:0.1", "l2:0.8"))


def test_finetune_recipe_keeps_model_and_data():
    parent = config_lib.load_config(os.path.join(ROOT, FMNIST))
    child = recipes.finetune_config(parent, norm="l2", eps=0.8, init_from="runs/p", num_epochs=1)
    assert child.model.to_dict() == parent.model.to_dict()
    assert child.dataset.to_dict() == parent.dataset.to_dict()
    assert (child.threat.norm, child.threat.eps, child.init_from) == ("l2", 0.8, "runs/p")
    assert (child.optimizer.lr, child.schedule.boundaries) == (0.01, (1 / 3, 2 / 3))
    train_config.validate_train_config(child)


def test_schemas_and_config_files_load_without_jax():
    """The schemas live beside their drivers, yet loading a config imports no JAX (2-3 s)."""
    code = (
        "import sys\n"
        "from seasoning import config_lib\n"
        "from seasoning.soup import config as soup_config\n"
        "from seasoning.shift import config as shift_config\n"
        "import seasoning.demo.config, seasoning.train_config\n"
        "for path in ('configs/fmnist_cnn_linf.py', 'configs/fmnist_cnn_linf_to_l2.py',\n"
        "             'configs/soup_fmnist.py', 'configs/shift_fmnist.py'):\n"
        "    config_lib.load_config(path)\n"
        "soup_config.base_soup_config(), shift_config.base_shift_config()\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
