"""mmengine hooks of the training configs (registered where mmengine is installed).

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

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


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
