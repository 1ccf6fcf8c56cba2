"""The mixer's cost in mmengine's complexity analysis (``mmengine.analysis.get_model_complexity_info``,
``FlopAnalyzer``, and so mmdet's and mmseg's ``tools/analysis_tools/get_flops.py``).

That analysis traces the model with ``torch.jit`` and counts each recorded operator by a handle keyed by its
name; the backbone's mixers are recorded there as the one operator ``coc_kernels::context_cluster`` (see
``coc_det.backbone``), which mmengine does not know. :func:`register` adds its handle to mmengine's default
tables (what every analyzer starts from; ``import coc_det`` calls it where mmengine is installed).

Counted as mmengine counts (fvcore's convention: one multiply-add is one flop; activations and elementwise
ops are not counted, pooling counts one per input element), for ``x [B, C, H, W]``, ``value [B, Cv, H, W]``
and ``M`` centres per region, per pixel: ``C + Cv`` for pooling the centres and their values, ``C * M`` for
the similarities to the region's ``M`` centres, ``Cv`` for the aggregation and ``Cv`` for the dispatch (each
pixel goes to one centre: the op's cost, not that of the original's dense masked products, which do each
``M`` times)::

    flops = B * H * W * (C * M + C + 3 * Cv)
"""
from typing import Any, List

OP = "coc_kernels::context_cluster"


def mixer_flops(x_shape, value_shape, proposal, fold) -> int:
    """The formula above for ``x_shape = [B, C, H, W]``, ``value_shape = [B, Cv, H, W]`` and ``proposal =
    (ph, pw)`` centres per region axis (``fold`` does not change it: every region has its ``ph * pw``)."""
    B, C, H, W = x_shape
    Cv = value_shape[1]
    M = proposal[0] * proposal[1]
    return B * H * W * (C * M + C + 3 * Cv)


def _constant(value) -> Any:
    """The Python value of a traced constant argument (an int, or an int list built from constants)."""
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return [_constant(v) for v in node.inputs()]
    return value.toIValue()


def context_cluster_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """mmengine's flop handle of ``coc_kernels::context_cluster`` (inputs: x, value, alpha, beta, heads,
    proposal, fold, impl, denominator)."""
    x_shape, value_shape = inputs[0].type().sizes(), inputs[1].type().sizes()
    proposal = _constant(inputs[5])
    proposal = proposal if isinstance(proposal, (list, tuple)) else [proposal, proposal]
    return mixer_flops(x_shape, value_shape, proposal, None)


def register() -> None:
    """Add the handles to mmengine's default flop and activation tables (idempotent)."""
    from mmengine.analysis import complexity_analysis
    from mmengine.analysis.jit_handles import generic_activation_jit
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS[OP] = context_cluster_flop_jit
    complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS[OP] = generic_activation_jit()
