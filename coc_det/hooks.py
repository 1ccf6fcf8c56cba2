"""mmengine hooks of the training configs (registered where mmengine is installed).

``WeightsOnlyCheckpointHook`` makes the checkpoints a run writes load under torch's default
``weights_only=True`` with nothing allowlisted: mmengine pickles its message hub (``HistoryBuffer`` objects
holding numpy arrays, numpy scalars) next to the weights, which torch refuses. Before a checkpoint is
saved the hook turns numpy arrays into tensors, numpy scalars into Python numbers and every
``HistoryBuffer`` into a tagged dict of tensors; after a checkpoint is loaded (``--resume``) it rebuilds
the ``HistoryBuffer`` objects, so a resumed run's logged averages continue as before.

``EpochSeedHook`` makes ``--resume`` exact: mmengine restores the weights, optimizer, LR schedule and the
sampler's order of a resumed run, but not the random generators the data pipeline (random flips: numpy),
the model (drop path: torch) and the data loader (worker seeds: torch) draw from; they continue from the
state of a fresh process instead. This hook reseeds python, numpy and torch at the start of every epoch
from (run seed, epoch, rank), so an epoch draws the same numbers whether the run got there in one go or
was resumed from the previous epoch's checkpoint. (Resuming from a checkpoint saved in the middle of an
epoch, i.e. iteration-based checkpoints, is not covered.)
"""
from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import HOOKS

#: the key of the plain dict a ``HistoryBuffer`` is stored as
BUFFER_TAG = "__history_buffer__"


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed for (run seed, epoch, rank), different for every pair of epochs and ranks."""
    return (int(seed) * 1_000_003 + epoch * 10_007 + rank) % (2 ** 32)


@HOOKS.register_module(force=True)
class EpochSeedHook(Hook):
    """Reseed python / numpy / torch (all devices) before every training epoch: see the module docstring."""

    priority = "VERY_HIGH"  # before the sampler hook and anything else that might draw

    def before_train_epoch(self, runner) -> None:
        seed = epoch_seed(runner.seed, runner.epoch, get_rank())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device


def _rebuild(obj, convert):
    """``obj`` with ``convert`` applied top-down: where ``convert`` returns something other than the value it
    was given, that replaces it; otherwise dicts, lists and tuples are rebuilt from their converted items."""
    new = convert(obj)
    if new is not obj:
        return new
    if isinstance(obj, dict):
        items = ((k, _rebuild(v, convert)) for k, v in obj.items())
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if type(obj) in (list, tuple):
        return type(obj)(_rebuild(v, convert) for v in obj)
    return obj


def _array(a: np.ndarray):
    """A numpy array as a tensor (numeric dtypes) or a nested list (others)."""
    try:
        return torch.from_numpy(np.ascontiguousarray(a)).clone()
    except TypeError:  # object / string arrays
        return plain_data(a.tolist())


def _plain_value(obj):
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {BUFFER_TAG: dict(log=_array(log), count=_array(count), max_length=int(obj.max_length))}
    if isinstance(obj, np.ndarray):
        return _array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.dtype):
        return str(obj)
    return obj


def plain_data(obj):
    """``obj`` with numpy values and mmengine ``HistoryBuffer`` objects replaced by what torch's weights-only
    loader reads without an allowlist (containers rebuilt, tensors and other values kept as they are)."""
    return _rebuild(obj, _plain_value)


def _history_buffer(obj):
    if isinstance(obj, dict) and set(obj) == {BUFFER_TAG}:
        d = obj[BUFFER_TAG]

        def as_np(t):
            return t.numpy() if isinstance(t, torch.Tensor) else np.array(t)

        return HistoryBuffer(as_np(d["log"]), as_np(d["count"]), int(d["max_length"]))
    return obj


def history_buffers(obj):
    """The inverse of :func:`plain_data` for the tagged ``HistoryBuffer`` dicts (numpy values stay plain)."""
    return _rebuild(obj, _history_buffer)


@HOOKS.register_module(force=True)
class WeightsOnlyCheckpointHook(Hook):
    """Write checkpoints that ``torch.load``'s weights-only default reads as they are: see the module
    docstring. Weights, optimizer and scheduler states are tensors and plain values already and stay as
    they are."""

    priority = "VERY_LOW"  # after every other hook has added what it stores

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            if key != "state_dict":
                checkpoint[key] = plain_data(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if isinstance(checkpoint.get("message_hub"), dict):
            checkpoint["message_hub"] = history_buffers(checkpoint["message_hub"])
