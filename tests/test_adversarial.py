"""Adversarial training: the attack built from a config, and the train step that uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seasoning import adversarial, flops, models, parallel, threat, train_config, training


def _sections(norm="linf", eps=0.1, **attack):
    base = train_config.base_train_config()
    base.threat.update(norm=norm, eps=eps)
    base.attack.update(**{"name": "apgd", **attack})
    return base.threat, base.attack


def _model_and_batch(n=16):
    model = models.get_model("cnn-small", num_classes=10, features=(8, 16, 16), hidden=32)
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    variables = model.init(jax.random.key(0), x[:1], train=False)
    return model, variables, x, y


def test_nominal_config_has_no_attack():
    threat_cfg, attack_cfg = _sections(norm="none", eps=0.0, name="none")
    assert adversarial.make_training_attack(threat_cfg, attack_cfg) is None
    assert "nominal" in adversarial.describe(threat_cfg, attack_cfg)


@pytest.mark.parametrize(
    "sections, message",
    [
        (dict(norm="linf", eps=0.1, name="none"), "needs an attack"),
        (dict(norm="none", eps=0.0, name="apgd"), "threat.norm='none'"),
        (dict(norm="linf", eps=0.1, step_size=0.01), "APGD adapts its own step size"),
        (dict(norm="l2", eps=0.5, steps=0), "attack.steps=0"),
        (dict(norm="l2", eps=0.5, loss="hinge"), "attack.loss='hinge'"),
        (dict(norm="l3", eps=0.5), "unknown threat norm 'l3'"),
        (dict(norm="linf", eps=-0.1), "eps must be a finite number >= 0"),
    ],
)
def test_unusable_settings_are_errors_never_clean_training(sections, message):
    with pytest.raises(ValueError, match=message):
        adversarial.make_training_attack(*_sections(**sections))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["apgd", "pgd"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0), ("l1", 8.0)])
def test_training_attack_stays_in_the_threat_model_and_raises_the_loss(name, norm, eps):
    model, variables, x, y = _model_and_batch()
    attack = adversarial.make_training_attack(*_sections(norm, eps, name=name, steps=5))

    def logits_fn(z):
        return model.apply(variables, z, train=False)

    x_adv = jax.jit(lambda a, b: attack(logits_fn, a, b, jax.random.key(1)))(x, y)
    tm = threat.ThreatModel(norm, eps)
    assert bool(tm.contains(x_adv, x).all())
    clean_loss = training.cross_entropy(logits_fn(x), y).mean()
    adv_loss = training.cross_entropy(logits_fn(x_adv), y).mean()
    assert adv_loss > clean_loss + 0.01, (adv_loss, clean_loss)


@pytest.mark.parametrize("name", ["apgd", "pgd"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 0.5), ("l1", 4.0)])
def test_training_attack_perturbs_every_example_misclassified_ones_too(name, norm, eps):
    """Madry et al. train on the highest-loss point of every example: the training attack must
    not return the clean image of an example the model already gets wrong."""
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(64, 10)), jnp.float32)
    x = rng.uniform(0.2, 0.8, size=(64, 8, 8, 1)).astype(np.float32)
    f = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    y = np.asarray(jnp.argmax(f(x), -1)).astype(np.int32)
    y[::2] = (y[::2] + 1) % 10  # half of the examples start misclassified
    attack = adversarial.make_training_attack(*_sections(norm, eps, name=name, steps=5))
    x_adv = jax.jit(lambda a, b: attack(f, a, b, jax.random.key(1)))(x, y)
    assert bool(threat.ThreatModel(norm, eps).contains(x_adv, x).all())
    moved = np.abs(np.asarray(x_adv) - x).reshape(len(x), -1).max(1) > 0
    gain = np.asarray(training.cross_entropy(f(x_adv), y) - training.cross_entropy(f(x), y))
    assert moved.all(), np.flatnonzero(~moved)
    assert (gain > 0).all(), np.flatnonzero(gain <= 0)


@pytest.mark.slow
@pytest.mark.parametrize("attack_steps", [3, 20])  # the attack unrolled, and as a loop
def test_adversarial_train_step_trains_on_attacked_images(attack_steps):
    """Same state and batch: the adversarial step sees a higher loss than the clean step, and
    it is one compiled program, attack included, with no host round trip inside."""
    model, _, x, y = _model_and_batch(n=32)
    mesh = parallel.make_mesh()
    batch = parallel.host_to_global({"image": x, "label": y}, mesh)
    attack = adversarial.make_training_attack(*_sections("linf", 0.1, steps=attack_steps))
    results = {}
    for label, att in (("clean", None), ("adversarial", attack)):
        state = training.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
        step = training.make_train_step(mesh, model=model, attack=att)
        compiled = step.lower(state, batch, jax.random.key(2)).compile()
        results[label] = compiled(state, batch, jax.random.key(2))
    ops = flops.program_ops(compiled)
    assert ops["host_round_trips"] == 0, ops
    (clean_state, clean_metrics), (adv_state, adv_metrics) = results.values()
    assert float(adv_metrics["loss"]) > float(clean_metrics["loss"]) + 0.01
    assert int(adv_state.step) == int(clean_state.step) == 1
    # Different inputs, different updates (the attacked images reached the loss).
    differs = jax.tree.map(lambda a, b: bool(np.any(a != b)), clean_state.params, adv_state.params)
    assert all(jax.tree.leaves(differs))


def test_describe_names_the_attack():
    text = adversarial.describe(*_sections("l1", 12.0, steps=10))
    assert text == "adversarial training: l1 eps=12, apgd-ce 10 steps"


def _multi_sections(multi=("linf:0.1", "l2:0.8", "l1:10"), **attack):
    threat_cfg, attack_cfg = _sections("linf", 0.0, **attack)
    threat_cfg.update(norm="multi", multi=multi)
    return threat_cfg, attack_cfg


def _which_threat(x_adv, x, balls):
    """Which balls hold the batch: a Linf attack's dense perturbation lies outside the L2 and
    L1 balls, the L2 and L1 attacks' outside the Linf ball, and so on."""
    return tuple(bool(tm.contains(x_adv, x).all()) for tm in balls)


