"""What the tests compile with (tests/conftest.py) changes no number: a program loaded from the
shared persistent compilation cache computes the same bits as the program compiled from scratch,
and the tests' XLA:CPU code generation flags give XLA's default numbers to float32 rounding."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two Python processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process: APGD-CE on a small CNN (the attack every evaluation and training step runs) and
# a train step on its output, once per output file, JAX's in-memory caches cleared between
# runs (so a later run finds the program in the persistent cache only); each run's outputs go to
# its .npz, and to stdout whether that program was loaded from the persistent cache in each run
# (JAX's compiler logs each cache hit, with the program's name, at DEBUG level).
_PROGRAM = """
import json, logging, sys
import jax, jax.numpy as jnp, numpy as np, optax
loaded = []
class Hits(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Persistent compilation cache hit"):
            loaded.append(record.args[0])
logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
logging.getLogger("jax._src.compiler").addHandler(Hits())
from seasoning import attacks, models, threat, training
model = models.get_model("cnn-small", num_classes=10, features=(8, 16, 16), hidden=32)
state = training.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
y = jnp.arange(8) % 10
tm = threat.ThreatModel("l2", 1.0)

@jax.jit
def attack_and_step(state, x, y, key):
    logits_fn = lambda z: model.apply(state.variables(), z, train=False)
    x_adv = attacks.apgd(logits_fn, x, y, tm, key=key, n_iter=5, unroll=1)
    new_state, metrics = training.train_step(state, {"image": x_adv, "label": y}, key, model=model)
    return x_adv, new_state.params, metrics

key = jax.random.key(2)
runs = []
for output in sys.argv[1:]:
    jax.clear_caches()
    loaded.clear()
    outputs = jax.tree.leaves(attack_and_step(state, x, y, key))
    np.savez(output, **{str(i): np.asarray(a) for i, a in enumerate(outputs)})
    runs.append("jit_attack_and_step" in loaded)
print(json.dumps(runs))
"""


def _run(cache_dir: str, *outputs: str, **env_overrides: str) -> list[bool]:
    """Runs the program once per output file; whether it was loaded from the cache each time."""
    # Every program is stored, however quick its compile (JAX's threshold is 1 s).
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **env_overrides,
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, *outputs],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cached_and_default_compilations_compute_the_tests_numbers(tmp_path):
    """Three runs of the program in two processes: compiled with the tests' XLA_FLAGS
    (conftest) into an empty cache, then loaded from that cache: the same bits; compiled with no
    XLA_FLAGS (XLA's defaults): the same numbers to float32 rounding (measured on an AMD EPYC
    with the flags of conftest: at most 4.8e-7 apart, 9e-8 relative, over the attack points,
    parameters and metrics)."""
    assert os.environ["XLA_FLAGS"]  # what conftest set (or the caller's own flags)
    outputs = (str(tmp_path / "cold.npz"), str(tmp_path / "warm.npz"))
    assert _run(str(tmp_path / "cache"), *outputs) == [False, True]  # compiled, then loaded
    _run(str(tmp_path / "other_cache"), str(tmp_path / "default.npz"), XLA_FLAGS="")
    with (
        np.load(tmp_path / "cold.npz") as a,
        np.load(tmp_path / "warm.npz") as b,
        np.load(tmp_path / "default.npz") as c,
    ):
        assert sorted(a.files) == sorted(b.files) == sorted(c.files) and len(a.files) > 3
        assert np.abs(a["0"] - 0.5).max() > 0  # the attack moved the points
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
            np.testing.assert_allclose(a[name], c[name], rtol=1e-5, atol=1e-6, err_msg=name)
