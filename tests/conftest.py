"""Test set-up: 8 fake CPU devices, so every sharded code path runs as on a pod slice."""

import os

os.environ.setdefault("XLA_FLAGS", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
