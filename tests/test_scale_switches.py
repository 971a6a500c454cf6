"""Pod-scale switches of training, each against the plain step: bfloat16 compute, remat,
gradient accumulation over micro-batches, and the attack in chunks."""

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seasoning import (
    adversarial,
    config_lib,
    models,
    parallel,
    threat,
    train,
    train_config,
    training,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_VIT = dict(image_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2, mlp_ratio=2)
SMALL_CNN = dict(features=(8, 16), hidden=32)
LINF = "linf:0.1"


def _attack(spec=LINF, steps=3, **attack):
    """APGD-CE without random start (deterministic, per example), as the training attacks."""
    config = train_config.base_train_config()
    if "," in spec:
        config.threat.update(norm="multi", multi=tuple(spec.split(",")))
    else:
        tm = threat.parse(spec)
        config.threat.update(norm=tm.norm, eps=tm.eps)
    config.attack.update(name="apgd", steps=steps, random_start=False, **attack)
    return adversarial.make_training_attack(config.threat, config.attack)


def _batch(mesh, n=32, shape=(16, 16, 1), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y, parallel.host_to_global({"image": x, "label": y}, mesh)


def _init_state(mesh, model, tx, image_shape, attack=None):
    """A fresh TrainState, initialised in one compiled program (op by op is slower)."""
    if isinstance(attack, training.AttackWithStats):  # its initial statistics join the state
        return _state_maker(mesh, model, tx, image_shape, attack)(jax.random.key(0))
    return _cached_state_maker(mesh, model, tx, image_shape)(jax.random.key(0))


def _state_maker(mesh, model, tx, image_shape, attack=None):
    make = functools.partial(
        training.create_train_state, model, tx, image_shape=image_shape, attack=attack
    )
    return jax.jit(make, out_shardings=parallel.replicated(mesh))


_cached_state_maker = functools.cache(_state_maker)


@functools.cache
def _train_step(mesh, model, attack, switches):
    return training.make_train_step(mesh, model=model, attack=attack, **dict(switches))


def _init(model, x):
    return jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x[:1])


def _step(mesh, model, tx, batch, key=0, attack=None, image_shape=(16, 16, 1), **switches):
    """One jitted step from a fresh state: (old params, new state, metrics), all on the host."""
    state = _init_state(mesh, model, tx, image_shape, attack)
    old = jax.device_get(state.params)
    step = _train_step(mesh, model, attack, tuple(sorted(switches.items())))
    new, metrics = step(state, batch, jax.random.key(key))
    return old, jax.device_get(new), jax.device_get(metrics)


def _max_rel(a, b):
    """max over leaves of max|a - b| / max|a|."""
    return max(
        float(np.max(np.abs(u - v)) / max(np.max(np.abs(u)), 1e-30))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _global_rel(a, b):
    """||a - b|| / ||a|| over all leaves together."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(np.sum((np.float64(u) - v) ** 2) for u, v in zip(la, lb, strict=True))
    return float(np.sqrt(num / sum(np.sum(np.float64(u) ** 2) for u in la)))


def _micro_rows(batch_size, devices, parts):
    """The rows of each part, as `training.split_batch` documents them."""
    per_device = batch_size // devices
    rows = np.arange(batch_size).reshape(devices, parts, per_device // parts)
    return rows.transpose(1, 0, 2).reshape(parts, -1)


# ------------------------------------------------------------------------------------------
# bfloat16 compute with float32 parameters


def _dtype_checker():
    """An optax stage that fails at trace time unless every gradient is float32."""

    def update(grads, state, params=None):
        dtypes = {leaf.dtype for leaf in jax.tree.leaves(grads)}
        assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
        return grads, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _float32_only(*trees):
    leaves = jax.tree.leaves(trees)
    return bool(leaves) and {leaf.dtype for leaf in leaves} == {np.dtype(np.float32)}


@pytest.mark.slow
def test_bfloat16_update_is_the_float32_update_to_bfloat16_precision():
    """A bf16 step of a 1-block ViT next to the f32 step from the same state on the same batch:
    gradients (checked as the optimiser receives them), parameters and optimiser state stay
    float32, and the update agrees to bf16 precision. bf16 keeps 8 significant bits (relative
    rounding 2**-9 = 0.2% an operation); the update differs by 0.9-2.1% (||du_bf16 - du_f32|| /
    ||du_f32|| over 5 batches): 5% asserted."""
    mesh = parallel.make_mesh()
    x, _, batch = _batch(mesh, n=16, shape=(16, 16, 3))
    tx = optax.chain(_dtype_checker(), optax.sgd(0.1, momentum=0.9))
    updates = {}
    for dtype in ("float32", "bfloat16"):
        model = models.get_model(
            "vit-ti16", num_classes=10, dtype=dtype, **{**TINY_VIT, "depth": 1}
        )
        old, new, _ = _step(mesh, model, tx, batch, image_shape=x.shape[1:])
        assert _float32_only(new.params, new.opt_state)
        updates[dtype] = jax.tree.map(np.subtract, new.params, old)
    assert 0 < _global_rel(updates["float32"], updates["bfloat16"]) < 0.05


@pytest.mark.slow
def test_bfloat16_attack_stays_float32_in_the_threat_model():
    """The attack inside a bf16 step (a BatchNorm CNN) gets float32 images and logits and
    returns float32 x_adv (captured inside the step) in the box and the ball; BatchNorm's
    statistics are float32. Tolerances, from 5 batches: the nominal step's BatchNorm statistics
    differ from the f32 step's by at most 0.26-0.53% of each leaf's largest entry (2% asserted);
    the adversarial step's loss by 0.02-0.76% (2% asserted). The adversarial update is not
    compared: the attack itself moves in bf16 (a sign flip of a small input-gradient coordinate
    moves that pixel by 2 eps; 21-26% of the update), and at initialisation the f32 gradient of
    a BatchNorm network moves by 16% (WRN-16-2) when its input is merely rounded to bf16."""
    mesh = parallel.make_mesh()
    x, _, batch = _batch(mesh, n=16)
    tm = threat.parse(LINF)
    plain_attack = _attack(LINF, steps=2)
    captured = {}

    def spy(logits_fn, images, labels, key):
        assert images.dtype == logits_fn(images).dtype == jnp.float32
        x_adv = plain_attack(logits_fn, images, labels, key)
        assert x_adv.dtype == jnp.float32
        jax.debug.callback(lambda v: captured.update(x_adv=np.asarray(v)), x_adv)
        return x_adv

    tx = optax.chain(_dtype_checker(), optax.sgd(0.1))
    stats, losses = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = models.get_model("cnn-small", num_classes=10, dtype=dtype, **SMALL_CNN)
        stats[dtype] = _step(mesh, model, tx, batch)[1].batch_stats
        _, new, metrics = _step(mesh, model, tx, batch, attack=spy)
        assert _float32_only(new.params, new.batch_stats, stats[dtype])
        losses[dtype] = float(metrics["loss"])
        x_adv = captured.pop("x_adv")
        assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
        assert bool(tm.contains(x_adv, x).all()) and np.any(x_adv != x)
    assert 0 < _max_rel(stats["float32"], stats["bfloat16"]) < 0.02
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)


# ------------------------------------------------------------------------------------------
# Rematerialisation


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, kwargs", [("vit-ti16", TINY_VIT), ("wrn-10-1", {})], ids=["vit", "wrn"]
)
def test_remat_changes_neither_parameters_nor_numbers(name, kwargs):
    """Same variables (names, shapes, dtypes), and on the same variables the same logits,
    gradients and BatchNorm updates in train mode; only the program differs (it holds a
    remat). Measured: equal bit for bit on CPU; asserted to 1e-6 relative."""
    x = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    y = np.arange(8) % 10
    plain = models.get_model(name, num_classes=10, **kwargs)
    variables = _init(plain, x)
    results = {}
    for remat in (False, True):
        model = models.get_model(name, num_classes=10, remat=remat, **kwargs)
        shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
        assert jax.tree.structure(shapes) == jax.tree.structure(variables)
        assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(
            lambda v: (v.shape, v.dtype), variables
        )

        def loss(params, model=model):
            logits, updates = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return training.cross_entropy(logits, y).mean(), (logits, updates)

        grad_fn = jax.grad(loss, has_aux=True)
        program = str(jax.make_jaxpr(grad_fn)(variables["params"]))
        assert bool(re.search(r"\bremat", program)) == remat
        results[remat] = jax.jit(grad_fn)(variables["params"])
    (g0, (logits0, up0)), (g1, (logits1, up1)) = results[False], results[True]
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    close(logits0, logits1)
    jax.tree.map(close, g0, g1)
    jax.tree.map(close, up0, up1)
    assert bool(up0) == (name == "wrn-10-1")  # train mode updated the BatchNorm statistics


def test_remat_is_a_validated_model_keyword():
    for name in ("preact-resnet-18", "resnet-50"):
        shapes = [
            jax.eval_shape(
                models.get_model(name, num_classes=10, remat=remat).init,
                jax.random.key(0),
                jnp.zeros((1, 32, 32, 3)),
            )
            for remat in (False, True)
        ]
        assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    config = train_config.base_train_config()
    config.model = dict(name="wrn-16-4", remat=True)
    assert models.from_config(config, 10).remat is True
    with pytest.raises(ValueError, match="remat='yes' must be True or False"):
        models.get_model("wrn-16-4", num_classes=10, remat="yes")
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) remat"):
        models.get_model("cnn-small", num_classes=10, remat=True)


# ------------------------------------------------------------------------------------------
# Gradient accumulation


@pytest.mark.slow
@pytest.mark.parametrize("adversarial_step", [False, True], ids=["nominal", "apgd"])
def test_accumulation_without_batchnorm_is_the_plain_step(adversarial_step):
    """k micro-batches give the plain step's update and metrics over the global batch, to
    float reassociation (measured: 2.7e-7 of each leaf's largest entry; 1e-6 asserted). APGD
    is per example and deterministic here, so every example meets the same x_adv."""
    mesh = parallel.make_mesh()
    _, _, batch = _batch(mesh)
    model = models.get_model("cnn-small", num_classes=10, norm="none", **SMALL_CNN)
    attack = _attack() if adversarial_step else None
    tx = optax.sgd(0.1, momentum=0.9)
    _, plain, plain_metrics = _step(mesh, model, tx, batch, attack=attack)
    _, accumulated, metrics = _step(mesh, model, tx, batch, attack=attack, accumulate_steps=4)
    assert _max_rel(plain.params, accumulated.params) < 1e-6
    assert _max_rel(plain.opt_state, accumulated.opt_state) < 1e-6
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(metrics[key], plain_metrics[key], rtol=1e-6, err_msg=key)


@pytest.mark.slow
def test_accumulation_with_batchnorm_averages_the_micro_batch_steps():
    """With BatchNorm each micro-batch is normalised by its own statistics: the step equals the
    mean of the plain steps on each micro-batch alone, parameters (SGD is linear in the
    gradient) and running statistics alike; the variances differ from the global batch's."""
    mesh = parallel.make_mesh()
    x, y, _ = _batch(mesh)
    micro_rows = _micro_rows(len(x), mesh.size, 2)
    x[micro_rows[0]] *= 0.5  # micro-batches of different brightness: different statistics
    batch = parallel.host_to_global({"image": x, "label": y}, mesh)
    model = models.get_model("cnn-small", num_classes=10, **SMALL_CNN)
    tx = optax.sgd(0.1)
    _, accumulated, _ = _step(mesh, model, tx, batch, accumulate_steps=2)
    singles = []
    for rows in micro_rows:
        part = parallel.host_to_global({"image": x[rows], "label": y[rows]}, mesh)
        singles.append(_step(mesh, model, tx, part)[1])
    mean = jax.tree.map(
        lambda *v: np.mean(v, axis=0), *[(s.params, s.batch_stats) for s in singles]
    )
    assert _max_rel(mean, (accumulated.params, accumulated.batch_stats)) < 1e-6
    _, whole, _ = _step(mesh, model, tx, batch)
    np.testing.assert_allclose(  # the mean of the micro-batch means is the batch's mean
        whole.batch_stats["BatchNorm_0"]["mean"],
        accumulated.batch_stats["BatchNorm_0"]["mean"],
        rtol=1e-5,
        atol=1e-7,
    )
    assert (
        _max_rel(
            whole.batch_stats["BatchNorm_0"]["var"], accumulated.batch_stats["BatchNorm_0"]["var"]
        )
        > 1e-3
    )


def test_split_batch_moves_no_data_between_devices():
    """Each micro-batch takes the same share of every device's rows, so splitting is local;
    the naive reshape(k, B / k) would gather rows from other devices."""
    mesh = parallel.make_mesh()
    x, _, batch = _batch(mesh)
    split = jax.jit(lambda b: training.split_batch(b, 2, mesh))
    parts = split(batch)
    np.testing.assert_array_equal(parts["image"], x[_micro_rows(len(x), mesh.size, 2)])
    np.testing.assert_array_equal(
        jax.jit(training.merge_batch, static_argnums=1)(parts, mesh)["image"], x
    )
    naive = jax.jit(
        lambda b: jax.lax.with_sharding_constraint(
            jax.tree.map(lambda v: v.reshape(2, -1, *v.shape[1:]), b),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")),
        )
    )
    moves = re.compile(r"all-gather|all-to-all|collective-permute|all-reduce")
    assert not moves.search(split.lower(batch).compile().as_text())
    assert moves.search(naive.lower(batch).compile().as_text())


# ------------------------------------------------------------------------------------------
# The attack in chunks, and E-AT with both switches


@pytest.mark.slow
def test_attack_in_chunks_is_exactly_the_attack_in_one_piece():
    """APGD-CE and every threat model of E-AT: x_adv within float32 rounding and E-AT's counts
    exactly. Each chunk keeps 2 rows a device: with one, XLA:CPU may compile a row's L2 norm
    differently (seen: x_adv off by 1.8e-7 under L2). On an AMD EPYC without AVX-512 even 2
    rows a device differ in the last bit (6e-8 on 8% of the pixels, Linf), so the comparison
    allows 1e-6, far below any attack step."""
    mesh = parallel.make_mesh()
    x, _, batch = _batch(mesh)
    model = models.get_model("cnn-small", num_classes=10, **SMALL_CNN)
    variables = _init(model, x)
    logits_fn = lambda z: model.apply(variables, z, train=False)  # noqa: E731
    multi = _attack("linf:0.1,l2:0.8,l1:10", steps=1)
    for attack in (_attack(LINF, steps=1), multi):

        @functools.partial(jax.jit, static_argnums=2)
        def run(batch, plan, chunks, attack=attack):
            x, y = batch["image"], batch["label"]
            key = jax.random.key(0)
            return training.perturb_batch(
                attack, logits_fn, x, y, key, plan, chunks=chunks, mesh=mesh
            )

        plans = [jnp.int32(i) for i in range(3)] if attack is multi else [None]
        for plan in plans:
            x_adv, increment = run(batch, plan, 1)
            chunked, chunked_increment = run(batch, plan, 2)
            assert np.any(np.asarray(x_adv) != x)
            np.testing.assert_allclose(chunked, x_adv, rtol=0, atol=1e-6)
            if attack is multi:
                assert float(increment[int(plan), 1]) == len(x)
                np.testing.assert_array_equal(chunked_increment, increment)


@pytest.mark.slow
def test_multi_norm_attack_with_micro_batches_and_chunks():
    """E-AT draws one threat model per step and counts every example once: the counts after
    three steps equal the plain step's exactly, the parameters to float reassociation."""
    mesh = parallel.make_mesh()
    _, _, batch = _batch(mesh)
    model = models.get_model("cnn-small", num_classes=10, norm="none", **SMALL_CNN)
    attack = _attack("linf:0.1,l2:0.8", steps=1)
    results = []
    tx = optax.sgd(0.1)
    for switches in ({}, dict(accumulate_steps=2, attack_chunks=2)):
        state = _init_state(mesh, model, tx, (16, 16, 1), attack)
        step = training.make_train_step(mesh, model=model, attack=attack, **switches)
        for i in range(3):
            state, _ = step(state, batch, jax.random.key(i))
        results.append(jax.device_get((state.params, state.attack_stats)))
    (params, counts), (params_k, counts_k) = results
    assert counts[:, 1].sum() == 3 * 32
    np.testing.assert_array_equal(counts_k, counts)
    assert _max_rel(params, params_k) < 1e-6


# ------------------------------------------------------------------------------------------
# Config and driver checks


def test_batch_split_errors_name_the_values(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"batch_size=48 is not divisible by accumulate_steps=4 "
        r"times the 8 devices \(= 32\)",
    ):
        training.check_batch_split(48, 8, accumulate_steps=4)
    with pytest.raises(ValueError, match=r"attack.chunks=3 does not divide the 4 rows"):
        training.check_batch_split(64, 8, accumulate_steps=2, attack_chunks=3)
    training.check_batch_split(64, 8, accumulate_steps=2, attack_chunks=4)
    for key, value, message in (
        ("accumulate_steps", 0, "accumulate_steps=0: expected an integer >= 1"),
        ("accumulate_steps", 3, "batch_size=128 is not divisible by accumulate_steps=3"),
        ("attack.chunks", 0, "attack.chunks=0: expected an integer >= 1"),
    ):
        config = train_config.base_train_config()
        config_lib.apply_override(config, f"{key}={value}")
        with pytest.raises(ValueError, match=re.escape(message)):
            train_config.validate_train_config(config)
    # The driver checks the devices before it writes anything.
    config = train_config.base_train_config()
    config.update(batch_size=40, accumulate_steps=4, max_steps=1)
    config.dataset.update(name="synthetic", num_train_examples=64)
    with pytest.raises(ValueError, match="accumulate_steps=4 times the 4 devices"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


class _Stop(Exception):
    pass


def test_configs_pass_the_switches_to_the_step(monkeypatch, tmp_path):
    seen = {}

    def spy(mesh, **statics):
        seen.update(statics)
        raise _Stop  # before anything runs

    monkeypatch.setattr(training, "make_train_step", spy)
    config = config_lib.load_config(
        f"{ROOT}/configs/vitb_linf.py:runlocal", ["accumulate_steps=2", "attack.chunks=2"]
    )
    assert config.model.remat is True
    with pytest.raises(_Stop):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert seen["accumulate_steps"] == 2 and seen["attack_chunks"] == 2
