"""FLOPs of a model's passes, counted the same way whatever backend will run them.

XLA's cost analysis of a *compiled* program depends on the backend: XLA:GPU leaves out the
convolutions and matmuls it hands to cuDNN and cuBLAS as custom calls (it reported 0.078 GFLOP
for a WRN-28-10 training image of ~31), and on GPUs JAX's `Lowered.cost_analysis` is not
implemented (the PJRT plugin). So the passes are lowered here for a CPU device, whatever the
default backend, and counted by XLA's cost analysis of that lowering: the model's arithmetic
before any backend's rewrites, the same figure on a CPU, a GPU or a TPU host.

XLA counts the body of a while loop once, whatever its trip count, so a program with a loop
(an attack) is counted from its passes (`benchmarks/scale.py` multiplies them out); the passes
themselves hold no loop.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from seasoning import training


def cost_flops(program: Any) -> float:
    """The FLOPs XLA's cost analysis reports for a lowered or compiled program (0 when it
    reports none)."""
    cost = program.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost.get("flops", 0.0)) if cost else 0.0


def on_cpu(tree: Any) -> Any:
    """`tree`'s arrays as abstract values placed on the first CPU device: what a jitted
    function lowered on them is lowered for."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def pass_flops(model: Any, image_shape: tuple[int, ...], batch: int) -> dict[str, float]:
    """FLOPs per image of a forward pass, an input gradient and a clean training step.

    Lowered for the CPU on abstract values (nothing is allocated or run), no loops.

    Args:
      model: the Flax module (`models.get_model`).
      image_shape: one image's shape (H, W, C).
      batch: the batch the passes are lowered for (the count is divided by it).

    Returns:
      {"forward", "input_grad", "train"}: FLOPs per image.
    """
    images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = jax.eval_shape(
        lambda key: training.create_train_state(model, optax.sgd(0.01, 0.9), key, image_shape),
        key,
    )
    state, images, labels, key = on_cpu((state, images, labels, key))
    variables = state.variables()

    def forward(variables, x):
        return model.apply(variables, x, train=False)

    def input_grad(variables, x, y):
        def loss(x):
            return training.cross_entropy(model.apply(variables, x, train=False), y).sum()

        return jax.grad(loss)(x)

    step = functools.partial(training.train_step, model=model)
    lowered = {
        "forward": jax.jit(forward).lower(variables, images),
        "input_grad": jax.jit(input_grad).lower(variables, images, labels),
        "train": jax.jit(step).lower(state, {"image": images, "label": labels}, key),
    }
    return {name: cost_flops(program) / batch for name, program in lowered.items()}
