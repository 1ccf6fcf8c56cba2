"""The public op: input checks and the choice of implementation."""
from __future__ import annotations

import operator
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .reference import (DEFAULT_DENOMINATOR, DENOMINATORS, MAX_FUSED_IMAGE_ELEMENTS, cluster_assignment_dense,
                        cluster_assignment_light, compute_dtype, context_cluster_dense, context_cluster_export,
                        context_cluster_light, group_map, input_grads, torch_math, triton_interpreting)

IntPair = Union[int, Sequence[int]]
IMPLS = ("auto", "triton", "light", "dense")
#: earlier names of the implementations, still accepted: ``"reference"`` was the memory-light torch path
IMPL_ALIASES = {"reference": "light"}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


#: the most centres per region the fused kernels take: their centre tiles are ``BLOCK_M = 64`` wide at most,
#: the largest width the compile gate checks (49 centres); more centres need ``impl='light'``
MAX_FUSED_CENTRES = 64


def _int(v, name: str) -> int:
    """``v`` as an int: Python and numpy integers (``operator.index``), not bools, floats or strings."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, got the bool {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}") from None


def pair(v: IntPair, name: str) -> Tuple[int, int]:
    """``v`` (an int, or a pair of ints) as a pair of positive ints; anything else is named (as ``name``)."""
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {len(v)} values {tuple(v)}")
        v = (_int(v[0], name), _int(v[1], name))
    else:
        v = (_int(v, name),) * 2
    if min(v) < 1:
        raise ValueError(f"{name} must be positive, got {v}")
    return v


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def _recording_dry_run() -> bool:
    """True inside ``record_launches(execute=False)`` (the compile gate): launches are recorded, not run.
    (Asked only for ``impl='triton'`` once triton imports, so the kernel module may load here.)"""
    from .ops.context_cluster import dry_run
    return dry_run()


def _check_map(t: Tensor, name: str):
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W] (rank 4), got rank {t.dim()} with shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def _is_fake(t: Tensor) -> bool:
    """A FakeTensor (``FakeTensorMode``, shape propagation): it has no value to look at."""
    from torch._subclasses.fake_tensor import is_fake
    return is_fake(t)


def _check_scalar(t: Tensor, name: str, like: Tensor):
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a one-element tensor, got {type(t).__name__} {t!r}")
    if t.numel() != 1:
        raise ValueError(f"{name} must be a one-element tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float32/float16/bfloat16/float64), got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x is on {like.device}")
    # A host-side look at the value, only where it costs no device sync: on CUDA the fused kernels make
    # the output NaN instead when alpha or beta is not finite (so does the torch math on other paths). Meta
    # tensors have no value to look at (shape-only tracing, deferred initialisation).
    if (t.device.type not in ("cuda", "meta") and not torch.compiler.is_compiling() and not _is_fake(t)
            and not bool(torch.isfinite(t.detach()).all())):
        raise ValueError(f"{name} must be finite, got {t.detach().cpu().item()}")


def check_inputs(x: Tensor, value: Tensor | None, alpha: Tensor, beta: Tensor, heads: int, proposal: IntPair,
                 fold: IntPair):
    """Validate the op's arguments; returns ``(heads, proposal, fold)`` as an int and two int pairs."""
    _check_map(x, "x")
    heads = _int(heads, "heads")
    if heads < 1:
        raise ValueError(f"heads must be positive, got {heads}")
    proposal, fold = pair(proposal, "proposal"), pair(fold, "fold")
    B, C, H, W = x.shape
    if C == 0:
        raise ValueError(f"x has no channels (shape {tuple(x.shape)}): the similarity needs at least one per head")
    if C % heads:
        raise ValueError(f"x has {C} channels, not divisible by heads={heads}")
    if H % fold[0] or W % fold[1]:
        raise ValueError(f"feature map {H}x{W} is not divisible by fold {fold[0]}x{fold[1]} "
                         f"(pad the input so that every stage's map divides by its fold)")
    if value is not None:
        _check_map(value, "value")
        if value.shape[0] != B or value.shape[2:] != x.shape[2:]:
            raise ValueError(f"x {tuple(x.shape)} and value {tuple(value.shape)} differ in batch or spatial size")
        if value.shape[1] == 0 or value.shape[1] % heads:
            raise ValueError(f"value has {value.shape[1]} channels, not a positive multiple of heads={heads}")
        if value.device != x.device:
            raise ValueError(f"value is on {value.device} but x is on {x.device}")
        if value.dtype != x.dtype:
            raise TypeError(f"x is {x.dtype} but value is {value.dtype}: both must have the same dtype")
    _check_scalar(alpha, "alpha", x)
    _check_scalar(beta, "beta", x)
    return heads, proposal, fold


