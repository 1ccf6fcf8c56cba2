"""Context Cluster backbone for dense prediction (4 outputs at strides 4/8/16/32).

Parameter names and shapes are those of the public CoC ImageNet checkpoints (``patch_embed.proj``,
``network.{i}`` = stages at even i and stride-2 ``PointRecuder`` convs at odd i, blocks with ``norm1``,
``token_mixer.{f,v,proj,sim_alpha,sim_beta}``, ``norm2``, ``mlp.{fc1,fc2}``, ``layer_scale_{1,2}``, and
output norms ``norm0/norm2/norm4/norm6``), so a classification checkpoint loads as is.

The module needs only torch (and triton for the fused path): it derives from mmengine's ``BaseModule``
when mmengine is installed and from a small stand-in otherwise. Registration into mmdet's registry lives
in :mod:`coc_det.registry`.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from typing import Dict, List, Sequence, Union

import torch
import torch.nn as nn

from coc_kernels import DEFAULT_DENOMINATOR, canonical_impl, context_cluster
from coc_kernels.functional import check_denominator, pair

from .checkpoint import (CheckpointError, compare_state_dicts, read_checkpoint, state_dict_of,
                         trained_denominator)

try:  # mmengine's BaseModule when available (init_cfg handling, logging of initialisation)
    from mmengine.model import BaseModule
except ImportError:  # pragma: no cover - exercised on machines without mmengine
    class BaseModule(nn.Module):
        """Stand-in for ``mmengine.model.BaseModule``: keeps ``init_cfg``; ``init_weights`` is overridden."""

        def __init__(self, init_cfg=None):
            super().__init__()
            self.init_cfg = copy.deepcopy(init_cfg)

        def init_weights(self):
            pass

logger = logging.getLogger("coc_det")

#: regions per axis of each stage in the region-partitioned models (stage i's map has stride 4 * 2**i)
DEFAULT_FOLDS = (8, 4, 2, 1)
#: centres per region axis of the public models (M = 4 centres per region)
DEFAULT_PROPOSALS = (2, 2, 2, 2)

ARCH_SETTINGS: Dict[str, dict] = {
    # The public CoC models (ma-xu/Context-Cluster, models/context_cluster.py): blocks per stage, channels,
    # MLP ratios, heads and head dim of the mixers, centres per region axis (proposals) and regions per axis
    # (folds) of every stage. The detection/segmentation configs override the proposals (-4/-25/-49).
    "tiny": dict(layers=[3, 4, 5, 2], embed_dims=[32, 64, 196, 320], mlp_ratios=[8, 8, 4, 4],
                 heads=[4, 4, 8, 8], head_dim=[24, 24, 24, 24], proposals=DEFAULT_PROPOSALS, folds=DEFAULT_FOLDS),
    # regions of 8x8 at 224 px in stages 1-2 (folds 7): inputs pad to multiples of 224 (size_divisor)
    "tiny2": dict(layers=[3, 4, 5, 2], embed_dims=[32, 64, 196, 320], mlp_ratios=[8, 8, 4, 4],
                  heads=[4, 4, 8, 8], head_dim=[24, 24, 24, 24], proposals=(4, 2, 7, 4), folds=(7, 7, 1, 1)),
    "tiny_plain": dict(layers=[3, 4, 5, 2], embed_dims=[32, 64, 196, 320], mlp_ratios=[8, 8, 4, 4],
                       heads=[4, 4, 8, 8], head_dim=[24, 24, 24, 24], proposals=(4, 4, 2, 2), folds=(1, 1, 1, 1)),
    "small": dict(layers=[2, 2, 6, 2], embed_dims=[64, 128, 320, 512], mlp_ratios=[8, 8, 4, 4],
                  heads=[4, 4, 8, 8], head_dim=[32, 32, 32, 32], proposals=DEFAULT_PROPOSALS, folds=DEFAULT_FOLDS),
    "medium": dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512], mlp_ratios=[8, 8, 4, 4],
                   heads=[6, 6, 12, 12], head_dim=[32, 32, 32, 32], proposals=DEFAULT_PROPOSALS, folds=DEFAULT_FOLDS),
    "base_dim64": dict(layers=[6, 6, 24, 6], embed_dims=[64, 128, 320, 512], mlp_ratios=[8, 8, 4, 4],
                       heads=[8, 8, 16, 16], head_dim=[32, 32, 32, 32], proposals=DEFAULT_PROPOSALS,
                       folds=DEFAULT_FOLDS),
    "base_dim96": dict(layers=[4, 4, 12, 4], embed_dims=[96, 192, 384, 768], mlp_ratios=[8, 8, 4, 4],
                       heads=[8, 8, 16, 16], head_dim=[32, 32, 32, 32], proposals=DEFAULT_PROPOSALS,
                       folds=DEFAULT_FOLDS),
}

#: centres per region ("-4 / -25 / -49" in the detection/segmentation model names) -> centres per region axis
PROPOSAL_OF_CENTRES = {4: 2, 25: 5, 49: 7}


def size_divisor(folds) -> int:
    """The input side every stage's map divides by its fold (stage i has stride 4 * 2**i): 32 for folds
    8/4/2/1, 224 for tiny2's 7/7/1/1. ``folds``: one int or ``(fh, fw)`` pair per stage."""
    div = 1
    for i, f in enumerate(folds):
        f = math.lcm(*f) if isinstance(f, (tuple, list)) else f
        div = math.lcm(div, 4 * 2 ** i * f)
    return div


