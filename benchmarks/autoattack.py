"""The whole AutoAttack, ours beside fra31's (pyautoattack 0.2.0), on the same model and points.

  .venv/bin/python benchmarks/autoattack.py [--models=mlp,cnn-small] [--norms=linf,l2,l1]
      [--n_points=500] [--version=standard] [--train_steps=300] [--threads=0]
      [--search_dtypes=float32,bfloat16] [--noreference]
  python benchmarks/autoattack.py --models=wrn-28-10,preact-resnet-18 --n_points=500  # a GPU

For the Fashion-MNIST models (mlp, cnn-small): a short nominal training (SGD, `train_steps`
batches of 128). For the CIFAR-shaped ones (wrn-28-10, preact-resnet-18, what users evaluate):
random weights, random 32x32x3 images, and as labels the model's own predictions, so that every
point starts correctly classified and the first attack runs on all of them (speed only: such a
model is broken almost at once, so later attacks run on few points; each row says how many
points each attack ran on). Then per norm, back to back in this one process: ours
(`evaluation.Evaluator`, still_robust: what `seasoning.evaluate` runs: each restart and
target class only on the points still robust, the CPU split into JAX devices as the drivers
split it) and the reference's `AutoAttack(version=...).run_standard_evaluation` on the PyTorch
twin with the same weights (on the GPU when there is one, `--torch_device`). Both start cold:
our time includes tracing and compiling every attack (no persistent cache), the reference's
its first call. Prints one JSON line per model and norm: robust accuracy of each, seconds of
each, and their ratio. The Fashion-MNIST radii leave a mid-range robust accuracy on these
briefly trained models (those of tests/test_reference.py). Run by hand; results go into
docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

EPS = {"linf": 0.03, "l2": 0.5, "l1": 4.0}
CIFAR_EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}  # the usual CIFAR-10 radii
CIFAR_MODELS = ("wrn-28-10", "preact-resnet-18")
MODELS = ("mlp", "cnn-small", *CIFAR_MODELS)
# cnn-small at a quarter of its default widths, as tests/test_reference.py uses it.
CNN = dict(features=(16, 32, 32), hidden=64)
MLP_WIDTHS = (256, 256)

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models, from {list(MODELS)}.")
_NORMS = flags.DEFINE_list("norms", list(EPS), "Threat norms (radii: EPS).")
_N_POINTS = flags.DEFINE_integer("n_points", 500, "First N Fashion-MNIST test points.")
_VERSION = flags.DEFINE_enum("version", "standard", ["standard", "fast"], "AutoAttack version.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 300, "Nominal SGD steps before attacking.")
_THREADS = flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: os.cpu_count()).")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Our points per compiled call.")
_SEARCH_DTYPES = flags.DEFINE_list(
    "search_dtypes",
    ["float32"],
    "Our attacks' search dtypes, one row each (the float32 model judges every point; a "
    "bfloat16 row also counts the points only one of the two searches broke).",
)
_REFERENCE = flags.DEFINE_bool("reference", True, "Also run the reference (pyautoattack).")
_TORCH_DEVICE = flags.DEFINE_enum(
    "torch_device", "auto", ["auto", "cpu", "cuda"], "The reference's device (auto: cuda if any)."
)


def _mlp_twin(params):
    """The PyTorch module computing `_mlp_apply` with the same weights (NCHW input)."""
    import torch

    layers = []
    for i, layer in enumerate(params):
        linear = torch.nn.Linear(*layer["w"].shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(layer["w"].T.copy()))
            linear.bias.copy_(torch.from_numpy(layer["b"].copy()))
        layers += [linear] + ([torch.nn.ReLU()] if i < len(params) - 1 else [])

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(*layers)

        def forward(self, x):  # NCHW -> NHWC order before flattening, as the JAX side
            return self.net(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))

    return Twin().eval()


def _mlp_apply(params, x, dtype="float32"):
    import jax

    h = x.reshape(x.shape[0], -1).astype(dtype)
    for i, layer in enumerate(params):
        h = h @ layer["w"].astype(dtype) + layer["b"].astype(dtype)
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return h.astype("float32")


def _in_dtype(name: str, dtype: str):
    """The apply function of model `name` (same variables) computing in `dtype`."""
    import functools

    import jax.numpy as jnp

    from seasoning import models, runs

    if name == "mlp":
        return functools.partial(_mlp_apply, dtype=dtype)
    widths = CNN if name == "cnn-small" else {}
    model = models.get_model(name, num_classes=10, dtype=jnp.dtype(dtype), **widths)
    return runs.eval_apply_fn(model)


def _train(name: str, steps: int):
    """(apply_fn(variables, x), variables, PyTorch twin) after `steps` nominal SGD steps."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from seasoning import models, runs, training
    from seasoning.data import fashion_mnist
    from seasoning.testing import torch_twins

    train = fashion_mnist.load("train")
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, len(train.labels), 128) for _ in range(steps)]
    if name == "cnn-small":
        model = models.get_model("cnn-small", num_classes=10, **CNN)
        state = training.create_train_state(
            model, optax.sgd(0.05, momentum=0.9, nesterov=True), jax.random.key(0), (28, 28, 1)
        )
        step = jax.jit(functools.partial(training.train_step, model=model), donate_argnums=0)
        for i, idx in enumerate(batches):
            batch = {"image": train.images[idx] / np.float32(255), "label": train.labels[idx]}
            state, _ = step(state, batch, jax.random.key(i))
        variables = jax.device_get(state.variables())

        apply_fn = runs.eval_apply_fn(model)
        twin = torch_twins.torch_model("cnn-small", variables, num_classes=10, **CNN)
        return apply_fn, variables, twin
    sizes = (784, *MLP_WIDTHS, 10)
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [
        {"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    tx = optax.sgd(0.05, momentum=0.9, nesterov=True)
    opt = tx.init(params)

    @jax.jit
    def sgd(params, opt, x, y):
        def loss(p):
            return training.cross_entropy(_mlp_apply(p, x), y).mean()

        updates, opt = tx.update(jax.grad(loss)(params), opt, params)
        return optax.apply_updates(params, updates), opt

    for idx in batches:
        params, opt = sgd(params, opt, train.images[idx] / np.float32(255), train.labels[idx])
    params = jax.tree.map(np.asarray, jax.device_get(params))
    return _mlp_apply, params, _mlp_twin(params)


def _cifar_shaped(name: str, n: int):
    """(apply_fn, variables, twin, ArraySource of n random images labelled by the model)."""

    import jax
    import jax.numpy as jnp
    import numpy as np

    from seasoning import data, models, runs
    from seasoning.testing import torch_twins

    model = models.get_model(name, num_classes=10)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))

    apply_fn = runs.eval_apply_fn(model)
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    predict = jax.jit(apply_fn)
    labels = np.concatenate(
        [
            np.argmax(predict(variables, data.to_float(images[i : i + 250])), -1)
            for i in range(0, n, 250)
        ]
    ).astype(np.int32)
    twin = torch_twins.torch_model(name, variables, num_classes=10)
    return apply_fn, variables, twin, data.ArraySource(images, labels, num_classes=10)