@pytest.mark.slow
def test_multi_norm_training_attack_draws_each_threat_model_per_batch():
    """E-AT: each call attacks the whole batch under one threat model, drawn from the key; a
    fresh run (no statistics yet) draws uniformly, and the counts of the drawn one grow."""
    model, variables, x, y = _model_and_batch(n=8)
    threat_cfg, attack_cfg = _multi_sections(steps=3)
    attack = adversarial.make_training_attack(threat_cfg, attack_cfg)
    assert isinstance(attack, training.AttackWithStats)
    balls = [threat.parse(s) for s in threat_cfg.multi]

    def logits_fn(z):
        return model.apply(variables, z, train=False)

    run = jax.jit(lambda key, counts: attack.run(logits_fn, x, y, key, counts))
    fresh = jnp.asarray(attack.initial_stats)
    assert fresh.shape == (3, 2) and not fresh.any()
    signatures = set()
    for i in range(16):
        x_adv, counts = run(jax.random.key(i), fresh)
        inside = _which_threat(x_adv, x, balls)
        assert sum(inside) == 1, f"key {i}: the batch lies in {inside} of {threat_cfg.multi}"
        assert bool(np.any(np.asarray(x_adv) != x)), f"key {i}: nothing was attacked"
        drawn = inside.index(True)
        assert float(counts[drawn, 1]) == len(x) and float(counts.sum(0)[1]) == len(x)
        assert 0 <= float(counts[drawn, 0]) <= len(x)
        signatures.add(inside)
    assert len(signatures) == 3, signatures  # all three threat models were drawn
    text = adversarial.describe(threat_cfg, attack_cfg)
    assert text == (
        "adversarial training: E-AT, one of linf:0.1 / l2:0.8 / l1:10 per batch, drawn by "
        "1 - running robust accuracy, apgd-ce 3 steps"
    )


