"""Context Cluster mixer: fused Triton kernels, torch reference paths, one public op.

``context_cluster(x, value, alpha, beta, *, heads, proposal, fold, impl="auto")`` is the op;
``cluster_assignment(...)`` returns the hard assignment maps. Triton is imported only when the
Triton path is used, so the package imports (and the torch paths run) without it.
"""
from .functional import (IMPL_ALIASES, IMPLS, canonical_impl, check_inputs, cluster_assignment, context_cluster,
                         triton_available)
from .reference import DEFAULT_DENOMINATOR, DENOMINATORS, context_cluster_dense, context_cluster_light

__all__ = ["context_cluster", "cluster_assignment", "check_inputs", "triton_available", "IMPLS", "IMPL_ALIASES",
           "canonical_impl", "DENOMINATORS", "DEFAULT_DENOMINATOR", "context_cluster_dense", "context_cluster_light"]