def canonical_impl(impl, name: str = "impl") -> str:
    """``impl`` as one of :data:`IMPLS` (earlier names mapped by :data:`IMPL_ALIASES`); anything else is named
    (as ``name``, the argument it came from)."""
    if not isinstance(impl, str):
        raise TypeError(f"{name} must be one of {IMPLS} (a str), got {type(impl).__name__} {impl!r}")
    impl = IMPL_ALIASES.get(impl, impl)
    if impl not in IMPLS:
        raise ValueError(f"{name} must be one of {IMPLS}, got {impl!r}")
    return impl


def check_denominator(denominator, name: str = "denominator") -> str:
    """``denominator`` if it is one of :data:`~coc_kernels.reference.DENOMINATORS`; anything else is named (as
    ``name``, the argument it came from)."""
    if not isinstance(denominator, str) or denominator not in DENOMINATORS:
        raise ValueError(f"{name} must be one of {DENOMINATORS}, got {denominator!r}")
    return denominator


def _image_elements(*ts) -> int:
    """Elements of one image (``C x H x W``) of the largest of the ``[B, C, H, W]`` tensors given."""
    return max(t.shape[1] * t.shape[2] * t.shape[3] for t in ts if t is not None)


def resolve_impl(impl: str, x: Tensor, centres: int | None = None, value: Tensor | None = None) -> str:
    """The implementation ``impl`` means for input x (and value) with ``centres`` per region (``'auto'``
    resolved: the fused path where it can run, else light); raises where it cannot run."""
    impl = canonical_impl(impl)
    fits = centres is None or centres <= MAX_FUSED_CENTRES
    small = _image_elements(x, value) <= MAX_FUSED_IMAGE_ELEMENTS
    if impl == "auto":
        return ("triton" if x.is_cuda and x.dtype != torch.float64 and fits and small and triton_available()
                else "light")
    if impl == "triton" and not fits:
        raise ValueError(f"impl='triton' takes at most {MAX_FUSED_CENTRES} centres per region, got {centres}; "
                         "use impl='light' (or 'auto', which picks it) for more")
    if impl == "triton" and not small:
        raise ValueError(f"impl='triton' takes images of at most {MAX_FUSED_IMAGE_ELEMENTS} elements (C x H x W: "
                         f"its kernels use 32-bit offsets), got {_image_elements(x, value)}; use impl='light' "
                         "(or 'auto', which picks it)")
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' needs triton, which does not import here")
        if not x.is_cuda and not triton_interpreting() and not _recording_dry_run():
            raise RuntimeError(f"impl='triton' got {x.device.type} tensors: the Triton kernels run on CUDA "
                               "devices, or on the CPU only under TRITON_INTERPRET=1 (set before importing triton)")
        if x.dtype == torch.float64 and x.is_cuda:
            raise TypeError("impl='triton' takes float64 only under TRITON_INTERPRET=1 (tests); on CUDA use "
                            "fp32/fp16/bf16, or impl='light' for float64")
    return impl


def _shapes_only(*ts: Tensor) -> bool:
    """True for fake tensors (``FakeTensorMode``, ``make_fx``) or symbolic sizes: nothing to launch kernels on;
    the custom ops' fake implementations give the shapes."""
    return any(_is_fake(t) or not all(isinstance(n, int) for n in t.shape) for t in ts)


def _transformed(*ts: Tensor) -> bool:
    """True when a ``torch.func`` transform (grad, vmap, jvp, ...) wraps an input, or an input carries a
    forward-mode tangent: the fused kernels have a backward only, so the op computes with the torch math."""
    from torch._C._functorch import is_functorch_wrapped_tensor
    from torch.autograd.forward_ad import unpack_dual
    return any(is_functorch_wrapped_tensor(t) or unpack_dual(t).tangent is not None for t in ts)


