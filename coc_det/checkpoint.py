"""Reading checkpoints without running code from them.

Every checkpoint goes through ``torch.load(weights_only=True)``: tensors, containers, numbers and strings,
plus the few types mmengine 0.10 checkpoints pickle next to the weights (the message hub's
``HistoryBuffer`` of numpy arrays, numpy scalars and dtypes), allowlisted by
:func:`allow_mmengine_checkpoints` when ``coc_det`` is imported. There is no fallback to full unpickling:
a file holding anything else is refused with a message saying so, before any of it is built.
"""
from __future__ import annotations

import os
import pickle

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely, or whose weights do not fit the model."""


_ALLOWED = []


def mmengine_safe_globals() -> list:
    """The globals an mmengine 0.10 checkpoint needs beyond torch's weights-only defaults (empty without
    mmengine/numpy). ``HistoryBuffer`` is rebuilt from its ``__dict__`` (no constructor runs); numpy
    arrays, scalars and dtypes are data; numpy 2 pickles a dtype as ``getattr(numpy.dtypes, name)``."""
    try:
        import numpy as np
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:  # torch-only machines: nothing beyond torch's defaults is needed or allowed
        return []
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = {type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
                                          np.int8, np.uint8, np.bool_)}
    return [HistoryBuffer, scalar, _reconstruct, np.ndarray, np.dtype, getattr, *sorted(dtypes, key=str)]


def allow_mmengine_checkpoints():
    """Let ``torch.load``'s default ``weights_only=True`` read mmengine 0.10 checkpoints (mmengine's own
    loader, mmdet's ``init_detector``/``DetInferencer``, ``--resume``): allowlists exactly
    :func:`mmengine_safe_globals`. Called once when ``coc_det`` is imported."""
    if not _ALLOWED:
        _ALLOWED.extend(mmengine_safe_globals())
        if _ALLOWED:
            torch.serialization.add_safe_globals(_ALLOWED)


def read_checkpoint(path: str):
    """Load a checkpoint file (or an http(s) URL) onto the CPU without executing anything from it.

    Raises :class:`FileNotFoundError` for a missing file and :class:`CheckpointError` for a file that is
    truncated / not a torch checkpoint, or that holds objects other than weights and mmengine's metadata.
    """
    path = str(path)
    allow_mmengine_checkpoints()
    if path.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(path, map_location="cpu", weights_only=True)
    if "://" in path:
        raise CheckpointError(f"{path}: only local files and http(s) URLs are read (no {path.split('://')[0]}://)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        hint = next((line for line in reason if "Unsupported global" in line or "GLOBAL" in line), reason[0])
        raise CheckpointError(
            f"{path} holds objects other than weights ({hint.strip()}); it is not unpickled, since that could "
            "run code. If you trust the file, extract its tensors yourself, e.g. "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth')") from None
    except Exception as err:  # truncated zip, random bytes (legacy pickle path), ...
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or another format?): "
                              f"{type(err).__name__}: {err}") from None


def state_dict_of(ckpt) -> dict:
    """The weights of a loaded checkpoint: under ``state_dict`` (mmengine/mmdet), ``model`` (DeiT/timm-style
    training scripts, as the public CoC ImageNet checkpoints), or the bare dict; ``module.`` (DDP) stripped."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"a checkpoint must be a dict of tensors, got {type(ckpt).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k[7:] if k.startswith("module.") else k: v for k, v in ckpt.items()}


__all__ = ["CheckpointError", "allow_mmengine_checkpoints", "mmengine_safe_globals", "read_checkpoint",
           "state_dict_of"]
