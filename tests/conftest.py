"""Test set-up: 4 fake CPU devices, so every sharded code path runs as on a pod slice."""

import os

# XLA:CPU code generation for the tests: the legacy fusion emitter and LLVM at -O1, which
# compile in about half the time of XLA's defaults (MLIR fusion emitters, -O3) and run the
# tests' small programs as fast: measured on a 2-core AMD EPYC, five of the attack and training
# test files took 161 s instead of 237 s, of which compiling 86 s instead of 158 s. And one
# thread per program, for compiling (no parallel LLVM code generation) and for Eigen's matmuls
# and convolutions: the two pytest workers already keep both cores busy, so more threads only
# contend (measured, two files at a time on 2 cores as the workers run them: test_attacks +
# test_reference 200 user CPU-s with XLA's threading, 186 with one thread; test_adversarial +
# test_scale_switches 102 and 88). Programs compute the same numbers to float32 rounding
# (tests/test_compilation.py). `XLA_FLAGS= make test` runs the suite with XLA's defaults; any
# XLA_FLAGS set beforehand is kept as it is.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=1 "
    "--xla_cpu_parallel_codegen_split_count=1 --xla_cpu_multi_thread_eigen=false",
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Full float32 matmuls and convolutions, as on CPU, for the CLIs the tests start too. On GPUs
# JAX defaults to TF32, whose ~1e-3 relative error flips the prediction at adversarial points
# that close to the boundary, so the exact robust accuracies below would no longer be exact
# (seen on an H100: one of 300 points of the linear problem). A no-op on CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

# One persistent compilation cache for this test run's processes: both pytest workers and every
# CLI the tests start (they inherit these variables), so that a program that took over a second
# to compile is loaded, not compiled again, by the next process that needs it. JAX's own
# threshold (1 s) is kept: storing every small program cost more than it saved (measured: 69 s
# instead of 55 s for three model and soup test files, with the cache's size cap on). The folder
# is the checkout's `.jax_cache` (git-ignored; a fresh clone starts cold; `make clean` deletes
# it); `JAX_COMPILATION_CACHE_DIR` points it elsewhere. tests/test_compilation.py checks that a
# program loaded from it computes the same bits.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import jax  # noqa: E402

# 4 CPU devices: the mesh the drivers take on a 2-core machine (`parallel.split_cpu`) and the
# 2-process tests' global mesh, so one mesh size serves every test. 8 cost more than they showed:
# XLA:CPU runs each shard on a thread of its own, and the tests' small batches spent a quarter
# of their CPU time in the kernel switching threads (measured, three attack and training test
# files: 112 CPU-s with 8 devices, 95 with 4, of which system time 29 s and 11 s).
jax.config.update("jax_num_cpu_devices", 4)
# Two workers share the cores: at an all-reduce of these devices, wait as the drivers wait
# (XLA:CPU's own limit aborts the process after 60 s; `parallel.CPU_COLLECTIVE_TIMEOUTS`).
from seasoning import parallel  # noqa: E402

parallel.lengthen_cpu_collective_timeouts()
# The same settings here too, should a plugin have imported jax before the variables were set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)

