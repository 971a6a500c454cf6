"""Published checkpoint files -> flat `{name: numpy array}` dicts, running no code of the file.

Three formats (`FORMATS`):

- "torch": a PyTorch state dict, or a checkpoint dict holding one under a usual key
  (`STATE_DICT_KEYS`), read with `torch.load(weights_only=True)`; DataParallel's `module.`
  prefixes are stripped. Names are PyTorch's (`block1.layer.0.conv1.weight`).
- "npz": a NumPy archive of named arrays (big_vision and google-research/vision_transformer
  checkpoints), read with `np.load(allow_pickle=False)`. Names are the archive's
  (`Transformer/encoderblock_0/LayerNorm_0/scale`), a leading `params/` removed.
- "haiku": DeepMind's Haiku checkpoints: the `(params, state)` pair that
  deepmind-research/adversarial_robustness saves with `np.save` (a pickle inside a .npy,
  unpickled here with only NumPy's array constructors allowed), or an .npz of the same
  arrays. Names are `module/~/path/param` (`wide_res_net/~/init_conv/w`).

PyTorch is optional: only the "torch" format imports it, and says how to install it when it
is missing.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import zipfile
from typing import Any

import flax
import numpy as np

from seasoning import errors

FORMATS = ("torch", "npz", "haiku")

# Keys under which training scripts store the state dict inside a checkpoint dict.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state", "params")

# Where each format's published robust models are found, for a missing --src.
WHERE_PUBLISHED = {
    "torch": "RobustBench's model zoo (the .pt files its `load_model` downloads, e.g. "
    "models/cifar10/Linf/<name>.pt), torchvision, timm, or a paper's release",
    "npz": "big_vision's and google-research/vision_transformer's released ViT checkpoints "
    "(.npz files in their public buckets)",
    "haiku": "deepmind-research/adversarial_robustness (its JAX checkpoints, .npy files)",
}


def read(fmt: str, path: str) -> dict[str, np.ndarray]:
    """The arrays of checkpoint file `path` in format `fmt`, by name, in the file's order.

    Raises:
      MissingInputError: no file at `path` (the message says where such files are published).
      UserError: an unknown format, a file that is not of that format, a pickle that would run
        code, or PyTorch missing for a "torch" file.
    """
    if fmt not in FORMATS:
        raise errors.UserError(f"--from={fmt!r} is not one of {FORMATS}.")
    if not os.path.isfile(path):
        raise errors.MissingInputError(
            f"--src={path!r}: no such file. Checkpoints are not downloaded here: get the file "
            f"first ({fmt} checkpoints are published by {WHERE_PUBLISHED[fmt]}) and pass its "
            "local path."
        )
    reader = {"torch": _read_torch, "npz": _read_npz, "haiku": _read_haiku}[fmt]
    tensors = reader(path)
    if not tensors:
        raise errors.UserError(f"--src={path!r} holds no arrays.")
    return tensors


def sha256(path: str) -> str:
    """The hex SHA-256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ModuleNotFoundError:
        raise errors.UserError(
            "--from=torch needs PyTorch, which is not installed: pip install 'seasoning[torch]' "
            "(the CPU build is enough; add --index-url https://download.pytorch.org/whl/cpu "
            "to pip to avoid the CUDA one)."
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise errors.UserError(
            f"--src={path!r} is not a plain PyTorch checkpoint: loading it would run code it "
            f"names, which is refused (torch.load(weights_only=True) says: {e})."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise errors.UserError(f"--src={path!r} is not a PyTorch checkpoint: {e}") from None
    state_dict = _find_state_dict(loaded, path, torch.Tensor)
    return {
        _strip_data_parallel(name): value.detach().to(torch.float32).numpy()
        for name, value in state_dict.items()
    }


def _find_state_dict(loaded: Any, path: str, tensor_type: type) -> dict[str, Any]:
    """The state dict (a dict of `tensor_type`) in what `torch.load` returned: itself, or
    under a usual key."""

    def is_state_dict(value: Any) -> bool:
        return (
            isinstance(value, dict)
            and bool(value)
            and all(isinstance(v, tensor_type) for v in value.values())
        )

    if not isinstance(loaded, dict):
        raise errors.UserError(
            f"--src={path!r} holds a {type(loaded).__name__}, not a state dict (a dict of "
            "tensors): save `model.state_dict()`, not the model."
        )
    if is_state_dict(loaded):
        return loaded
    for key in STATE_DICT_KEYS:
        if is_state_dict(loaded.get(key)):
            return loaded[key]
    raise errors.UserError(
        f"--src={path!r} is a dict with keys {sorted(map(str, loaded))[:10]} but neither it nor "
        f"its entries {STATE_DICT_KEYS} is a state dict (a dict of tensors)."
    )


def _strip_data_parallel(name: str) -> str:
    while name.startswith("module."):
        name = name[len("module.") :]
    return name


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise errors.UserError(f"--src={path!r} is a single .npy array, not an .npz.")
            tensors = {name: np.asarray(archive[name], np.float32) for name in archive.files}
    except ValueError as e:  # e.g. an object array, which would need pickle
        raise errors.UserError(f"--src={path!r} is not a plain .npz of arrays: {e}") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise errors.UserError(f"--src={path!r} is not an .npz archive: {e}") from None
    return {name.removeprefix("params/"): value for name, value in tensors.items()}


def _read_haiku(path: str) -> dict[str, np.ndarray]:
    if zipfile.is_zipfile(path):
        return _read_npz(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(f)
        except ValueError as e:
            raise errors.UserError(f"--src={path!r} is neither an .npy nor an .npz: {e}") from None
        if dtype != np.dtype(object):
            raise errors.UserError(
                f"--src={path!r} holds one {dtype} array; a Haiku checkpoint is a "
                "(params, state) pair of dicts (or an .npz of named arrays)."
            )
        loaded = _SafeUnpickler(f, path).load()
    items = loaded.tolist() if isinstance(loaded, np.ndarray) else loaded
    if not isinstance(items, (tuple, list)):
        items = [items]
    tensors: dict[str, np.ndarray] = {}
    for item in items:
        if not isinstance(item, dict):
            raise errors.UserError(
                f"--src={path!r} holds a {type(item).__name__} where Haiku's params and state "
                "dicts were expected."
            )
        for name, value in flax.traverse_util.flatten_dict(item, sep="/").items():
            if not isinstance(value, np.ndarray | np.generic):
                raise errors.UserError(
                    f"--src={path!r}: {name!r} is a {type(value).__name__}, not an array."
                )
            tensors[name] = np.asarray(value, np.float32)
    return tensors


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and NumPy arrays only: any other global is refused.

    A pickle names the functions it calls to rebuild its objects; allowing only NumPy's array
    constructors (and OrderedDict) means loading runs nothing else.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file: io.BufferedReader, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise errors.UserError(
                f"--src={self._path!r} is a pickle that names {module}.{name}; only NumPy arrays "
                "and dicts are read (anything else could run code), so it is refused. Convert "
                "it to an .npz of named arrays where you trust it."
            ) from None
