"""BatchNorm policies of a soup: recalibration inside a compiled program, for any momentum."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seasoning import errors, models, soup
from seasoning.soup import bn

EPS = 1e-5  # flax's BatchNorm default


class _TwoBatchNorms(nn.Module):
    """BN on the input, a per-pixel Dense, ReLU, a second BN: both with momentum 0.99."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=EPS)(x)
        x = nn.relu(nn.Dense(5)(x))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=EPS)(x)
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def two_bn():
    model = _TwoBatchNorms()
    key_x, key_init, key_p = jax.random.split(jax.random.key(3), 3)
    # Channels with distinct means and spreads, far from the initial statistics (0, 1).
    images = 2.0 + jax.random.uniform(key_x, (24, 4, 4, 3)) * jnp.asarray([1.0, 3.0, 0.5])
    variables = model.init(key_init, images[:1])
    # Non-trivial BN scales and biases, so the second layer's input depends on them.
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(key_p, len(leaves))
    params = jax.tree.unflatten(
        treedef,
        [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)],
    )
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    # Two training-mode passes: the momentum-0.99 running averages move only 2% of the way.
    for _ in range(2):
        _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
    return model, variables, images


def _expected_stats(variables, images):
    """Each BN layer's input mean and biased variance, computed in numpy (float64)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    x = np.asarray(images, np.float64)
    axes = (0, 1, 2)
    first = (x.mean(axes), x.var(axes))
    h = (x - first[0]) / np.sqrt(first[1] + EPS) * p["BatchNorm_0"]["scale"]
    h = h + p["BatchNorm_0"]["bias"]
    h = np.maximum(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0.0)
    return {"BatchNorm_0": first, "BatchNorm_1": (h.mean(axes), h.var(axes))}


def _old_recalibration(model, variables, images, momentum=0.9):
    """The approach this replaces: zeroed statistics, one pass, divided by (1 - momentum)."""
    zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
    _, updates = model.apply(
        {**variables, "batch_stats": zeros}, images, train=True, mutable=["batch_stats"]
    )
    return jax.tree.map(lambda s: s / (1.0 - momentum), updates["batch_stats"])


def _close(stats, expected, rtol):
    return all(
        np.allclose(stats[layer]["mean"], mean, rtol=rtol, atol=1e-5)
        and np.allclose(stats[layer]["var"], var, rtol=rtol, atol=1e-5)
        for layer, (mean, var) in expected.items()
    )


@pytest.mark.slow
def test_in_program_gives_exact_statistics_for_momentum_099(two_bn):
    model, variables, images = two_bn
    expected = _expected_stats(variables, images)
    assert float(np.min(expected["BatchNorm_1"][1])) > 1e-3  # not a trivial layer
    # The test can fail: neither the running averages nor the old rescaling give them.
    assert not _close(variables["batch_stats"], expected, rtol=1e-2)
    assert not _close(_old_recalibration(model, variables, images), expected, rtol=1e-2)

    new = jax.jit(bn.recalibrate_in_program, static_argnums=0)(model, variables, images)
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    for layer, rtol in (("BatchNorm_0", 1e-5), ("BatchNorm_1", 1e-4)):
        mean, var = expected[layer]
        got = new["batch_stats"][layer]
        assert got["mean"].dtype == jnp.float32 and got["var"].dtype == jnp.float32
        np.testing.assert_allclose(got["mean"], mean, rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(got["var"], var, rtol=rtol, atol=1e-6)
    _assert_close(new["params"], variables["params"], rtol=0)
    # The host version (one batch) agrees.
    host = bn.recalibrate_batch_stats(model, variables, images, batch_size=len(images))
    _assert_close(new, host)


def _assert_close(a, b, rtol=1e-5):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def cnn_soups():
    model = models.get_model("cnn-small", num_classes=10)
    images = jax.random.uniform(jax.random.key(5), (32, 28, 28, 1), jnp.float32)
    ingredients = []
    for seed in (0, 1):
        variables = model.init(jax.random.key(seed), images[:1])
        stale = jax.tree.map(
            lambda s, seed=seed: jnp.full_like(s, 2.0 + seed), variables["batch_stats"]
        )
        ingredients.append({**variables, "batch_stats": stale})
    return model, ingredients, images


@pytest.mark.slow
def test_in_program_equals_the_host_version_on_one_batch(cnn_soups):
    model, (variables, _), images = cnn_soups
    ours = jax.jit(lambda v: bn.recalibrate_in_program(model, v, images))(variables)
    host = soup.recalibrate_batch_stats(model, variables, images, batch_size=len(images))
    _assert_close(ours, host)
    assert not np.allclose(ours["batch_stats"]["BatchNorm_0"]["mean"], 2.0)
    # For the momentum the old rescaling assumed (0.9, cnn-small's), it was right.
    _assert_close(_old_recalibration(model, variables, images), ours["batch_stats"], rtol=1e-4)
    # An apply function works as the module does.
    by_fn = jax.jit(lambda v: bn.recalibrate_in_program(model.apply, v, images))(variables)
    _assert_close(by_fn, ours)


@pytest.mark.slow
def test_in_program_under_vmap_and_lax_map_over_soups(cnn_soups):
    model, ingredients, images = cnn_soups
    stacked = soup.stack(ingredients)
    grid = jnp.asarray([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])

    def recalibrated_soup(weights):
        return bn.recalibrate_in_program(model, soup.combine_stacked(stacked, weights), images)

    many = jax.jit(jax.vmap(recalibrated_soup))(grid)
    mapped = jax.jit(lambda g: jax.lax.map(recalibrated_soup, g))(grid)
    one = jax.jit(recalibrated_soup)
    for i in range(len(grid)):
        alone = one(grid[i])
        _assert_close(jax.tree.map(lambda leaf, i=i: leaf[i], many), alone)
        _assert_close(jax.tree.map(lambda leaf, i=i: leaf[i], mapped), alone)
    # Different soups get different statistics.
    means = many["batch_stats"]["BatchNorm_1"]["mean"]
    assert not np.allclose(means[0], means[1], rtol=1e-3)


def test_without_batch_stats_the_variables_come_back_unchanged():
    def apply_fn(*args, **kwargs):
        raise AssertionError("no forward pass is needed without BatchNorm")

    vit_like = {"params": {"Transformer": {"LayerNorm_0": {"scale": jnp.ones(8)}}}}
    images = jnp.zeros((4, 32, 32, 3))
    assert bn.recalibrate_in_program(apply_fn, vit_like, images) is vit_like
    empty = {**vit_like, "batch_stats": {}}
    assert bn.recalibrate_in_program(apply_fn, empty, images) is empty
    jitted = jax.jit(lambda v: bn.recalibrate_in_program(apply_fn, v, images))(vit_like)
    _assert_close(jitted, vit_like, rtol=0)


def test_in_program_errors(cnn_soups):
    model, (variables, _), images = cnn_soups
    stats = dict(variables["batch_stats"], Extra_BatchNorm={"mean": jnp.zeros(2)})
    with pytest.raises(errors.UserError, match="Extra_BatchNorm did not run"):
        jax.jit(lambda v: bn.recalibrate_in_program(model, v, images[:4]))(
            {**variables, "batch_stats": stats}
        )
    with pytest.raises(errors.UserError, match="at least one image"):
        bn.recalibrate_in_program(model, variables, images[:0])


def test_make_prepare(cnn_soups):
    model, (variables, _), images = cnn_soups
    assert bn.make_prepare("interpolate", model, images) is None
    assert bn.make_prepare("interpolate", model, None) is None
    prepare = bn.make_prepare("recalibrate", model, np.asarray(images[:16]))
    got = jax.jit(prepare)(variables)
    want = jax.jit(lambda v: bn.recalibrate_in_program(model, v, images[:16]))(variables)
    _assert_close(got, want, rtol=0)
    with pytest.raises(errors.UserError, match=r"'mean'.*interpolate, recalibrate"):
        bn.make_prepare("mean", model, images)
    with pytest.raises(errors.UserError, match="at least one calibration image"):
        bn.make_prepare("recalibrate", model, None)


def test_soup_reexports_the_policies():
    assert soup.bn is bn
    assert soup.BN_POLICIES is bn.BN_POLICIES == ("interpolate", "recalibrate")
    assert soup.recalibrate_batch_stats is bn.recalibrate_batch_stats
    assert set(bn.__all__) <= set(dir(bn))