# The longest files first: `make test` hands whole files to 2 workers in this order
# (`--no-loadscope-reorder`: pytest-xdist would otherwise order them by their number of tests),
# so the short ones fill the gaps at the end. test_ingredients trains the family's parent, its
# L1 and nominal children and the scratch model (below) while test_reference, which needs none
# of them, runs on the other worker; test_soup_sweep then trains the L2 child, which
# test_shift_run and test_multiprocess need too.
_LONGEST_FIRST = (
    "test_reference.py",
    "test_ingredients.py",
    "test_demo.py",
    "test_soup_sweep.py",
    "test_train.py",
    "test_import_weights.py",
    "test_attacks.py",
    "test_multiprocess_train.py",
    "test_shift_run.py",
    "test_docs.py",
    "test_multiprocess.py",
    "test_evaluation.py",
    "test_shift_configs.py",
    "test_scale_switches.py",
    "test_adversarial.py",
    "test_compilation.py",
    "test_input.py",
    "test_evaluate.py",
    "test_models.py",
    "test_train_configs.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# ------------------------------------------------------------------------------------------
# One Fashion-MNIST family for the whole run: a Linf parent, its fine-tuned children and a
# nominal model, each trained once (on first use) and shared by every test file and xdist
# worker. A file lock per run makes the first worker that needs a run train it while the
# others wait for it, then reuse it.

import buckets  # noqa: E402
import filelock  # noqa: E402
import pytest  # noqa: E402

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_NOMINAL = ["threat.norm=none", "threat.eps=0.0", "attack.name=none"]
# name -> (config spec, overrides); "{runs}" is the family's folder. Names are the ones
# `make demo` and configs/soup_fmnist.py use, so soup configs find the runs.
# The Linf parent and the L2 child train with APGD 5 (their configs: 10), which halves their
# cost; the L1 child keeps L1-APGD 10 (with 5 its edge over the parent at L1 10 fell from 15 to
# 5 points of 300). The margins the tests assert, measured with APGD 5 (with 10) on an AMD EPYC,
# at cnn-small's default widths (at FAMILY_MODEL's half widths: below):
# Linf parent over scratch at Linf 0.1: 41.7 (44.0) points for 20 required; L1 child over the
# parent at L1 10: 10.7 (15.0) for 3; nominal child over the parent, clean: 3.6 (4.4) for 1;
# L2 child over the parent at L2 2 (the soup sweep's 120 points): 8.3 (14.2) points.
FAMILY_RUNS = {
    # The Linf parent, 100 steps.
    "fmnist_cnn_linf": ("fmnist_cnn_linf.py:runlocal", ["max_steps=100", "attack.steps=5"]),
    # Trained nominally from scratch as long as the parent.
    "fmnist_cnn_scratch": ("fmnist_cnn_linf.py:runlocal", ["max_steps=100", *_NOMINAL]),
    # L2 child at eps 2 and lr 0.05 (the reference's 0.01 barely moves the parent in 100
    # steps); its edge over the parent is clearest at L2 2.
    "fmnist_cnn_linf_to_l2": (
        "fmnist_cnn_linf_to_l2.py:runlocal,eps=2.0,parent={runs}/fmnist_cnn_linf",
        ["max_steps=100", "optimizer.lr=0.05", "attack.steps=5"],
    ),
    "fmnist_cnn_linf_to_l1": (
        "fmnist_cnn_linf_to_l1.py:runlocal,parent={runs}/fmnist_cnn_linf",
        ["max_steps=60"],
    ),
    # The nominal child at 5x the reference's lr: 60 steps at lr 0.01 (then /10, /100) moved
    # clean accuracy by under a point on one CPU (0.752 -> 0.759, AMD EPYC).
    "fmnist_cnn_linf_to_nominal": (
        "fmnist_cnn_linf_to_nominal.py:runlocal,parent={runs}/fmnist_cnn_linf",
        ["max_steps=60", "optimizer.lr=0.05"],
    ),
}


# Every run of the family is cnn-small at half its default widths (the configs' model
# keys take `models.get_model`'s keywords): a third less training and evaluation time, and the
# margins hold (measured, widths (16, 32, 32) / 64 against the defaults: Linf parent over
# scratch 43.0 (44.7) points, L1 child over the parent 18.3 (11.3), nominal child clean 1.8
# (3.6); the soup sweep's trade between the Linf parent and the L2 child holds).
FAMILY_MODEL = {"features": (16, 32, 32), "hidden": 64}


class Family:
    """The family's runs by name (`family["fmnist_cnn_linf"]` -> workdir), trained on demand."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def __getitem__(self, name: str) -> str:
        spec, overrides = FAMILY_RUNS[name]
        parent = "fmnist_cnn_linf"
        if "{runs}/" + parent in spec:
            self[parent]  # the parent first, under its own lock
        workdir = os.path.join(self.root, name)
        done = os.path.join(self.root, f".{name}.done")
        with filelock.FileLock(os.path.join(self.root, f".{name}.lock")):
            if not os.path.exists(done):
                from seasoning import config_lib, train

                config = config_lib.load_config(
                    os.path.join(_CONFIGS, spec.format(runs=self.root)), overrides
                )
                with config.unlocked():
                    config.model.update(FAMILY_MODEL)
                train.train_and_evaluate(config, workdir)
                open(done, "w").close()
        return workdir


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> Family:
    """The shared family (see FAMILY_RUNS), in a folder every xdist worker of this run sees."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    return Family(str(base / "family"))


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    """The fake gs:// file system (`tests/buckets.py`), cleared, for one test."""
    undo = buckets.use(monkeypatch, tmp_path)
    yield buckets.FakeBucket
    undo()


@pytest.fixture(params=["local", "bucket"])
def root(request, tmp_path):
    """A folder to hold workdirs: a local one, or a prefix in the fake bucket."""
    if request.param == "local":
        return str(tmp_path / "runs")
    request.getfixturevalue("bucket")
    return "gs://bucket/runs"
