"""The pure training core: sharded steps, optimisers, schedules."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from seasoning import data, evaluation, models, optim, parallel, train_config, training
from seasoning.data import fashion_mnist


def _state(model, tx, image_shape=(28, 28, 1), seed=0):
    return training.create_train_state(model, tx, jax.random.key(seed), image_shape)


def _as_float(batch):
    return {"image": data.to_float(batch["image"]), "label": batch["label"]}


def _batches(n, batch_size=32, seed=0):
    source = data.synthetic.load("train", num_examples=256, image_shape=(28, 28, 1), seed=seed)
    it = data.train_batches(source, batch_size, seed=seed)
    return [_as_float(next(it)) for _ in range(n)]


@pytest.mark.slow
def test_sharded_step_matches_single_device():
    """4 devices, batch split 4 ways, give the single-device step's numbers (to float32 rounding:
    the cross-device reduction sums in a different order)."""
    assert jax.device_count() == 4
    model = models.get_model("cnn-small", num_classes=10)
    tx = optax.sgd(0.05, momentum=0.9)
    results = []
    for mesh in (parallel.make_mesh(jax.devices()[:1]), parallel.make_mesh()):
        step = training.make_train_step(mesh, model=model)
        state = jax.device_put(_state(model, tx), parallel.replicated(mesh))
        losses = []
        for i, batch in enumerate(_batches(3)):
            state, metrics = step(state, parallel.host_to_global(batch, mesh), jax.random.key(i))
            losses.append(float(metrics["loss"]))
        assert state.params["Dense_0"]["kernel"].sharding.is_fully_replicated
        results.append((losses, jax.device_get(state.params), jax.device_get(state.batch_stats)))
    (loss_1, params_1, stats_1), (loss_8, params_8, stats_8) = results
    np.testing.assert_allclose(loss_1, loss_8, rtol=1e-5)
    chex_close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
    jax.tree.map(chex_close, params_1, params_8)
    jax.tree.map(chex_close, stats_1, stats_8)


@pytest.mark.slow
def test_real_fashion_mnist_steps_lower_the_loss():
    model = models.get_model("cnn-small", num_classes=10, mean=(0.286,), std=(0.353,))
    mesh = parallel.make_mesh()
    tx = optax.sgd(0.05, momentum=0.9, nesterov=True)
    state = jax.device_put(_state(model, tx), parallel.replicated(mesh))
    step = training.make_train_step(mesh, model=model)
    evaluator = evaluation.Evaluator(
        functools.partial(model.apply, train=False), evaluation.AttackSettings(), mesh=mesh
    )
    test_source = fashion_mnist.load("test")

    def evaluate(variables):
        return evaluator.run(variables, test_source, np.arange(512), key=jax.random.key(0))

    before = evaluate(state.variables())
    it = data.train_batches(fashion_mnist.load("train"), 64, seed=0)
    for i in range(40):
        state, _ = step(
            state, parallel.host_to_global(_as_float(next(it)), mesh), jax.random.key(i)
        )
    after = evaluate(state.variables())
    assert after.mean_loss() < 0.7 * before.mean_loss()
    assert after.accuracies()["clean"] > 0.6


def test_label_smoothing_and_cross_entropy():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    labels = jnp.array([0])
    plain = training.cross_entropy(logits, labels)
    expected = -jax.nn.log_softmax(logits)[0, 0]
    np.testing.assert_allclose(plain, [expected], rtol=1e-6)
    smooth = training.cross_entropy(logits, labels, label_smoothing=0.3)
    assert smooth[0] > plain[0]


@pytest.mark.slow
def test_bfloat16_compute_trains():
    model = models.get_model("cnn-small", num_classes=10, dtype=jnp.bfloat16)
    mesh = parallel.make_mesh()
    state = jax.device_put(_state(model, optax.sgd(0.1)), parallel.replicated(mesh))
    step = training.make_train_step(mesh, model=model)
    state, metrics = step(state, parallel.host_to_global(_batches(1)[0], mesh), jax.random.key(0))
    assert state.params["Dense_0"]["kernel"].dtype == jnp.float32
    assert np.isfinite(float(metrics["loss"]))


def _schedule_config(**kw):
    c = train_config.base_train_config().schedule
    c.update(kw)
    return c


def test_piecewise_schedule_thirds():
    schedule = optim.make_schedule(
        _schedule_config(name="piecewise", boundaries=(1 / 3, 2 / 3)), 0.01, 300
    )
    np.testing.assert_allclose(
        [schedule(0), schedule(99), schedule(100), schedule(199), schedule(200), schedule(299)],
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001],
        rtol=1e-5,
    )


def test_warmup_then_cosine_and_piecewise():
    cosine = optim.make_schedule(_schedule_config(name="cosine", warmup_steps=10), 1.0, 110)
    assert float(cosine(0)) == 0.0 and float(cosine(5)) == pytest.approx(0.5)
    assert float(cosine(10)) == pytest.approx(1.0) and float(cosine(110)) == pytest.approx(0.0)
    piecewise = optim.make_schedule(
        _schedule_config(name="piecewise", boundaries=(0.5,), warmup_steps=10), 1.0, 100
    )
    assert float(piecewise(5)) == pytest.approx(0.5)
    assert float(piecewise(20)) == pytest.approx(1.0) and float(piecewise(60)) == pytest.approx(0.1)


def test_weight_decay_skips_bn_and_bias_by_default():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    for decay_all, expect_bias in ((False, 1.0), (True, 1.0 - 0.1 * 0.5)):
        cfg = ml_collections.ConfigDict(train_config.base_train_config().optimizer)
        cfg.update(lr=0.1, momentum=0.0, weight_decay=0.5, decay_bn_and_bias=decay_all)
        tx = optim.make_optimizer(cfg, optax.constant_schedule(0.1))
        updates, _ = tx.update(grads, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        np.testing.assert_allclose(new["kernel"], 1.0 - 0.1 * 0.5)
        np.testing.assert_allclose(new["bias"], expect_bias)
        np.testing.assert_allclose(new["scale"], expect_bias)


def test_batch_size_must_divide_devices():
    with pytest.raises(ValueError, match="batch_size=10 is not divisible by the 4 devices"):
        parallel.check_batch_size(10, parallel.make_mesh())
