"""Config loading, overrides and validation."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from seasoning import adversarial, config_lib, models

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
    if f.endswith(".py") and not f.startswith(("soup_", "shift_"))
)


@pytest.mark.parametrize("path", TRAIN_CONFIGS)
@pytest.mark.parametrize("variant", ["", ":runlocal"])
def test_shipped_training_configs_validate_and_build(path, variant):
    """Every training config, full and runlocal: valid, its attack and its model build."""
    config = config_lib.load_config(os.path.join(ROOT, path) + variant)
    config_lib.validate_train_config(config)
    adversarial.make_training_attack(config.threat, config.attack)
    model = models.from_config(config, config.dataset.num_classes or 10)
    size = config.dataset.image_size or 28
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
        (lambda c: c.update(batch_size=0), r"batch_size=0 must be positive"),
        (lambda c: c.schedule.update(boundaries=(0.7, 0.2)), r"increasing fractions"),
    ],
)
def test_validate_rejects(mutate, message):
    config = config_lib.base_train_config()
    mutate(config)
    with pytest.raises(ValueError, match=message):
        config_lib.validate_train_config(config)


def test_validate_rejects_unknown_and_mistyped_keys():
    config = config_lib.base_train_config()
    config.optimzer = dict(lr=0.1)
    with pytest.raises(ValueError, match=r"Unknown config key 'optimzer'.*'optimizer'"):
        config_lib.validate_train_config(config)
    # A config file that builds its own ConfigDict can hold any type; the schema catches it.
    config = ml_collections.ConfigDict(
        dict(config_lib.base_train_config().to_dict(), num_epochs="ten")
    )
    with pytest.raises(ValueError, match=r"num_epochs='ten' has type str, expected int"):
        config_lib.validate_train_config(config)
    config = config_lib.base_train_config()
    config.optimizer = dict(name="sgd", lr=0.1)
    with pytest.raises(ValueError, match=r"'optimizer' lacks .*momentum.*update"):
        config_lib.validate_train_config(config)
