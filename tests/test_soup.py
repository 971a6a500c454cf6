"""Soups: stacking, weighted sums, grids, greedy soups and BatchNorm recalibration."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seasoning import models, soup

K = 3


def _tree(seed):
    """A variables-like tree with float32, bfloat16 and int32 leaves."""
    keys = jax.random.split(jax.random.key(seed), 4)
    return {
        "params": {
            "Dense_0": {
                "kernel": jax.random.normal(keys[0], (3, 4)),
                "bias": jax.random.normal(keys[1], (4,)),
            },
            "Embed_0": {"embedding": jax.random.normal(keys[2], (5, 2)).astype(jnp.bfloat16)},
        },
        "batch_stats": {"BatchNorm_0": {"mean": jax.random.normal(keys[3], (4,))}},
        "counter": jnp.asarray([seed, 10 * seed], jnp.int32),
    }


def _trees(k=K):
    return [_tree(seed) for seed in range(1, k + 1)]


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _leaf_map(fn, *trees):
    """`fn` on the float32 values of every leaf, cast back to the leaf's dtype."""

    def leaf(*xs):
        return fn(*[np.asarray(x, np.float32) for x in xs]).astype(xs[0].dtype)

    return jax.tree.map(leaf, *trees)


# ----------------------------------------------------------------------------------------
# combine / stack / mix / uniform


@pytest.mark.parametrize("index", range(K))
def test_one_hot_weights_return_the_ingredient_bit_for_bit(index):
    trees = _trees()
    weights = np.eye(K)[index]
    _assert_trees_equal(soup.combine(trees, weights), trees[index])
    _assert_trees_equal(soup.combine_stacked(soup.stack(trees), weights), trees[index])


def test_combine_is_the_weighted_sum_in_the_leaf_dtype():
    trees = _trees()
    weights = [0.5, 0.3, 0.2]
    out = soup.combine(trees, weights)
    expected = _leaf_map(lambda a, b, c: 0.5 * a + 0.3 * b + 0.2 * c, *trees)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True):
        assert x.dtype == y.dtype
        if x.dtype == jnp.bfloat16:  # one bfloat16 rounding of nearly the same float32
            np.testing.assert_allclose(np.float32(x), np.float32(y), rtol=1e-2, atol=1e-2)
        elif jnp.issubdtype(x.dtype, jnp.floating):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    # Integer leaves are never averaged: they come from the heaviest ingredient.
    np.testing.assert_array_equal(out["counter"], trees[0]["counter"])
    heaviest_last = soup.combine(trees, [0.2, 0.3, 0.5])
    np.testing.assert_array_equal(heaviest_last["counter"], trees[2]["counter"])


def test_mix_half_is_the_leafwise_mean():
    a, b = _trees(2)
    expected = _leaf_map(lambda x, y: (x + y) / 2, a, b)
    expected["counter"] = a["counter"]  # integers are not averaged; ties go to the first
    _assert_trees_equal(soup.mix(a, b, 0.5), expected)
    _assert_trees_equal(soup.mix(a, b, 0.0), a)
    _assert_trees_equal(soup.mix(a, b, 1), b)


