"""Models: the registry, published parameter counts, normalisation inside, dtypes, BatchNorm.

Big models are only traced (`jax.eval_shape`): no memory or compute is spent on them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seasoning import models

KEY = jax.random.key(0)
TINY_VIT = dict(image_size=32, patch_size=8, depth=2)


def _images(shape, batch=2, seed=1):
    return jax.random.uniform(jax.random.key(seed), (batch, *shape), jnp.float32)


def _abstract_variables(model, shape):
    return jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, *shape), jnp.float32))


# (name, keyword arguments, num_classes, image shape, published parameter count)
PUBLISHED = [
    ("wrn-28-10", {}, 10, (32, 32, 3), 36_479_194),
    ("wrn-70-16", {}, 10, (32, 32, 3), 266_796_506),
    # DeepMind's WRN-70-16 (Gowal et al. 2020: "267M"): the same layers, swish, SAME padding.
    ("dm-wrn-70-16", {}, 10, (32, 32, 3), 266_796_506),
    # kuangliu/pytorch-cifar's ResNet18 and ResNet34 (AutoAttack's and RobustBench's).
    ("resnet-18", {}, 10, (32, 32, 3), 11_173_962),
    ("resnet-34", {}, 10, (32, 32, 3), 21_282_122),
    # Rice et al. / He et al. (final BN-ReLU); kuangliu/pytorch-cifar's has none.
    ("preact-resnet-18", {}, 10, (32, 32, 3), 11_172_170),
    ("preact-resnet-18", {"final_norm": False}, 10, (32, 32, 3), 11_171_146),
    ("resnet-50", {}, 1000, (224, 224, 3), 25_557_032),
    ("vit-b16", {}, 1000, (224, 224, 3), 86_567_656),
    ("vit-s16", {}, 1000, (224, 224, 3), 22_050_664),
    ("vit-ti16", {}, 1000, (224, 224, 3), 5_717_416),
]


@pytest.mark.parametrize("name, kwargs, num_classes, shape, expected", PUBLISHED)
def test_published_parameter_counts(name, kwargs, num_classes, shape, expected):
    model = models.get_model(name, num_classes=num_classes, **kwargs)
    variables = _abstract_variables(model, shape)
    assert models.param_count(variables) == expected
    assert models.param_count(variables["params"]) == expected  # BN statistics do not count
    logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((4, *shape), jnp.float32))
    assert logits.shape == (4, num_classes) and logits.dtype == jnp.float32


def test_cnn_small_is_small():
    model = models.get_model("cnn-small", num_classes=10)
    gray = models.param_count(_abstract_variables(model, (28, 28, 1)))
    assert gray == 458_730
    # RGB 32x32: two more input channels for the first 3x3 convolution (32 filters), and
    # 8x8x64 instead of 7x7x64 features into the dense layer (128 units).
    rgb = models.param_count(_abstract_variables(model, (32, 32, 3)))
    assert rgb == gray + 2 * 9 * 32 + (64 - 49) * 64 * 128


def test_every_registered_name_builds():
    assert {"cnn-small", "wrn-28-10", "wrn-16-4", "preact-resnet-18", "resnet-50"} <= set(
        models.MODEL_NAMES
    )
    assert {"vit-b16", "vit-s16", "vit-ti16"} <= set(models.MODEL_NAMES)
    for name in models.MODEL_NAMES:
        shape = (224, 224, 3) if name.startswith(("vit", "resnet")) else (32, 32, 3)
        variables = _abstract_variables(models.get_model(name, num_classes=7), shape)
        assert variables["params"], name


def test_generic_wide_resnet_name():
    model = models.get_model("wrn-22-2", num_classes=10)
    assert (model.depth, model.widen_factor) == (22, 2)
    variables = _abstract_variables(model, (32, 32, 3))
    assert set(variables) == {"params", "batch_stats"}
    assert sum(k.startswith("group1_block") for k in variables["params"]) == 3


# Models small enough to run for real: (name, keyword arguments, image shape).
SMALL = [
    ("cnn-small", {}, (28, 28, 1)),
    ("cnn-small", {}, (32, 32, 3)),
    ("cnn-small", {"norm": "none"}, (28, 28, 1)),
    ("wrn-10-1", {"mean": (0.5,), "std": (0.25,)}, (28, 28, 1)),
    ("vit-ti16", TINY_VIT, (32, 32, 3)),
]
SMALL_IDS = ["cnn-gray", "cnn-rgb", "cnn-no-bn", "wrn-10-1-gray", "tiny-vit"]


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, shape", SMALL, ids=SMALL_IDS)
def test_small_models_run(name, kwargs, shape):
    model = models.get_model(name, num_classes=10, **kwargs)
    x = _images(shape)
    variables = model.init(KEY, x)
    has_bn = "batch_stats" in variables
    assert set(variables) == ({"params", "batch_stats"} if has_bn else {"params"})
    assert has_bn == (name != "vit-ti16" and kwargs.get("norm") != "none")

    logits = model.apply(variables, x, train=False)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))

    if has_bn:
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        assert set(updates) == {"batch_stats"}
        assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
            variables["batch_stats"]
        )
        moved = jax.tree.map(
            lambda new, old: bool(jnp.any(new != old)),
            updates["batch_stats"],
            variables["batch_stats"],
        )
        assert all(jax.tree.leaves(moved))  # every running mean and variance was updated
        assert not np.allclose(train_logits, logits)  # batch statistics, not running ones
    else:  # train changes nothing without BatchNorm or dropout
        np.testing.assert_array_equal(model.apply(variables, x, train=True), logits)


@pytest.mark.parametrize(
    "name, kwargs, shape", [SMALL[0], SMALL[3], SMALL[4]], ids=["cnn", "wrn", "vit"]
)
def test_bfloat16_compute(name, kwargs, shape):
    model32 = models.get_model(name, num_classes=10, **kwargs)
    model16 = models.get_model(name, num_classes=10, dtype=jnp.bfloat16, **kwargs)
    x = _images(shape)
    variables = jax.jit(model16.init)(KEY, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits16 = jax.jit(model16.apply)(variables, x)
    assert logits16.dtype == jnp.float32 and np.all(np.isfinite(logits16))
    logits32 = jax.jit(model32.apply)(variables, x)  # same variables serve both dtypes
    np.testing.assert_allclose(logits16, logits32, atol=0.1 * float(jnp.abs(logits32).max()))


def test_bfloat16_string_dtype_and_big_model_shapes():
    model = models.get_model("wrn-28-10", num_classes=10, dtype="bfloat16")
    assert model.dtype == jnp.bfloat16
    variables = _abstract_variables(model, (32, 32, 3))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits = jax.eval_shape(
        model.apply, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    )
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [SMALL[0], SMALL[3], SMALL[4]],
    ids=["cnn", "wrn", "vit"],
)
def test_normalisation_is_inside_the_model(name, kwargs, shape):
    """(x + d) with mean m + d gives the logits of x with mean m: the model normalises."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("mean", "std")}
    channels = shape[-1]
    base = models.get_model(name, 10, mean=(0.3,) * channels, std=(0.2,) * channels, **kwargs)
    shifted = models.get_model(name, 10, mean=(0.4,) * channels, std=(0.2,) * channels, **kwargs)
    rescaled = models.get_model(name, 10, mean=(0.3,) * channels, std=(0.4,) * channels, **kwargs)
    x = _images(shape) * 0.5
    variables = jax.jit(base.init)(KEY, x)
    logits = jax.jit(base.apply)(variables, x)
    shifted_apply, rescaled_apply = jax.jit(shifted.apply), jax.jit(rescaled.apply)
    np.testing.assert_allclose(shifted_apply(variables, x + 0.1), logits, rtol=1e-4, atol=1e-4)
    assert not np.allclose(shifted_apply(variables, x), logits, atol=1e-3)
    assert not np.allclose(rescaled_apply(variables, x), logits, atol=1e-3)


