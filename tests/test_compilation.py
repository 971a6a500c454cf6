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
# a train step on its output; the outputs go to an .npz, the cache's hit count to stdout.
_PROGRAM = """
import sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax import monitoring
hits = []
monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
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

x_adv, params, metrics = attack_and_step(state, x, y, jax.random.key(2))
leaves = {str(i): np.asarray(a) for i, a in enumerate(jax.tree.leaves((x_adv, params, metrics)))}
np.savez(sys.argv[1], **leaves)
print(len(hits))
"""


def _run(cache_dir: str, output: str, **env_overrides: str) -> int:
    # Every program is stored, however quick its compile (JAX's threshold is 1 s).
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env_overrides}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _PROGRAM, output], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cached_and_default_compilations_compute_the_tests_numbers(tmp_path):
    """Three runs of the program: compiled with the tests' XLA_FLAGS (conftest) into an empty
    cache; the same, loaded from that cache: the same bits; compiled with no XLA_FLAGS (XLA's
    defaults): the same numbers to float32 rounding (measured at most 1.5e-8 apart on an AMD
    EPYC: attack points, parameters, metrics)."""
    assert os.environ["XLA_FLAGS"]  # what conftest set (or the caller's own flags)
    cache = str(tmp_path / "cache")
    cold = _run(cache, str(tmp_path / "cold.npz"))
    warm = _run(cache, str(tmp_path / "warm.npz"))
    assert cold == 0 and warm >= 1, (cold, warm)  # compiled, then loaded
    _run(str(tmp_path / "other_cache"), str(tmp_path / "default.npz"), XLA_FLAGS="")
    with (np.load(tmp_path / "cold.npz") as a, np.load(tmp_path / "warm.npz") as b,
          np.load(tmp_path / "default.npz") as c):  # fmt: skip
        assert sorted(a.files) == sorted(b.files) == sorted(c.files) and len(a.files) > 3
        assert np.abs(a["0"] - 0.5).max() > 0  # the attack moved the points
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
            np.testing.assert_allclose(a[name], c[name], rtol=1e-5, atol=1e-6, err_msg=name)