@pytest.mark.slow
def test_multi_norm_draws_by_one_minus_running_robust_accuracy():
    """The reference's rule: probability proportional to 1 - the running robust accuracy of
    each threat model's training batches (uniform until each was drawn); `uniform` ignores it."""
    counts = np.array([[90.0, 100.0], [50.0, 100.0], [0.0, 100.0]], np.float32)
    np.testing.assert_allclose(adversarial.draw_weights(counts), [0.1, 0.5, 1.0], rtol=1e-6)
    unseen = counts.copy()
    unseen[1] = 0.0
    np.testing.assert_allclose(adversarial.draw_weights(unseen), [1.0, 1.0, 1.0])
    all_robust = np.array([[100.0, 100.0], [40.0, 40.0]], np.float32)
    np.testing.assert_allclose(adversarial.draw_weights(all_robust), [1.0, 1.0])
    np.testing.assert_allclose(adversarial.draw_weights(counts, adaptive=False), [1.0, 1.0, 1.0])

    # Robust under Linf and L2 so far: every batch goes to L1.
    model, variables, x, y = _model_and_batch(n=8)
    threat_cfg, attack_cfg = _multi_sections(steps=2)
    attack = adversarial.make_training_attack(threat_cfg, attack_cfg)
    balls = [threat.parse(s) for s in threat_cfg.multi]
    solved = jnp.asarray([[50.0, 50.0], [30.0, 30.0], [0.0, 10.0]])

    def logits_fn(z):
        return model.apply(variables, z, train=False)

    run = jax.jit(lambda key: attack.run(logits_fn, x, y, key, solved))
    for i in range(8):
        x_adv, counts = run(jax.random.key(i))
        assert _which_threat(x_adv, x, balls) == (False, False, True), i
        np.testing.assert_array_equal(counts[:2], solved[:2])
    threat_cfg.sampling = "uniform"
    uniform = adversarial.make_training_attack(threat_cfg, attack_cfg)
    run_uniform = jax.jit(lambda key: uniform.run(logits_fn, x, y, key, solved)[0])
    drawn = {_which_threat(run_uniform(jax.random.key(i)), x, balls) for i in range(12)}
    assert len(drawn) == 3, drawn


@pytest.mark.slow
def test_multi_norm_statistics_live_in_the_train_state():
    """The E-AT counts are part of the TrainState: updated by every step and checkpointed."""
    model, _, x, y = _model_and_batch(n=16)
    threat_cfg, attack_cfg = _multi_sections(steps=2)
    attack = adversarial.make_training_attack(threat_cfg, attack_cfg)
    state = training.create_train_state(
        model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1), attack=attack
    )
    assert "attack_stats" in state.checkpoint_items()
    mesh = parallel.make_mesh()
    step = training.make_train_step(mesh, model=model, attack=attack)
    batch = parallel.host_to_global({"image": x, "label": y}, mesh)
    for i in range(3):
        state, _ = step(state, batch, jax.random.key(i))
    counts = np.asarray(state.attack_stats)
    assert counts[:, 1].sum() == 3 * len(x) and np.all(counts[:, 0] <= counts[:, 1])
    plain = training.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
    assert "attack_stats" not in plain.checkpoint_items()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.update(multi=("linf:0.1",)), "two or more"),
        (lambda t: t.update(eps=0.1), "threat.eps=0"),
        (lambda t: t.update(multi=("linf:0.1", "l5:2")), "unknown threat norm 'l5'"),
        (lambda t: t.update(multi=("linf:0.1", "none:0")), "'none:0' is not an adversarial"),
        (lambda t: t.update(norm="linf", eps=0.1), "used only with threat.norm='multi'"),
        (lambda t: t.update(sampling="greedy"), "threat.sampling 'greedy'"),
    ],
)
def test_multi_norm_config_errors(mutate, message):
    config = train_config.base_train_config()
    config.attack.update(name="apgd")
    config.threat.update(norm="multi", multi=("linf:0.1", "l2:0.8"))
    train_config.validate_train_config(config)  # the valid starting point
    mutate(config.threat)
    with pytest.raises(ValueError, match=message):
        train_config.validate_train_config(config)