def test_mix_equals_combine_and_extrapolates_only_when_asked():
    a, b = _trees(2)
    _assert_trees_equal(soup.mix(a, b, 0.25), soup.combine([a, b], [0.75, 0.25]))
    with pytest.raises(ValueError, match=r"alpha=1\.5.*allow_extrapolation"):
        soup.mix(a, b, 1.5)
    with pytest.raises(ValueError, match="alpha=-0.5"):
        soup.mix(a, b, -0.5)
    with pytest.raises(ValueError, match="finite"):
        soup.mix(a, b, float("nan"))
    out = soup.mix(a, b, 1.5, allow_extrapolation=True)
    np.testing.assert_allclose(
        out["params"]["Dense_0"]["kernel"],
        -0.5 * a["params"]["Dense_0"]["kernel"] + 1.5 * b["params"]["Dense_0"]["kernel"],
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_array_equal(out["counter"], b["counter"])


def test_mix_traces_under_jit():
    a, b = _trees(2)
    jitted = jax.jit(soup.mix)(a, b, 0.5)
    for x, y in zip(jax.tree.leaves(jitted), jax.tree.leaves(soup.mix(a, b, 0.5)), strict=True):
        np.testing.assert_allclose(np.float32(x), np.float32(y), rtol=1e-6)


def test_combine_stacked_equals_combine_of_list():
    trees = _trees()
    stacked = soup.stack(trees)
    assert stacked["params"]["Dense_0"]["kernel"].shape == (K, 3, 4)
    assert stacked["params"]["Embed_0"]["embedding"].dtype == jnp.bfloat16
    assert stacked["counter"].dtype == jnp.int32
    for weights in ([0.2, 0.3, 0.5], [1 / 3] * 3, [0.0, 0.9, 0.1]):
        _assert_trees_equal(soup.combine_stacked(stacked, weights), soup.combine(trees, weights))


def test_vmap_over_a_weight_grid_equals_per_row_combine():
    trees = _trees()
    stacked = soup.stack(trees)
    grid = soup.simplex_grid(K, 0.25)
    soup.check_weights(grid, K)
    many = jax.jit(jax.vmap(soup.combine_stacked, in_axes=(None, 0)))(stacked, grid)
    assert many["params"]["Dense_0"]["kernel"].shape == (len(grid), 3, 4)
    for g, row in enumerate(grid):
        one = soup.combine(trees, row)
        row_g = jax.tree.map(lambda leaf, g=g: leaf[g], many)
        for x, y in zip(jax.tree.leaves(row_g), jax.tree.leaves(one), strict=True):
            assert x.dtype == y.dtype
            np.testing.assert_allclose(np.float32(x), np.float32(y), rtol=1e-6, atol=1e-7)


def test_uniform_is_the_mean():
    trees = _trees()
    out = soup.uniform(trees)
    expected = _leaf_map(lambda a, b, c: (a + b + c) / 3, *trees)
    np.testing.assert_allclose(
        out["params"]["Dense_0"]["kernel"], expected["params"]["Dense_0"]["kernel"], rtol=1e-6
    )
    np.testing.assert_array_equal(out["counter"], trees[0]["counter"])


# ----------------------------------------------------------------------------------------
# Errors


def test_ingredients_that_differ_name_the_first_differing_path():
    a, b = _trees(2)
    b["params"]["Dense_0"]["kernel"] = jnp.zeros((3, 5))
    for fn in (soup.stack, soup.uniform, lambda t: soup.combine(t, [0.5, 0.5])):
        with pytest.raises(ValueError, match=r"ingredient 1 .*params/Dense_0/kernel: shape"):
            fn([a, b])
    with pytest.raises(ValueError, match="params/Dense_0/kernel"):
        soup.mix(a, b, 0.5)
    c = _tree(3)
    del c["params"]["Embed_0"]
    with pytest.raises(ValueError, match="params/Embed_0/embedding: only in the first"):
        soup.stack([a, c])
    d = _tree(4)
    d["batch_stats"]["BatchNorm_0"]["mean"] = d["batch_stats"]["BatchNorm_0"]["mean"].astype(
        jnp.bfloat16
    )
    with pytest.raises(ValueError, match="batch_stats/BatchNorm_0/mean: dtype"):
        soup.combine([a, d], [0.5, 0.5])


def test_empty_and_non_list_ingredients():
    with pytest.raises(ValueError, match="at least one"):
        soup.stack([])
    with pytest.raises(ValueError, match="at least one"):
        soup.combine([], [])
    with pytest.raises(TypeError, match="combine_stacked"):
        soup.combine(soup.stack(_trees()), [0.2, 0.3, 0.5])


@pytest.mark.parametrize("use_stacked", [False, True])
def test_weight_errors(use_stacked):
    trees = _trees()
    stacked = soup.stack(trees)

    def run(weights, **kw):
        if use_stacked:
            return soup.combine_stacked(stacked, weights, **kw)
        return soup.combine(trees, weights, **kw)

    with pytest.raises(ValueError, match=r"2 weights for 3 soup ingredients"):
        run([0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        run([0.5, float("nan"), 0.5])
    with pytest.raises(ValueError, match="finite"):
        run([0.5, float("inf"), 0.5], convex=False)
    with pytest.raises(ValueError, match=r">= 0 .*allow_extrapolation"):
        run([-0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"sum to 0\.9"):
        run([0.5, 0.2, 0.2])
    with pytest.raises(ValueError, match=r"sum to 1\.1"):
        run([-0.5, 1.0, 0.6], allow_extrapolation=True)
    run([0.5, 0.25, 0.25 + 5e-7])  # within the tolerance

    # Extrapolation (an affine combination) when asked; any finite weights with convex=False.
    kernels = [t["params"]["Dense_0"]["kernel"] for t in trees]
    out = run([-0.5, 1.0, 0.5], allow_extrapolation=True)
    np.testing.assert_allclose(
        out["params"]["Dense_0"]["kernel"],
        -0.5 * kernels[0] + kernels[1] + 0.5 * kernels[2],
        rtol=1e-5,
        atol=1e-6,
    )
    out = run([2.0, 3.0, 0.0], convex=False)
    np.testing.assert_allclose(
        out["params"]["Dense_0"]["kernel"], 2 * kernels[0] + 3 * kernels[1], rtol=1e-5, atol=1e-6
    )


def test_check_weights_on_a_grid_names_the_bad_row():
    grid = soup.simplex_grid(3, 0.5)
    np.testing.assert_array_equal(soup.check_weights(grid, 3), grid)
    grid[4, 0] += 0.1
    with pytest.raises(ValueError, match=r"grid row 4\) sum to 1\.1"):
        soup.check_weights(grid, 3)
    with pytest.raises(ValueError, match="3 weights for 2 soup ingredients"):
        soup.check_weights(grid, 2)


# ----------------------------------------------------------------------------------------
# Grids


@pytest.mark.parametrize("n, step, size", [(1, 0.1, 1), (2, 0.1, 11), (3, 0.1, 66), (4, 0.1, 286)])
def test_simplex_grid(n, step, size):
    grid = soup.simplex_grid(n, step)
    assert grid.shape == (size, n) and grid.dtype == np.float64
    assert (grid >= 0).all()
    np.testing.assert_allclose(grid.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert len({tuple(row) for row in grid}) == size
    counts = grid / step
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    # Descending lexicographic order: from the first ingredient alone to the last alone.
    np.testing.assert_array_equal(grid[0], np.eye(n)[0])
    np.testing.assert_array_equal(grid[-1], np.eye(n)[-1])
    assert [tuple(r) for r in grid] == sorted((tuple(r) for r in grid), reverse=True)


def test_simplex_grid_two_ingredients_order_and_exact_entries():
    grid = soup.simplex_grid(2, 0.1)
    np.testing.assert_array_equal(grid[:, 1], [k / 10 for k in range(11)])
    np.testing.assert_array_equal(grid[:, 0], [(10 - k) / 10 for k in range(11)])
    assert soup.simplex_grid(3, 1 / 3).shape == (10, 3)


@pytest.mark.parametrize(
    "n, step, match",
    [
        (0, 0.1, "n=0"),
        (-1, 0.1, "n=-1"),
        (2.5, 0.1, "integer"),
        (3, 0.3, "does not divide 1"),
        (3, 0.0, r"\(0, 1\]"),
        (3, 1.5, r"\(0, 1\]"),
        (3, float("nan"), r"\(0, 1\]"),
    ],
)
def test_simplex_grid_errors(n, step, match):
    with pytest.raises(ValueError, match=match):
        soup.simplex_grid(n, step)


def test_simplex_grid_refuses_huge_grids():
    with pytest.raises(ValueError, match="max_rows"):
        soup.simplex_grid(10, 0.01)


def test_line_grid():
    np.testing.assert_array_equal(soup.line_grid(0.1), soup.simplex_grid(2, 0.1))
    grid = soup.line_grid(0.25, low=-0.5, high=1.5)
    assert grid.shape == (9, 2)
    np.testing.assert_array_equal(grid[:, 1], np.arange(-0.5, 1.51, 0.25))
    np.testing.assert_allclose(grid.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert soup.line_grid(0.1, low=-0.5, high=1.5).shape == (21, 2)
    with pytest.raises(ValueError, match="does not divide"):
        soup.line_grid(0.3)
    with pytest.raises(ValueError, match="low < high"):
        soup.line_grid(0.1, low=1.0, high=0.0)
    # Extrapolating rows need allow_extrapolation in combine.
    trees = _trees(2)
    with pytest.raises(ValueError, match=">= 0"):
        soup.combine(trees, grid[0])
    soup.combine(trees, grid[0], allow_extrapolation=True)


# ----------------------------------------------------------------------------------------
# Greedy soup


def _scalar_trees(values):
    return [
        {"w": jnp.asarray([v], jnp.float32), "n": jnp.asarray(i, jnp.int32)}
        for i, v in enumerate(values)
    ]


def _distance_score(tree):
    return -float(jnp.sum(tree["w"] ** 2))  # target 0


def test_greedy_picks_the_expected_subset():
    # Own scores: -1, -1, -9, -0.25 -> tried in the order 3, 0, 1, 2 (ties by index).
    # {3}: 0.5 (-0.25); +0: 0.75 (-0.5625, rejected); +1: -0.25 (-0.0625, kept);
    # +2: 0.833 (rejected).
    trees = _scalar_trees([1.0, -1.0, 3.0, 0.5])
    result = soup.greedy(trees, _distance_score)
    out, chosen, scores = result
    assert chosen == [3, 1]
    assert list(scores) == [3, 0, 1, 2]
    np.testing.assert_allclose(
        list(scores.values()), [-0.25, -0.5625, -0.0625, -25 / 36], rtol=1e-6
    )
    np.testing.assert_allclose(out["w"], [-0.25])
    assert scores[chosen[-1]] == _distance_score(out)
    assert int(out["n"]) == 1  # integer leaf: the first (by index) of the heaviest ingredients


def test_greedy_with_an_order_and_ties_accepted():
    trees = _scalar_trees([1.0, -1.0, 3.0, 0.5])
    result = soup.greedy(trees, _distance_score, order=[2, 0])
    assert result.chosen == [2, 0]  # 3 -> 2: better
    np.testing.assert_allclose(result.soup["w"], [2.0])
    # Adding an equal-scoring ingredient is accepted (>=).
    result = soup.greedy(_scalar_trees([1.0, 1.0]), _distance_score)
    assert result.chosen == [0, 1]
    with pytest.raises(ValueError, match="distinct ingredient indices"):
        soup.greedy(trees, _distance_score, order=[0, 0])
    with pytest.raises(ValueError, match="distinct ingredient indices"):
        soup.greedy(trees, _distance_score, order=[4])


# ----------------------------------------------------------------------------------------
# BatchNorm recalibration


@pytest.fixture(scope="module")
def cnn():
    model = models.get_model("cnn-small", num_classes=10)
    images = jax.random.uniform(jax.random.key(7), (64, 28, 28, 1), jnp.float32)
    variables = model.init(jax.random.key(0), images[:1])
    # Stale statistics, far from anything the images produce.
    variables["batch_stats"] = jax.tree.map(
        lambda s: jnp.full_like(s, 3.0), variables["batch_stats"]
    )
    return model, variables, images


def _population_stats(model, variables, images):
    """Mean and variance of each BatchNorm input (the conv outputs) in a full-batch pass."""
    _, state = model.apply(
        variables,
        images,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda module, _: isinstance(module, nn.Conv),
    )
    stats = {}
    for i in range(3):
        (x,) = state["intermediates"][f"Conv_{i}"]["__call__"]
        x = np.asarray(x, np.float64)
        stats[f"BatchNorm_{i}"] = (x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)))
    return stats


@pytest.mark.slow
def test_recalibrate_gives_the_population_statistics(cnn):
    model, variables, images = cnn
    new = soup.recalibrate_batch_stats(model, variables, images, batch_size=64)
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    _assert_trees_equal(new["params"], variables["params"])
    expected = _population_stats(model, variables, images)
    for layer, (mean, var) in expected.items():
        got = new["batch_stats"][layer]
        assert got["mean"].dtype == jnp.float32 and got["var"].dtype == jnp.float32
        np.testing.assert_allclose(got["mean"], mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["var"], var, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(expected["BatchNorm_0"][1])) > 1e-3  # not a trivial layer
    # Deterministic; the old statistics do not matter.
    again = soup.recalibrate_batch_stats(model, new, images, batch_size=64)
    _assert_trees_equal(again, new)


def test_recalibrate_first_layer_is_independent_of_the_batch_size(cnn):
    model, variables, images = cnn
    full = soup.recalibrate_batch_stats(model, variables, images, batch_size=64)
    for batch_size in (16, 24):  # 24: batches of 24, 24 and 16
        new = soup.recalibrate_batch_stats(model, variables, images, batch_size=batch_size)
        for name in ("mean", "var"):
            np.testing.assert_allclose(
                new["batch_stats"]["BatchNorm_0"][name],
                full["batch_stats"]["BatchNorm_0"][name],
                rtol=1e-5,
                atol=1e-5,
            )
        # Deeper layers see batch-normalised inputs: close, not identical.
        np.testing.assert_allclose(
            new["batch_stats"]["BatchNorm_2"]["mean"],
            full["batch_stats"]["BatchNorm_2"]["mean"],
            rtol=1e-2,
            atol=1e-2,
        )


def test_recalibrate_with_an_apply_function(cnn):
    model, variables, images = cnn
    by_module = soup.recalibrate_batch_stats(model, variables, images[:32], batch_size=32)
    by_fn = soup.recalibrate_batch_stats(model.apply, variables, images[:32], batch_size=32)
    _assert_trees_equal(by_fn, by_module)


def test_recalibrate_without_batch_stats_returns_the_variables():
    def apply_fn(*args, **kwargs):
        raise AssertionError("no forward pass is needed without BatchNorm")

    vit_like = {"params": {"Transformer": {"LayerNorm_0": {"scale": jnp.ones(8)}}}}
    images = jnp.zeros((4, 32, 32, 3))
    assert soup.recalibrate_batch_stats(apply_fn, vit_like, images) is vit_like
    empty = {**vit_like, "batch_stats": {}}
    assert soup.recalibrate_batch_stats(apply_fn, empty, images) is empty


def test_recalibrate_errors(cnn):
    model, variables, images = cnn
    with pytest.raises(ValueError, match="batch_size=0"):
        soup.recalibrate_batch_stats(model, variables, images, batch_size=0)
    with pytest.raises(ValueError, match="at least one image"):
        soup.recalibrate_batch_stats(model, variables, images[:0])
    stats = dict(variables["batch_stats"], Extra_BatchNorm={"mean": jnp.zeros(2)})
    with pytest.raises(ValueError, match="Extra_BatchNorm did not run"):
        soup.recalibrate_batch_stats(model, {**variables, "batch_stats": stats}, images[:8])


def test_policies():
    assert soup.BN_POLICIES == ("interpolate", "recalibrate")
    assert set(soup.__all__) <= set(dir(soup))


def test_the_package_imports_its_code_on_first_use():
    """`seasoning.soup` loads JAX only when a name is used, also when a submodule (which sets
    itself as an attribute of the package) is imported first."""
    code = (
        "import sys\n"
        "from seasoning import soup\n"
        "assert 'jax' not in sys.modules\n"
        "from seasoning.soup.mixing import stack\n"
        "assert callable(soup.combine) and soup.combine.__name__ == 'combine'\n"
        "assert soup.stack is stack and soup.bn.BN_POLICIES is soup.BN_POLICIES\n"
        "assert set(soup.__all__) <= set(dir(soup))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