def _per_stage(v, n: int, name: str) -> list:
    if isinstance(v, (int, float)):
        return [v] * n
    v = list(v)
    if len(v) != n:
        raise ValueError(f"{name} needs one value per stage ({n}), got {v}")
    return v


def _recording_graph() -> bool:
    """True while ``torch.fx`` traces symbolically or ``torch.jit.trace`` records (not under ``torch.compile``,
    nor inside ``torch.onnx.export``, which records the op's standard-op form): then the mixers are recorded as
    the one operator ``torch.ops.coc_kernels.context_cluster`` and the backbone's Python-side checks are left to
    it (they would look at proxies)."""
    if torch.compiler.is_compiling():
        return False
    if torch.jit.is_tracing():
        return not torch.onnx.is_in_onnx_export()
    fx = torch.fx._symbolic_trace
    return getattr(fx, "is_fx_symbolic_tracing", fx.is_fx_tracing)()


class GroupNorm(nn.GroupNorm):
    """GroupNorm with a single group over ``[B, C, H, W]``."""

    def __init__(self, num_channels: int, **kwargs):
        super().__init__(1, num_channels, **kwargs)


#: True while the ``compile`` switch runs the backbone: its convolutions then enter the graph as matrix products
#: (:func:`conv2d_as_matmul`). Read by dynamo as a global (it guards on it), set only around the switch's call,
#: so ``torch.compile(model)`` from outside still sees the convolutions.
_CONV_FREE = False


