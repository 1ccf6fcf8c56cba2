"""Context Cluster mixer: fused Triton kernels, torch reference paths, one public op.

``context_cluster(x, value, alpha, beta, *, heads, proposal, fold, impl="auto")`` is the op;
``cluster_assignment(...)`` returns the hard assignment maps; ``torch.ops.coc_kernels.context_cluster``
(:func:`context_cluster_op`) is the op as one torch operator, for TorchScript and torch.fx graphs. Triton is
imported only when the Triton path is used, so the package imports (and the torch paths run) without it.
"""
#: the version of the coc-det distribution (coc_kernels and coc_det ship together); pyproject.toml reads it here
__version__ = "0.1.0"

from .functional import (IMPL_ALIASES, IMPLS, canonical_impl, check_inputs, cluster_assignment, context_cluster,
                         context_cluster_op, triton_available)
from .reference import DEFAULT_DENOMINATOR, DENOMINATORS, context_cluster_dense, context_cluster_light

__all__ = ["__version__", "context_cluster", "context_cluster_op", "cluster_assignment", "check_inputs",
           "triton_available",
           "IMPLS", "IMPL_ALIASES", "canonical_impl", "DENOMINATORS", "DEFAULT_DENOMINATOR", "context_cluster_dense",
           "context_cluster_light"]