def test_statistics_per_channel_and_broadcast():
    x = _images((32, 32, 3))
    single = models.get_model("cnn-small", 10, mean=0.5, std=[0.5])  # a number, a JSON list
    assert single.mean == (0.5,) and single.std == (0.5,)
    per_channel = models.get_model("cnn-small", 10, mean=[0.5, 0.5, 0.5], std=(0.5, 0.5, 0.5))
    variables = single.init(KEY, x)
    np.testing.assert_allclose(
        per_channel.apply(variables, x), single.apply(variables, x), rtol=1e-6
    )


def test_rgb_statistics_on_gray_input_fail_clearly():
    model = models.get_model("cnn-small", 10, mean=(0.4914, 0.4822, 0.4465), std=(0.25,) * 3)
    with pytest.raises(ValueError, match=r"mean=.* has 3 values but the input has 1 channel"):
        _abstract_variables(model, (28, 28, 1))
    with pytest.raises(ValueError, match="3 values but the input has 1 channel"):
        _abstract_variables(models.get_model("preact-resnet-18", 10), (28, 28, 1))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resnet-5O") as info:
        models.get_model("resnet-5O", num_classes=10)
    message = str(info.value)
    assert "Did you mean 'resnet-50'" in message
    assert all(name in message for name in models.MODEL_NAMES)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("wrn-30-10", {}, r"depth 30 .*\(depth - 4\) % 6"),
        ("wrn-28-10", {"depth": 34}, "depth set by the name"),
        ("cnn-small", {"widht": 2}, r"widht.*accepts: dtype, features, hidden, mean, norm, std"),
        ("cnn-small", {"dtype": jnp.float64}, "dtype"),
        ("cnn-small", {"std": (0.5, 0.0)}, "positive"),
        ("cnn-small", {"mean": "gray"}, "mean='gray'"),
        ("vit-ti16", {"image_size": 30, "patch_size": 8}, "must divide image_size=30"),
        ("vit-ti16", {"num_heads": 5}, "must divide hidden_size=192"),
        (
            "wrn-16-4",
            {"activation": "gelu"},
            r"activation='gelu' is not one of \('relu', 'swish'\)",
        ),
        ("wrn-16-4", {"padding": "valid"}, r"padding='valid' is not one of"),
        ("dm-wrn-28-10", {"activation": "relu"}, "activation set by the name"),
        ("vit-ti16", {"gelu_approximate": 1}, "must be True or False"),
        ("vit-ti16", {"attention": "flash"}, r"attention='flash' is not one of"),
    ],
)
def test_bad_arguments_raise_value_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.get_model(name, num_classes=10, **kwargs)