def conv2d_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` as one matrix product of the strided taps,
    ``[B, C, H, W] -> [B, O, Ho, Wo]``, for ``H + 2*padding`` and ``W + 2*padding`` divisible by ``stride``.

    Why: inductor (torch 2.14) pins symbolic image sizes at a convolution's backward: its lowering guards the
    gradient's strides to integers, and on the CPU its channels-last layout choice makes AOT autograd restride
    saved activations with integer strides; a training graph then compiles once per image size. Taps come
    from reshapes and slices (``x = [B, C, n, s, ...]`` with row ``s*(o+q) + r`` at ``[o+q, r]``), so the
    sizes stay products of the symbolic ones; a matrix product's backward keeps them symbolic."""
    B, C, H, W = x.shape
    _, _, kh, kw = weight.shape
    s = stride
    if kh == kw == s == 1 and padding == 0:
        y = torch.matmul(weight.flatten(1), x.flatten(2))
        ho, wo = H, W
    else:
        if padding:
            x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        nh, nw = (H + 2 * padding) // s, (W + 2 * padding) // s
        ho, wo = nh - (kh - 1) // s, nw - (kw - 1) // s  # (n*s - k)//s + 1
        x6 = x.unflatten(3, (nw, s)).unflatten(2, (nh, s))  # [B, C, nh, s, nw, s]
        taps = [x6[:, :, i // s:i // s + ho, i % s, j // s:j // s + wo, j % s] for i in range(kh) for j in range(kw)]
        y = torch.matmul(weight.flatten(1), torch.stack(taps, 2).flatten(1, 2).flatten(2))  # [B, O, Ho*Wo]
    if bias is not None:
        y = y + bias.to(y.dtype)[:, None]
    return y.unflatten(2, (ho, wo))


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; as :func:`conv2d_as_matmul` while the ``compile`` switch runs."""
    if _CONV_FREE:
        return conv2d_as_matmul(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0])
    return conv(x)


class PointRecuder(nn.Module):
    """Strided conv that reduces the point set (the original's name, kept for checkpoint keys)."""

    def __init__(self, patch_size: int, stride: int, padding: int, in_chans: int, embed_dim: int, device=None,
                 dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding,
                              device=device, dtype=dtype)

    def forward(self, x):
        if torch.jit.is_scripting():
            return self.proj(x)
        else:
            return _conv(self.proj, x)


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Cluster(nn.Module):
    """CoC token mixer: ``proj(context_cluster(f(x), v(x)))``. ``[B, dim, H, W] -> [B, dim, H, W]``."""

    def __init__(self, dim: int, heads: int, head_dim: int, proposal, fold, impl: str = "auto",
                 denominator: str = DEFAULT_DENOMINATOR, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.heads, self.proposal, self.fold = heads, proposal, fold
        # the same as [h, w] lists, as the operator form takes them (TorchScript, torch.fx)
        self.proposal_hw: List[int] = list(pair(proposal, "proposal"))
        self.fold_hw: List[int] = list(pair(fold, "fold"))
        self.impl, self.denominator = impl, denominator
        self.f = nn.Conv2d(dim, heads * head_dim, 1, **dd)
        self.v = nn.Conv2d(dim, heads * head_dim, 1, **dd)
        self.proj = nn.Conv2d(heads * head_dim, dim, 1, **dd)
        self.sim_alpha = nn.Parameter(torch.ones(1, **dd))
        self.sim_beta = nn.Parameter(torch.zeros(1, **dd))

    def forward(self, x):
        if torch.jit.is_scripting():
            return self.proj(self._operator(self.f(x), self.v(x)))
        else:
            value, feat = _conv(self.v, x), _conv(self.f, x)
            if _recording_graph():
                out = self._operator(feat, value)
            else:
                out = context_cluster(feat, value, self.sim_alpha, self.sim_beta, heads=self.heads,
                                      proposal=self.proposal, fold=self.fold, impl=self.impl,
                                      denominator=self.denominator)
            return _conv(self.proj, out)

    def _operator(self, feat: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The op as the torch operator a graph records (TorchScript, torch.fx, torch.jit.trace)."""
        return torch.ops.coc_kernels.context_cluster(feat, value, self.sim_alpha, self.sim_beta, self.heads,
                                                     self.proposal_hw, self.fold_hw, self.impl, self.denominator)

    def extra_repr(self):
        return (f"heads={self.heads}, proposal={self.proposal}, fold={self.fold}, impl={self.impl!r}, "
                f"denominator={self.denominator!r}")


class Mlp(nn.Module):
    """Two Linear layers on channels-last with GELU. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)


class ClusterBlock(nn.Module):
    """GroupNorm -> mixer -> layer scale -> residual; GroupNorm -> MLP -> layer scale -> residual."""

    def __init__(self, dim, mlp_ratio, heads, head_dim, proposal, fold, drop_path=0.0,
                 layer_scale_init_value=1e-5, impl="auto", denominator=DEFAULT_DENOMINATOR, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = GroupNorm(dim, **dd)
        self.token_mixer = Cluster(dim, heads, head_dim, proposal, fold, impl, denominator, **dd)
        self.norm2 = GroupNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim, **dd))
        self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim, **dd))

    def forward(self, x):
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.token_mixer(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x


def position_channels(x: torch.Tensor) -> torch.Tensor:
    """The two coordinate channels CoC appends to the image: ``arange(n)/(n-1) - 0.5`` per axis.
    ``[B, C, H, W] -> [B, 2, H, W]`` (a leaf of torch.fx traces: it reads the input's size)."""
    B, _, H, W = x.shape
    rows = torch.arange(H, device=x.device, dtype=torch.float32) / max(H - 1, 1) - 0.5
    cols = torch.arange(W, device=x.device, dtype=torch.float32) / max(W - 1, 1) - 0.5
    pos = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=0).to(x.dtype)
    return pos.unsqueeze(0).expand(B, -1, -1, -1)


torch.fx.wrap("position_channels")


class ContextCluster(BaseModule):
    """Context Cluster backbone for dense prediction.

    Args:
        arch: a name of :data:`ARCH_SETTINGS` (``tiny``, ``tiny2``, ``tiny_plain``, ``small``, ``medium``,
            ``base_dim64``, ``base_dim96``) or a dict with ``layers``, ``embed_dims``, ``mlp_ratios``, ``heads``
            (and optionally ``head_dim``, ``proposals``, ``folds``), one entry per stage.
        proposal: centres per region axis, per stage or one for all (2, 5, 7 = "-4/-25/-49"); default: the
            arch's.
        fold: regions per axis, per stage; default: the arch's (``[8, 4, 2, 1]`` for the partitioned models).
        out_indices: which stages to return (0..3).
        drop_path_rate: stochastic depth, increasing linearly over all blocks.
        layer_scale_init_value: initial layer scale.
        mixer_impl: ``'auto'`` | ``'triton'`` | ``'light'`` | ``'dense'`` (see ``coc_kernels``; ``'reference'``
            is accepted as the earlier name of ``'light'``).
        denominator: aggregate normaliser, ``'similarity'`` (paper Eq. 1, today's public code and ImageNet
            checkpoints) or ``'count'`` (the detectors/segmentors trained before 2023-05-31).
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem, the first k stages and their output norms
            (eval mode, no grad).
        with_cp: activation checkpointing of every block while training (same results, less memory, one
            more forward of each block in backward).
        compile: ``True`` (or a dict of ``torch.compile`` arguments that update :data:`COMPILE_DEFAULTS`)
            compiles the whole backbone, stem to output norms, as one graph with inductor: GroupNorm, layer
            scale, residuals, MLP and 1x1 convs fused; the fused mixer stays one opaque custom op. The numbers
            of ``size_divisor`` blocks along height and width are symbolic, so detection's varying padded image
            sizes reuse one graph, in training too; the batch size is static (one graph per batch size:
            training's and batch-1 inference's). In the graph the convolutions are matrix products
            (:func:`conv2d_as_matmul`) and the mixers' pooling too: inductor's lowering of both would pin the
            sizes. Works with ``with_cp``, frozen stages, autocast and DDP. Results equal eager (summation
            order aside).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads an ImageNet CoC checkpoint.
        device, dtype: where and in which dtype the weights are made (``device='meta'``: no memory).

    Input ``[B, 3, H, W]`` with H and W divisible by :attr:`size_divisor` (32 for the default folds);
    output: a tuple of ``[B, embed_dims[i], H/2**(i+2), W/2**(i+2)]`` for i in ``out_indices``.
    """

    #: mmengine's ``BaseModule.is_init`` property is not TorchScript (the classifier scripts without it)
    __jit_unused_properties__ = ["is_init"]

    def __init__(self, arch: Union[str, dict] = "small", proposal: Union[int, Sequence[int], None] = None,
                 fold: Union[int, Sequence[int], None] = None, out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.0, layer_scale_init_value: float = 1e-5, mixer_impl: str = "auto",
                 denominator: str = DEFAULT_DENOMINATOR, frozen_stages: int = -1, with_cp: bool = False,
                 compile: Union[bool, dict] = False, init_cfg=None, device=None, dtype=None):
        super().__init__(init_cfg=init_cfg)
        dd = dict(device=device, dtype=dtype)
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCH_SETTINGS)} or pass a dict")
            arch = ARCH_SETTINGS[arch]
        arch = dict(arch)
        missing = {"layers", "embed_dims", "mlp_ratios", "heads"} - set(arch)
        if missing:
            raise ValueError(f"arch dict lacks {sorted(missing)}")
        layers = list(arch["layers"])
        n = len(layers)
        dims = _per_stage(arch["embed_dims"], n, "embed_dims")
        mlp_ratios = _per_stage(arch["mlp_ratios"], n, "mlp_ratios")
        heads = _per_stage(arch["heads"], n, "heads")
        head_dim = _per_stage(arch.get("head_dim", 32), n, "head_dim")
        proposals = _per_stage(arch.get("proposals", DEFAULT_PROPOSALS[:n]) if proposal is None else proposal, n,
                               "proposal")
        folds = _per_stage(arch.get("folds", DEFAULT_FOLDS[:n]) if fold is None else fold, n, "fold")
        if any(i < 0 or i >= n for i in out_indices):
            raise ValueError(f"out_indices {out_indices} out of range for {n} stages")
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= n:
            raise ValueError(f"frozen_stages must be -1 (nothing) .. {n} (all stages), got {frozen_stages!r}")
        mixer_impl = canonical_impl(mixer_impl, "mixer_impl")
        check_denominator(denominator)
        self.embed_dims, self.out_indices, self.frozen_stages = dims, tuple(out_indices), frozen_stages
        self.with_cp = with_cp
        if not isinstance(compile, (bool, dict)):
            raise ValueError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
        if isinstance(compile, dict):
            check_compile_options(compile)
        self.compile_cfg = dict(COMPILE_DEFAULTS, **compile) if isinstance(compile, dict) else (
            dict(COMPILE_DEFAULTS) if compile else None)
        self.proposals, self.folds = proposals, folds
        self.size_divisor = size_divisor(folds)

        self.patch_embed = PointRecuder(4, 4, 0, 5, dims[0], **dd)
        network = []
        total, done = sum(layers), 0
        for i in range(n):
            blocks = []
            for _ in range(layers[i]):
                dpr = drop_path_rate * done / max(total - 1, 1)
                blocks.append(ClusterBlock(dims[i], mlp_ratios[i], heads[i], head_dim[i], proposals[i], folds[i],
                                           dpr, layer_scale_init_value, mixer_impl, denominator, **dd))
                done += 1
            network.append(nn.Sequential(*blocks))
            if i < n - 1:
                network.append(PointRecuder(3, 2, 1, dims[i], dims[i + 1], **dd))
        self.network = nn.ModuleList(network)
        for i in self.out_indices:
            self.add_module(f"norm{2 * i}", GroupNorm(dims[i], **dd))
        self.apply(self._init_linear)
        self._freeze_stages()
        self._impl_logged = False

    @staticmethod
    def _init_linear(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _freeze_stages(self):
        if self.frozen_stages >= 0:
            # stage k (1-based) is network[2k-2] with its input downsampling conv network[2k-3]; its output
            # norm (if it is an output) is frozen with it
            frozen = [self.patch_embed] + list(self.network[:max(2 * self.frozen_stages - 1, 0)])
            frozen += [getattr(self, f"norm{2 * i}") for i in self.out_indices if i < self.frozen_stages]
            for m in frozen:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    # ---------------------------------------------------------------------------------------- weights
    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            if cfg.get("checkpoint") is None:
                _log("ContextCluster: init_cfg Pretrained has checkpoint=None: the backbone starts from random "
                     "weights (set model.backbone.init_cfg.checkpoint to an ImageNet CoC checkpoint)")
                return
            self.load_pretrained(cfg["checkpoint"], prefix=cfg.get("prefix"))
        elif cfg is not None:
            super().init_weights()

    def load_pretrained(self, checkpoint: str, prefix: str | None = None):
        """Load a CoC checkpoint (weights under 'state_dict', 'model', or bare); returns (missing, unexpected).

        The file is read by :func:`coc_det.checkpoint.read_checkpoint` (weights only: nothing in it runs).
        The classifier of an ImageNet checkpoint (``norm``, ``head``) is ignored; the output norms
        ``norm0/2/4/6`` it lacks stay at their initial values. A detector checkpoint (keys under
        ``backbone.``) gives its backbone weights when no ``prefix`` is named. Any other missing weight, or
        a shape that differs, raises :class:`~coc_det.checkpoint.CheckpointError` naming them (a
        checkpoint of another arch or model), and the module is left unchanged.
        """
        state = state_dict_of(read_checkpoint(checkpoint))
        if prefix is None and any(k.startswith("backbone.") for k in state):
            prefix = "backbone."
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        classifier = [k for k in state if k.split(".")[0] in ("norm", "head")]
        state = {k: v for k, v in state.items() if k not in classifier}
        own = self.state_dict()
        optional = {f"norm{2 * i}.{w}" for i in self.out_indices for w in ("weight", "bias")}
        missing, unexpected, wrong = compare_state_dicts(own, state)
        absent = [k for k in missing if k not in optional]
        if absent or wrong:
            what = f"{len(absent)} of the backbone's {len(own)} weights are missing (e.g. {absent[:3]})" if absent \
                else f"{len(wrong)} weights differ in shape (e.g. {wrong[:3]})"
            raise CheckpointError(f"{checkpoint} does not fit this ContextCluster: {what}; "
                                  f"{len(unexpected)} of its keys are unknown here (e.g. {unexpected[:3]}). "
                                  "Is it a CoC checkpoint of the same arch (and the right prefix)?")
        self.load_state_dict(state, strict=False)
        _log(f"loaded {checkpoint}: {len(state)} tensors; ignored classifier keys {classifier}; "
             f"missing keys {missing}; unexpected keys {unexpected}")
        return missing, unexpected

    # ---------------------------------------------------------------------------------------- forward
    def _log_mixer_impl(self, x: torch.Tensor):
        """Say once which mixer implementation runs (``'auto'`` resolved for x's device); an implementation
        that cannot run here (``'triton'`` without CUDA or the interpreter) raises its error now."""
        from coc_kernels.functional import resolve_impl
        pairs = set()
        for m in self.modules():
            if isinstance(m, Cluster):
                ph, pw = m.proposal_hw
                pairs.add((m.impl, resolve_impl(m.impl, x, ph * pw)))
        resolved = ", ".join(f"{i!r} -> {r!r}" if i == "auto" else repr(i) for i, r in sorted(pairs))
        _log(f"ContextCluster: mixer implementation {resolved} on {x.device.type}")
        self._impl_logged = True

    def _check_input(self, x: torch.Tensor):
        if _recording_graph():  # proxies, or a trace that would keep the checks' outcome: the op checks
            return
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ContextCluster expects images [B, 3, H, W], got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if H % self.size_divisor or W % self.size_divisor:
            raise ValueError(f"input size {H}x{W} is not divisible by {self.size_divisor}: every stage's feature "
                             f"map must divide by its fold {self.folds}; pad the batch "
                             f"(mmdet: data_preprocessor pad_size_divisor={self.size_divisor})")
        if not self._impl_logged and not torch.compiler.is_compiling():
            self._log_mixer_impl(x)

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not (self.with_cp and self.training and torch.is_grad_enabled()):
            return stage(x)
        from torch.utils.checkpoint import checkpoint
        for block in stage:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    def _stages(self, x: torch.Tensor, last: int | None = None) -> list:
        """Outputs of stages ``0..last`` (all by default); later stages do not run."""
        x = self.patch_embed(torch.cat([x, position_channels(x)], dim=1))
        feats = []
        for idx, layer in enumerate(self.network):
            if last is not None and idx > 2 * last:
                break
            x = self._run_stage(layer, x) if idx % 2 == 0 else layer(x)
            if idx % 2 == 0:
                feats.append(x)
        return feats

    def _outputs(self, x: torch.Tensor) -> tuple:
        feats = self._stages(x)
        return tuple(getattr(self, f"norm{2 * i}")(feats[i]) for i in self.out_indices)

    def _run(self, body, x: torch.Tensor):
        """``body(self, x)``, through torch.compile when the ``compile`` switch is on."""
        self._check_input(x)
        if self.compile_cfg is None or torch.compiler.is_compiling():
            return body(self, x)
        # The graph sees the image as [B, 3, h, d, w, d] (d = size_divisor) with the numbers of blocks h and w
        # as its symbolic sizes (see _in_blocks), and its convolutions as matrix products (conv2d_as_matmul).
        # A copy, not a view: dynamo rebuilds a view from its base, whose pixel sizes would be the symbols
        # again (the 3-channel image: 26 MB at 2x800x1344 fp32).
        global _CONV_FREE
        d = self.size_divisor
        blocks = x.unflatten(3, (x.shape[3] // d, d)).unflatten(2, (x.shape[2] // d, d)).clone()
        if self.compile_cfg.get("dynamic") is None:  # the numbers of blocks symbolic, the rest static
            torch._dynamo.maybe_mark_dynamic(blocks, 2)
            torch._dynamo.maybe_mark_dynamic(blocks, 4)
        conv_free, _CONV_FREE = _CONV_FREE, True
        try:
            return compiled(_in_blocks(body), self.compile_cfg)(self, blocks)
        finally:
            _CONV_FREE = conv_free

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Every stage's output (before the output norms): ``[B, embed_dims[i], H/2**(i+2), W/2**(i+2)]``."""
        if torch.jit.is_scripting():
            return self._stages_scripted(x)
        return self._run(ContextCluster._stages, x)

    def _stages_scripted(self, x: torch.Tensor) -> List[torch.Tensor]:
        """:meth:`_stages` as TorchScript takes it (all stages, no activation checkpointing, no compile)."""
        x = self.patch_embed(torch.cat([x, position_channels(x)], dim=1))
        feats: List[torch.Tensor] = []
        for idx, layer in enumerate(self.network):
            x = layer(x)
            if idx % 2 == 0:
                feats.append(x)
        return feats

    def forward(self, x: torch.Tensor):
        return self._run(ContextCluster._outputs, x)


#: ``torch.compile`` arguments of ``ContextCluster(compile=True)``: one graph for the whole backbone (a graph
#: break is an error, not a silent slowdown); with ``dynamic=None`` the input's numbers of ``size_divisor``
#: blocks along height and width are marked symbolic (no recompile per padded image size) and everything else
#: stays static (``dynamic=True`` would make channel counts and eps symbolic too, and tracing several times slower)
COMPILE_DEFAULTS = dict(fullgraph=True, dynamic=None)
_COMPILED: Dict[tuple, object] = {}


def check_compile_options(options: dict) -> None:
    """Refuse, when the backbone is built, what ``torch.compile`` would refuse only at the first forward: an
    unknown argument, an unknown backend or mode, ``mode`` together with ``options``."""
    import inspect
    known = [k for k in inspect.signature(torch.compile).parameters if k != "model"]
    for key in options:
        if key not in known:
            raise ValueError(f"compile: unknown torch.compile argument {key!r} (it takes {known})")
    backend = options.get("backend", "inductor")
    if isinstance(backend, str):
        backends = torch._dynamo.list_backends(exclude_tags=())
        if backend not in backends:
            raise ValueError(f"compile: backend {backend!r} is not one of torch's registered backends {backends}")
    elif not callable(backend):
        raise ValueError(f"compile: backend must be a name or a callable, got {backend!r}")
    mode = options.get("mode")
    if mode is not None:
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if mode not in modes:
            raise ValueError(f"compile: mode must be one of {modes}, got {mode!r}")
        if options.get("options") is not None:
            raise ValueError("compile: give mode or options, not both (torch.compile takes one of them)")


_BLOCK_BODIES: Dict[object, object] = {}


def _in_blocks(body):
    """``body(self, x)`` as a function of the image in blocks, ``[B, 3, h, d, w, d] -> body(self, [B, 3, h*d, w*d])``
    (one function per body, so that torch.compile caches one graph for it).

    Why: marked symbolic, the image height ``s0`` reaches every stage as nested floor divisions (stage 2 of the
    default folds has ``((s0//4) - 1)//2 + 1`` rows, a reshape ``(4*(s1//8)*(s0//8)) // (s0//4)``). Inductor
    orders strides built from them with sympy, which knows only that ``s0`` is a positive integer:
    ``2*((s0//4 - 1)//2)*... + 2 < 2`` is false for every accepted image but undecidable there (with convolutions
    in the graph, lowering a training step stopped with "cannot determine truth value of Relational"), and
    simplifying such sizes is slow.
    With the numbers of blocks ``h, w`` symbolic, the sizes are ``8*h``, ``4*h*w``, ...: products of positive
    symbols, which sympy orders at once (a training step of the test model compiles in 85 s instead of 136 s)."""
    if body not in _BLOCK_BODIES:
        def run_in_blocks(self, blocks):
            return body(self, blocks.flatten(4, 5).flatten(2, 3))
        _BLOCK_BODIES[body] = run_in_blocks
    return _BLOCK_BODIES[body]


def compiled(body, options: dict):
    """``torch.compile(body, **options)``, made once per (body, options) and shared by every instance (the
    compiled function is not stored on the module, which stays deep-copyable and picklable; dynamo guards on
    the module it is called with)."""
    key = (body, tuple(sorted((k, repr(v) if isinstance(v, dict) else v) for k, v in options.items())))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(body, **options)
    return _COMPILED[key]


def _log(msg: str):
    try:
        from mmengine.logging import print_log
        print_log(msg, logger="current")
    except ImportError:
        logger.info(msg)


class record_assignments:
    """Context manager that records the hard cluster assignment of chosen mixers during forward passes.

        with record_assignments(model, [(0, 0), (1, 1)]) as maps:
            model(images)
        maps[(0, 0)]  # [B, heads, H_s, W_s] int64: centre index (i*pw + j) of every pixel, per head

    ``(stage, block)`` are 0-based. Only the chosen mixers get a forward hook, which recomputes their
    similarity features ``f(x)`` and runs the pooling + assignment alone; the normal forward is unchanged
    and no hook remains after the ``with`` block. A backbone built with ``compile=...`` runs eagerly inside the
    block (a compiled graph calls no module hooks: it would record nothing), with the same outputs.
    """

    def __init__(self, model: ContextCluster, blocks):
        self.model, self.blocks = model, list(blocks)
        self.maps: Dict[tuple, torch.Tensor] = {}
        self._handles = []
        self._compile_cfg = None

    def __enter__(self):
        from coc_kernels import cluster_assignment

        for stage, block in self.blocks:
            mixer = self.model.network[2 * stage][block].token_mixer

            def hook(mod, inputs, output, key=(stage, block)):
                with torch.no_grad():
                    self.maps[key] = cluster_assignment(mod.f(inputs[0]), mod.sim_alpha, mod.sim_beta,
                                                        heads=mod.heads, proposal=mod.proposal, fold=mod.fold,
                                                        impl=mod.impl)

            self._handles.append(mixer.register_forward_hook(hook))
        self._compile_cfg, self.model.compile_cfg = self.model.compile_cfg, None
        return self.maps

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.model.compile_cfg = self._compile_cfg
        return False


def set_denominator(model: torch.nn.Module, denominator: str) -> int:
    """Give every Context Cluster mixer of ``model`` this denominator; returns how many there were."""
    n = 0
    for m in model.modules():
        if isinstance(m, Cluster):
            m.denominator, n = denominator, n + 1
    return n


def match_trained_denominator(model: torch.nn.Module, ckpt) -> str:
    """After loading ``ckpt`` (a checkpoint dict, or its path) into ``model``: switch the model's mixers to the
    denominator the weights were trained with (:func:`coc_det.checkpoint.trained_denominator`); returns what
    was done, for the tool to print (empty when the checkpoint does not say)."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = read_checkpoint(os.fspath(ckpt))
    denominator, why = trained_denominator(ckpt)
    if denominator is None:
        return ""
    set_denominator(model, denominator)
    return f"the checkpoint was {why}: its mixers run with denominator={denominator!r}"
