"""FLOP counts of a model's passes (seasoning/flops.py), what `benchmarks/scale.py` turns into
MFU: exact on a model whose arithmetic is known, lowered for the CPU whatever the default
device, and equal to XLA:CPU's count of the compiled, loop-free step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seasoning import flops, models, training

IN, HIDDEN, OUT = 28 * 28, 32, 10


class _TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Dense(HIDDEN)(x.reshape((x.shape[0], -1))))
        return nn.Dense(OUT)(x)


def test_a_forward_pass_counts_its_matmuls_exactly():
    """2 * in * out per dense layer and image; biases and the ReLU add one FLOP an element."""
    per_image = flops.pass_flops(_TwoLayers(), (28, 28, 1), batch=8)
    matmuls = 2 * IN * HIDDEN + 2 * HIDDEN * OUT
    assert per_image["forward"] == matmuls + 2 * HIDDEN + OUT
    # The input gradient adds both layers' transposed matmuls; a training step adds the
    # weights' gradients and the hidden layer's (not the input's) and the optimiser's update.
    assert 2 * matmuls <= per_image["input_grad"] < 2.1 * matmuls
    assert 2 * matmuls + 2 * HIDDEN * OUT <= per_image["train"] < 3 * matmuls


def test_the_passes_are_lowered_for_the_cpu_whatever_the_default_device():
    placed = flops.on_cpu({"x": jax.ShapeDtypeStruct((2, 3), jnp.float32)})["x"]
    assert {d.platform for d in placed.sharding.device_set} == {"cpu"}
    with jax.default_device(jax.devices()[-1]):
        again = flops.pass_flops(_TwoLayers(), (28, 28, 1), batch=8)
    assert again == flops.pass_flops(_TwoLayers(), (28, 28, 1), batch=8)


@pytest.mark.slow
def test_a_training_step_counts_as_xla_cpu_counts_the_compiled_step():
    """The loop-free cnn-small step compiled on XLA:CPU, where its cost analysis is exact: the
    count from the lowering agrees within 5% (XLA's fusions drop a few element-wise ops)."""
    model = models.get_model("cnn-small", num_classes=10)
    per_image = flops.pass_flops(model, (28, 28, 1), batch=8)
    state = training.create_train_state(model, optax.sgd(0.01, 0.9), jax.random.key(0), (28, 28, 1))
    batch = {"image": np.zeros((8, 28, 28, 1), np.float32), "label": np.zeros(8, np.int32)}
    step = jax.jit(functools.partial(training.train_step, model=model))
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    assert flops.cost_flops(compiled) / 8 == pytest.approx(per_image["train"], rel=0.05)


def test_program_ops_counts_loops_and_host_round_trips():
    def with_host(x):
        jax.debug.print("sum {}", x.sum())
        y = jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return jax.lax.fori_loop(0, x.shape[0] + 3, lambda i, v: v * 1.5 + 1.0, y)

    def on_device(x):
        return jax.lax.fori_loop(0, x.shape[0] + 3, lambda i, v: v * 1.5 + 1.0, jnp.sin(x))

    x = jnp.ones(3)
    host = flops.program_ops(jax.jit(with_host).lower(x).compile())
    assert host["host_round_trips"] == 2 and host["while_loops"] == 1
    assert host["custom_calls"] >= 2  # the callbacks are custom calls too
    device = flops.program_ops(jax.jit(on_device).lower(x).compile())
    assert device["host_round_trips"] == 0 and device["while_loops"] == 1


def test_a_rematerialised_model_counts_its_model_flops_not_the_recomputation():
    """MFU counts the model's arithmetic: remat's recomputed forward passes, which the
    lowered gradient of a remat model holds, are left out, so remat on and off compare."""
    kw = dict(num_classes=10, image_size=32, patch_size=8, depth=2)
    plain, remat = (models.get_model("vit-ti16", remat=r, **kw) for r in (False, True))
    x = jnp.zeros((4, 32, 32, 3))
    variables = plain.init(jax.random.key(0), x)

    def gradient_flops(model):
        loss = lambda x: model.apply(variables, x).sum()  # noqa: E731
        return flops.cost_flops(jax.jit(jax.grad(loss)).lower(x))

    assert gradient_flops(remat) > 1.1 * gradient_flops(plain)  # what the lowering holds
    assert flops.pass_flops(remat, (32, 32, 3), batch=4) == flops.pass_flops(
        plain, (32, 32, 3), batch=4
    )
    assert remat.remat  # the caller's model is left as it was
