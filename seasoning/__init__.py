"""seasoning: adversarially robust model soups in JAX/Flax."""

__version__ = "0.1.0"