def _empty_result(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """The op's output for an empty batch or map (B, H or W zero): ``value``'s shape and dtype, zero, and
    connected to every input so that backward gives (empty / zero) gradients like a non-empty call."""
    acc = compute_dtype(x.dtype)
    link = (x.to(acc).sum() + alpha.to(acc).sum() + beta.to(acc).sum()) * 0.0
    return (value.to(acc) * 0.0 + link).to(value.dtype)


def context_cluster(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor, *, heads: int, proposal: IntPair,
                    fold: IntPair, impl: str = "auto", denominator: str = DEFAULT_DENOMINATOR) -> Tensor:
    """Context Cluster mixer (without the 1x1 convs): cluster, aggregate, dispatch.

    Args:
        x: similarity features ``[B, heads*d, H, W]``.
        value: values ``[B, heads*dv, H, W]``.
        alpha, beta: one-element tensors of any shape (learnable): ``s = sigmoid(beta + alpha * cos)``.
        heads: number of heads the channels are split into.
        proposal: centres per region, int or ``(ph, pw)`` (``M = ph*pw``).
        fold: regions per axis, int or ``(fh, fw)``; H and W must divide by it.
        impl: ``"triton"`` (fused kernels, at most :data:`MAX_FUSED_CENTRES` centres per region),
            ``"light"`` (memory-light torch; ``"reference"`` is its earlier name), ``"dense"`` (the original's
            dense formulation, the oracle), ``"auto"`` (triton for CUDA tensors of fp32/fp16/bf16 when triton
            imports and the centres fit, else light).
        denominator: ``"similarity"`` (paper Eq. 1, the public code and ImageNet checkpoints today) or
            ``"count"`` (the code before 2023-05-31: the paper's COCO / ADE20K models).

    Returns:
        ``[B, heads*dv, H, W]`` in the inputs' dtype. Every path computes in fp32 (fp64 for fp64 inputs),
        also under autocast. A group (image, head, region) with a non-finite value in x is NaN in all its
        outputs; one in channel c of value makes channel c of the group NaN (as the original computes).
        Empty inputs (B, H or W zero) give an empty output with zero gradients. Under ``torch.func``
        transforms or forward-mode AD, ``"triton"`` computes with the reference math (its kernels have
        no forward-mode derivative). Inside ``torch.onnx.export`` every ``impl`` records
        :func:`~coc_kernels.reference.context_cluster_export` (standard ONNX ops, symbolic H and W).
    """
    if value is None:  # check_inputs takes None for the assignment alone (and names any other non-tensor)
        raise TypeError("value must be a torch.Tensor [B, heads*dv, H, W], got NoneType "
                        "(cluster_assignment takes x alone)")
    heads, proposal, fold = check_inputs(x, value, alpha, beta, heads, proposal, fold)
    check_denominator(denominator)
    kw = dict(heads=heads, proposal=proposal, fold=fold, denominator=denominator)
    if torch.onnx.is_in_onnx_export():  # standard ops whatever impl says (see context_cluster_export)
        return torch_math(context_cluster_export, x, value, alpha.reshape(1), beta.reshape(1), **kw)
    impl = resolve_impl(impl, x, proposal[0] * proposal[1], value)
    alpha, beta = alpha.reshape(1), beta.reshape(1)  # any one-element shape, the same on every path
    if x.numel() == 0 or value.numel() == 0:
        return _empty_result(x, value, alpha, beta)
    if impl == "dense":
        return torch_math(context_cluster_dense, x, value, alpha, beta, **kw)
    if impl == "light":
        return torch_math(context_cluster_light, x, value, alpha, beta, **kw)
    from .ops.context_cluster import ClusterFunction, cluster_fwd
    args = (x, value, alpha, beta, heads, proposal[0], proposal[1], fold[0], fold[1], denominator == "count")
    if torch.compiler.is_compiling() or _shapes_only(x, value):  # the custom op: one node, a fake implementation
        return cluster_fwd(*args)[0]
    if _transformed(x, value, alpha, beta):
        return torch_math(context_cluster_light, x, value, alpha, beta, **kw)
    return ClusterFunction.apply(*args)  # eager: the same kernels without the custom-op dispatch cost


@torch.library.custom_op("coc_kernels::context_cluster", mutates_args=())
def context_cluster_op(x: Tensor, value: Tensor, alpha: Tensor, beta: Tensor, heads: int, proposal: List[int],
                       fold: List[int], impl: str, denominator: str) -> Tensor:
    """:func:`context_cluster` as one torch operator, ``torch.ops.coc_kernels.context_cluster`` (positional
    arguments; ``proposal`` and ``fold`` as ``[h, w]`` lists). It is what a graph records where Python cannot
    run: a ``torch.jit.script`` model, a ``torch.fx`` symbolic trace, a ``torch.jit.trace`` (the backbone's
    mixers call it there). The same checks and paths as :func:`context_cluster`; its backward recomputes the
    forward with autograd (one more forward per call), so prefer the eager model for training."""
    return context_cluster(x, value, alpha, beta, heads=heads, proposal=proposal, fold=fold, impl=impl,
                           denominator=denominator)


@context_cluster_op.register_fake
def _context_cluster_op_fake(x, value, alpha, beta, heads, proposal, fold, impl, denominator):
    return value.new_empty(value.shape)


def _context_cluster_op_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.settings = inputs[4:]


def _context_cluster_op_backward(ctx, dy):
    heads, proposal, fold, impl, denominator = ctx.settings
    needs = ctx.needs_input_grad[:4]
    create_graph = torch.is_grad_enabled()  # backward(create_graph=True): gradients with a graph
    with torch.enable_grad():
        ins = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
        y = context_cluster(*ins, heads=heads, proposal=proposal, fold=fold, impl=impl, denominator=denominator)
        grads = input_grads(y, ins, needs, dy, create_graph)
    return (*grads, None, None, None, None, None)


context_cluster_op.register_autograd(_context_cluster_op_backward, setup_context=_context_cluster_op_setup)


def cluster_assignment(x: Tensor, alpha: Tensor, beta: Tensor, *, heads: int, proposal: IntPair, fold: IntPair,
                       impl: str = "auto") -> Tensor:
    """Index of the centre every pixel is assigned to, per head: ``[B, heads, H, W]`` int64.

    Centre ``m = i*pw + j`` is the (i, j)-th adaptive-pool window of the pixel's region. Runs only the
    pooling and the assignment (no aggregate/dispatch), without autograd. ``impl='dense'`` takes the argmax
    of the original's dense ``[G, M, N]`` similarity (the oracle), ``'light'`` the light path's.
    """
    heads, proposal, fold = check_inputs(x, None, alpha, beta, heads, proposal, fold)
    impl = resolve_impl(impl, x, proposal[0] * proposal[1])
    alpha, beta = alpha.reshape(1), beta.reshape(1)
    B, _, H, W = x.shape
    if x.numel() == 0:
        return torch.empty(B, heads, H, W, dtype=torch.int64, device=x.device)
    if impl == "triton" and _shapes_only(x):  # fake or symbolic: the light path's ops give the shapes
        impl = "light"
    if impl in ("light", "dense"):
        acc = compute_dtype(x.dtype)
        fn = cluster_assignment_dense if impl == "dense" else cluster_assignment_light
        with torch.autocast(x.device.type, enabled=False), torch.no_grad():
            return fn(x.to(acc), alpha.to(acc), beta.to(acc), heads=heads, proposal=proposal, fold=fold)
    from .ops.context_cluster import tuned_assignment as assignment
    (ph, pw), (fh, fw) = proposal, fold
    with torch.no_grad():
        a, _ = assignment(x, alpha, beta, heads, ph, pw, fh, fw)
    return group_map(a.long(), B, heads, (fh, fw), (H // fh, W // fw))


__all__ = ["context_cluster", "context_cluster_op", "cluster_assignment", "torch_math", "check_inputs", "resolve_impl",
           "check_denominator", "pair", "triton_available", "IMPLS", "IMPL_ALIASES", "MAX_FUSED_CENTRES"]
