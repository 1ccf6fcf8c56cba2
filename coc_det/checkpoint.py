"""Reading checkpoints without running code from them.

Every checkpoint goes through ``torch.load(weights_only=True)``: tensors, containers, numbers and strings,
plus the few plain-data types the checkpoints of our two ecosystems pickle next to the weights, allowlisted
by :func:`allow_checkpoint_metadata` when ``coc_det`` is imported: mmengine 0.10's message hub
(``HistoryBuffer`` of numpy arrays, numpy scalars and dtypes) and the ``argparse.Namespace`` of training
arguments that timm's training script (with which the public CoC ImageNet checkpoints were made) stores. There is no fallback to full unpickling:
a file holding anything else is refused with a message saying so, before any of it is built.
"""
from __future__ import annotations

import os
import pickle

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely, or whose weights do not fit the model."""


_ALLOWED = []


def checkpoint_safe_globals() -> list:
    """The globals our checkpoints need beyond torch's weights-only defaults: ``argparse.Namespace`` (timm
    training checkpoints) always; with mmengine installed, what an mmengine 0.10 checkpoint holds.
    ``HistoryBuffer`` and ``Namespace`` are rebuilt from their ``__dict__`` (no constructor runs); numpy
    arrays, scalars and dtypes are data; numpy pickles a dtype class as ``getattr(numpy.dtypes, name)``
    (``getattr`` results cannot be called by the weights-only unpickler unless allowlisted themselves)."""
    import argparse
    try:
        import numpy as np
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:  # torch-only machines: no mmengine checkpoints to read
        return [argparse.Namespace]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = {type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
                                          np.int8, np.uint8, np.bool_)}
    return [argparse.Namespace, HistoryBuffer, scalar, _reconstruct, np.ndarray, np.dtype, getattr,
            *sorted(dtypes, key=str)]


def allow_checkpoint_metadata():
    """Let ``torch.load``'s default ``weights_only=True`` read mmengine 0.10 checkpoints (mmengine's own
    loader, mmdet's ``init_detector``/``DetInferencer``, ``--resume``) and timm training checkpoints (timm's
    ``checkpoint_path=``): allowlists exactly :func:`checkpoint_safe_globals`. Called when ``coc_det`` is
    imported."""
    if not _ALLOWED:
        _ALLOWED.extend(checkpoint_safe_globals())
    # again on every call: a ``torch.serialization.safe_globals([...])`` block elsewhere (timm's loader uses one
    # for argparse.Namespace) removes its globals on exit even when they were allowlisted before
    torch.serialization.add_safe_globals(_ALLOWED)


def read_checkpoint(path: str):
    """Load a checkpoint file (or an http(s) URL) onto the CPU without executing anything from it.

    Raises :class:`FileNotFoundError` for a missing file and :class:`CheckpointError` for a file that is
    truncated / not a torch checkpoint, or that holds objects other than weights and mmengine's metadata.
    """
    path = str(path)
    allow_checkpoint_metadata()
    if path.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(path, map_location="cpu", weights_only=True)
    if "://" in path:
        raise CheckpointError(f"{path}: only local files and http(s) URLs are read (no {path.split('://')[0]}://)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # allowlisted just above
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


def compare_state_dicts(own: dict, state: dict):
    """How a checkpoint's ``state`` fits a model's ``own`` state dict: ``(missing, unexpected, wrong)`` with
    ``wrong`` one ``"key: checkpoint (shape) vs model (shape)"`` line per tensor of another shape."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return missing, unexpected, wrong


__all__ = ["CheckpointError", "compare_state_dicts", "allow_checkpoint_metadata", "checkpoint_safe_globals", "read_checkpoint",
           "state_dict_of"]
