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

`program_ops` says what a compiled program is made of: XLA's fusions, the library calls a
backend hands work to (cuDNN, cuBLAS), while loops, and host round trips, which an accelerator
step must not have (each one stops the device until the host answers).
"""

from __future__ import annotations

import functools
import re
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


# HLO instructions that move data between the device and the host while a program runs, and
# the custom-call targets of JAX's host callbacks (`jax.pure_callback`, `jax.debug.print`, ...).
_HOST_OPS = ("infeed", "outfeed", "send", "recv", "send-done", "recv-done")
_HOST_CALLBACK = re.compile(r'custom_call_target="[^"]*callback[^"]*"')


def program_ops(compiled: Any) -> dict[str, int]:
    """What a compiled program is made of, counted in its HLO text.

    Args:
      compiled: a `jax.stages.Compiled` (`jax.jit(f).lower(...).compile()`).

    Returns:
      {"fusions": XLA fusions, "custom_calls": library calls (on GPUs the cuDNN/cuBLAS
      convolutions, matmuls and fused attention; host callbacks too), "while_loops",
      "host_round_trips": host callbacks, infeeds, outfeeds, sends and receives}.
    """
    hlo = compiled.as_text()
    host_ops = sum(len(re.findall(rf" {op}\(", hlo)) for op in _HOST_OPS)
    return {
        "fusions": hlo.count(" fusion("),
        "custom_calls": hlo.count(" custom-call("),
        "while_loops": hlo.count(" while("),
        "host_round_trips": host_ops + len(_HOST_CALLBACK.findall(hlo)),
    }


def on_cpu(tree: Any) -> Any:
    """`tree`'s arrays as abstract values placed on the first CPU device: what a jitted
    function lowered on them is lowered for."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def pass_flops(model: Any, image_shape: tuple[int, ...], batch: int) -> dict[str, float]:
    """FLOPs per image of a forward pass, an input gradient and a clean training step.

    Lowered for the CPU on abstract values (nothing is allocated or run), no loops. Model
    FLOPs: a rematerialised model (`remat=True`) is counted without rematerialisation, since
    the forward passes its backward passes recompute are work the hardware does but not
    arithmetic of the model (MFU, not hardware FLOPs utilisation: with remat on, ViT-B/16's
    lowered input gradient counts a third more).

    Args:
      model: the Flax module (`models.get_model`).
      image_shape: one image's shape (H, W, C).
      batch: the batch the passes are lowered for (the count is divided by it).

    Returns:
      {"forward", "input_grad", "train"}: FLOPs per image.
    """
    if getattr(model, "remat", False):
        model = model.clone(remat=False)  # the same parameters and arithmetic
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
