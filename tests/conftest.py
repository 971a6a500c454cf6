"""Test set-up: 8 fake CPU devices, so every sharded code path runs as on a pod slice."""

import os

os.environ.setdefault("XLA_FLAGS", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Full float32 matmuls and convolutions, as on CPU, for the CLIs the tests start too. On GPUs
# JAX defaults to TF32, whose ~1e-3 relative error flips the prediction at adversarial points
# that close to the boundary, so the exact robust accuracies below would no longer be exact
# (seen on an H100: one of 300 points of the linear problem). A no-op on CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# One persistent compilation cache for the test processes and the CLIs they start: the same
# train step and attacks compile in several tests (and xdist workers) otherwise.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