def test_bad_num_classes_and_norm():
    with pytest.raises(ValueError, match="num_classes=0"):
        models.get_model("cnn-small", num_classes=0)
    with pytest.raises(ValueError, match="norm 'layer'"):
        _abstract_variables(models.get_model("cnn-small", 10, norm="layer"), (28, 28, 1))


def test_vit_rejects_other_image_sizes():
    model = models.get_model("vit-ti16", num_classes=10, **TINY_VIT)
    with pytest.raises(ValueError, match="pass image_size=64"):
        jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


def test_vit_fused_attention_equals_flax_attention_and_its_gradient():
    """`attention="fused"` (`jax.nn.dot_product_attention`, cuDNN's on GPUs, XLA's here):
    the same parameters, and in float32 the same logits and input gradient to rounding."""
    einsum = models.get_model("vit-ti16", num_classes=10, **TINY_VIT)
    fused = models.get_model("vit-ti16", num_classes=10, attention="fused", **TINY_VIT)
    x = _images((32, 32, 3), batch=4)
    variables = einsum.init(KEY, x)
    assert jax.tree.structure(fused.init(KEY, x)) == jax.tree.structure(variables)

    def loss(model, x):
        return model.apply(variables, x).sum()

    np.testing.assert_allclose(
        fused.apply(variables, x), einsum.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        jax.grad(functools.partial(loss, fused))(x),
        jax.grad(functools.partial(loss, einsum))(x),
        rtol=1e-4,
        atol=1e-6,
    )


def test_param_count_of_arrays_and_shapes():
    model = models.get_model("cnn-small", num_classes=10)
    variables = model.init(KEY, _images((28, 28, 1)))
    abstract = _abstract_variables(model, (28, 28, 1))
    assert models.param_count(variables) == models.param_count(abstract) == 458_730
    assert models.param_count(variables["params"]) == 458_730
    assert models.param_count({"params": {"w": jnp.zeros((3, 4))}, "batch_stats": {}}) == 12


def test_jitted_apply_matches_eager():
    model = models.get_model("cnn-small", num_classes=10)
    x = _images((28, 28, 1))
    variables = model.init(KEY, x)
    apply = jax.jit(model.apply, static_argnames="train")
    np.testing.assert_allclose(apply(variables, x), model.apply(variables, x), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "strides, padding, lhs_dilation, rhs_dilation",
    [
        ((1, 1), "SAME", None, None),
        ((2, 2), ((1, 1), (1, 1)), None, None),
        ((2, 1), "VALID", None, (2, 2)),
        ((1, 1), ((0, 2), (1, 0)), (2, 2), None),
    ],
)
def test_loop_friendly_conv_has_the_same_values_and_gradients(
    strides, padding, lhs_dilation, rhs_dilation
):
    """The models' convolution (models/conv.py) is lax's, value and both gradients, also
    inside a loop (where it takes its own input- and kernel-gradient paths)."""
    from jax import lax

    from seasoning.models import conv

    x = jax.random.normal(jax.random.key(0), (3, 9, 8, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    common = dict(
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

    def loss(fn, x, k):
        return jnp.sum(jnp.sin(fn(x, k, strides, **common)))

    ours = functools.partial(loss, conv.conv_general_dilated)
    plain = functools.partial(loss, lax.conv_general_dilated)
    np.testing.assert_allclose(ours(x, k), plain(x, k), rtol=1e-6)
    for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(plain, (0, 1))(x, k), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def looped(fn):
        def step(i, zk):
            gz, gk = jax.grad(fn, (0, 1))(*zk)
            return zk[0] - 1e-2 * gz, zk[1] - 1e-2 * gk

        return jax.jit(lambda z: jax.lax.fori_loop(0, 3, step, (z, k)))(x)

    for a, b in zip(looped(ours), looped(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
