"""Reading checkpoints without running code from them, and writing checkpoints that need no help to read.

* ``import coc_det`` changes nothing in ``torch.load``: torch's process-wide list of safe globals is left as
  it was. (Allowlisting a callable there, ``getattr`` say, lets a crafted "weights-only" file reach
  ``builtins`` and run code in *every* ``torch.load`` of the process.)
* The checkpoints our training writes load under torch's default ``weights_only=True`` as they are:
  :class:`~coc_det.hooks.WeightsOnlyCheckpointHook` (in every config) stores mmengine's message hub
  (``HistoryBuffer`` of numpy arrays, numpy scalars) as tensors and plain Python values, and turns them
  back into ``HistoryBuffer`` on ``--resume``. So mmengine's loader, mmdet's ``init_detector`` /
  ``DetInferencer`` and mmseg's ``init_model`` read them with no allowlist at all.
* :func:`read_checkpoint` (every loader of this package) reads with ``weights_only=True``; for the call alone
  it also accepts ``argparse.Namespace``, a plain data class that timm's training script (with which the
  public CoC ImageNet checkpoints were made) stores next to the weights; the previous list is restored
  exactly afterwards. No fallback to full unpickling: anything else is refused, before any of it is built.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely, or whose weights do not fit the model."""


#: plain data classes :func:`read_checkpoint` accepts beyond torch's defaults, for its own call only (no
#: callables: a function or a builtin here would let a file call it with arguments of its choosing)
LOADER_SAFE_CLASSES = (argparse.Namespace,)


@contextlib.contextmanager
def _scoped_safe_globals(extra):
    """Add ``extra`` to torch's safe globals for the block, then take out again just what it added (torch's own
    ``safe_globals`` block removes its globals on exit even where they had been allowlisted before; what
    anything else adds meanwhile, torch's lazily imported modules say, stays)."""
    added = [g for g in extra if g not in torch.serialization.get_safe_globals()]
    torch.serialization.add_safe_globals(added)
    try:
        yield
    finally:
        keep = [g for g in torch.serialization.get_safe_globals() if not any(g is a for a in added)]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(keep)


def read_checkpoint(path: str):
    """Load a checkpoint file (or an http(s) URL) onto the CPU without executing anything from it.

    Raises :class:`FileNotFoundError` for a missing file and :class:`CheckpointError` for a folder, a file that
    is truncated / not a torch checkpoint, or one that holds objects other than weights and plain data.
    """
    path = str(path)
    if path.startswith(("http://", "https://")):
        with _scoped_safe_globals(LOADER_SAFE_CLASSES):
            return torch.hub.load_state_dict_from_url(path, map_location="cpu", weights_only=True)
    if "://" in path:
        raise CheckpointError(f"{path}: only local files and http(s) URLs are read (no {path.split('://')[0]}://)")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with _scoped_safe_globals(LOADER_SAFE_CLASSES):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines() or [""]
        hint = next((line for line in reason if "Unsupported global" in line or "GLOBAL" in line), None)
        if hint is None:  # not a pickle of objects at all (random bytes, another format): nothing to trust
            raise CheckpointError(f"{path} is not a torch checkpoint (truncated or another format?): "
                                  f"{reason[0].strip()[:200]}") from None
        raise CheckpointError(
            f"{path} holds objects other than weights ({hint.strip()}); it is not unpickled, since that could "
            "run code. If you trust the file, extract its tensors yourself, e.g. "
            "torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth')") from None
    except Exception as err:  # truncated zip, random bytes (legacy pickle path), ...
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or another format?): "
                              f"{type(err).__name__}: {err}") from None


def state_dict_of(ckpt, name: str = "the checkpoint") -> dict:
    """The weights of a loaded checkpoint: under ``state_dict`` (mmengine/mmdet), ``model`` (DeiT/timm-style
    training scripts, as the public CoC ImageNet checkpoints), or the bare dict; ``module.`` (DDP) stripped.
    Raises :class:`CheckpointError` unless every key is a string and every value a tensor."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{name} must be a dict of tensors, got {type(ckpt).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    for k, v in ckpt.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{name} has a key {k!r} of type {type(k).__name__}; weights are named by strings")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{name} holds a {type(v).__name__} under {k!r} where a tensor belongs")
    return {k[7:] if k.startswith("module.") else k: v for k, v in ckpt.items()}


def compare_state_dicts(own: dict, state: dict):
    """How a checkpoint's ``state`` fits a model's ``own`` state dict: ``(missing, unexpected, wrong)`` with
    ``wrong`` one ``"key: checkpoint (shape) vs model (shape)"`` line per tensor of another shape."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return missing, unexpected, wrong


def original_code_version(ckpt) -> str | None:
    """``'mmdet 2.x'`` / ``'mmseg 0.x'`` for a checkpoint trained by the original CoC code (mmdet 2.x and mmseg
    0.x write their version into ``meta``), else None."""
    meta = (ckpt.get("meta") if isinstance(ckpt, dict) else None) or {}
    if not isinstance(meta, dict):
        return None
    for lib, old in (("mmdet", "2."), ("mmseg", "0.")):
        version = str(meta.get(f"{lib}_version", ""))
        if version.startswith(old):
            return f"{lib} {version}"
    return None


def trained_denominator(ckpt) -> tuple[str | None, str]:
    """The one rule every tool follows: the mixer denominator a checkpoint's weights were trained with,
    ``('count', why)`` for the original code's detectors and segmentors (trained before the public code's
    switch to the paper's similarity denominator on 2023-05-31), ``(None, '')`` when the checkpoint does not
    say (this project's, the public ImageNet ones: the model's own setting stands)."""
    version = original_code_version(ckpt)
    if version is None:
        return None, ""
    return "count", (f"trained with {version} by the original Context Cluster code, which normalised clusters "
                     "by their point count")


__all__ = ["CheckpointError", "LOADER_SAFE_CLASSES", "compare_state_dicts", "original_code_version", "read_checkpoint",
           "state_dict_of", "trained_denominator"]