def points_attacked(detail: dict, clean: float, n: int) -> dict[str, int]:
    """Attack -> how many points it ran on (those every earlier attack left robust)."""
    out, robust = {}, clean
    for name, after in detail["after"].items():
        out[name] = round(robust * n)
        robust = after
    return out


def main(argv):
    del argv
    import numpy as np

    from seasoning import parallel

    devices = parallel.split_cpu(-1, _BATCH.value)  # as `seasoning.evaluate` starts
    import jax
    import torch
    from pyautoattack import AutoAttack

    from seasoning import evaluation, threat
    from seasoning.data import fashion_mnist
    from seasoning.testing import torch_twins

    jax.config.update("jax_enable_compilation_cache", False)
    threads = _THREADS.value or os.cpu_count()
    torch.set_num_threads(threads)
    device = _TORCH_DEVICE.value
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = _N_POINTS.value
    for name in _MODELS.value:
        if name not in MODELS:
            raise app.UsageError(f"Unknown model {name!r}; choose from {list(MODELS)}.")
        if name in CIFAR_MODELS:
            apply_fn, variables, twin, test = _cifar_shaped(name, n)
            radii = CIFAR_EPS
        else:
            test = fashion_mnist.load("test")
            apply_fn, variables, twin = _train(name, _TRAIN_STEPS.value)
            radii = EPS
        x = test.images[:n].astype(np.float32) / 255
        y = test.labels[:n].astype(np.int32)
        twin = twin.to(device)
        for norm in _NORMS.value:
            tm = threat.ThreatModel(norm, radii[norm])
            ref = {}
            if _REFERENCE.value:
                adversary = AutoAttack(
                    twin,
                    norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm],
                    eps=tm.eps,
                    version=_VERSION.value,
                    seed=0,
                    device=device,
                )
                t0 = time.perf_counter()
                _, y_adv = adversary.run_standard_evaluation(
                    torch_twins.to_torch(x).to(device),
                    torch.from_numpy(y.astype(np.int64)).to(device),
                    batch_size=n,
                )
                ref["s"] = time.perf_counter() - t0
                ref["robust"] = float(np.mean(y_adv.cpu().numpy() == y))
            float32_flags = None
            for search_dtype in _SEARCH_DTYPES.value:
                t0 = time.perf_counter()
                evaluator = evaluation.Evaluator(
                    apply_fn,
                    evaluation.AttackSettings.make([tm], _VERSION.value),
                    batch_size=_BATCH.value,
                    search_apply_fn=_in_dtype(name, search_dtype),
                )
                result = evaluator.run(variables, test, np.arange(n), key=jax.random.key(0))
                ours_s = time.perf_counter() - t0
                detail, accuracy = result.details[str(tm)], result.accuracies()
                flags_now = result.flags[result.names.index(str(tm))]
                row = {
                    "benchmark": "autoattack",
                    "version": _VERSION.value,
                    "model": name,
                    "norm": norm,
                    "eps": tm.eps,
                    "n_points": n,
                    "search_dtype": search_dtype,
                    "train_steps": _TRAIN_STEPS.value,
                    "clean_accuracy": round(accuracy["clean"], 4),
                    "ours_robust_accuracy": round(accuracy[str(tm)], 4),
                    "ours_after": {k: round(v, 4) for k, v in detail["after"].items()},
                    "ours_attack_s": {k: round(v, 1) for k, v in detail["seconds"].items()},
                    "ours_points_attacked": points_attacked(detail, accuracy["clean"], n),
                    "weights": "random, labels = its predictions"
                    if name in CIFAR_MODELS
                    else f"{_TRAIN_STEPS.value} nominal SGD steps",
                    "ours_s": round(ours_s, 1),
                    "jax_cpu_devices": devices or 1,
                    "jax": jax.default_backend(),
                    "cpu_count": os.cpu_count(),
                }
                if search_dtype == "float32":
                    float32_flags = flags_now
                elif float32_flags is not None:  # points broken by one search only
                    row["broken_by_float32_only"] = int(np.sum(~float32_flags & flags_now))
                    row["broken_by_this_only"] = int(np.sum(float32_flags & ~flags_now))
                if ref:
                    row.update(
                        {
                            "reference_robust_accuracy": round(ref["robust"], 4),
                            "reference_s": round(ref["s"], 1),
                            "speedup": round(ref["s"] / ours_s, 2),
                            "torch_threads": threads,
                            "torch_device": device,
                        }
                    )
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(app.run(main))
