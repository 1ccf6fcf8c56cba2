"""The fused Context Cluster op: Triton kernels, their launch configuration, host functions and autograd.

A *group* g is one (image, head, region); its N = rh*rw points are the region's pixels, addressed in the
``[B, C, H, W]`` tensors, which the op makes contiguous (a no-op for the 1x1 convs' outputs): the W stride is the
compile-time 1. A group's rows are split into ``NC`` *chunks* of ``RPC`` rows; every kernel runs on a
``(G, NC)`` grid, so a stage with few groups (stage 4: 16) still fills the GPU. Per-group quantities (centres,
cluster aggregates, their gradients) are sums over chunks: each program writes its chunk's partial sum, and
the next kernel adds the ``NC`` partials in a fixed order. No float atomics anywhere: results are bitwise
reproducible for a given shape and launch configuration (tuning off: the shipped ones, the same on every GPU).

Tiles are ``[channels, BR x BW points]``: BR rows of BW consecutive columns of the region (BW a power of two with
few masked columns: 16 for the detection models' 42-wide regions), points along the fast axis, so a warp's lanes run
along W; the image and region widths are passed as multiples of a vector width VEC (constexpr), which lets the
compiler emit 8- or 16-byte accesses. Each tile loop is software-pipelined (``tl.range(..., num_stages=STAGES)``:
the next tile's loads go out as ``cp.async``), and the tile's rows and columns advance as carried counters. The pool
kernel loads its window-membership tile beside the data tile from a 0/1 table made once per region geometry
(``membership.py``, shared by every group; its address from the tile's position alone); the adjoint kernels test
membership with multiplications (no integer division per point). Scatters over the assignment (cluster sums, their
gradients) and into the pooling windows are dot products with one-hot / window-membership tiles, and the
similarities a dot of centres and points; all run on tensor cores at fp32 accuracy (the "split" precision): the fp32
operand is cut into three bf16 pieces that sum to it exactly, the 0/1 operand is exact in bf16, so three bf16
products with fp32 accumulation lose nothing but the order of the sums (``dots.dot_exact``); the dense-by-dense
similarity takes the six products above 2**-24 (``dots.dot_dense``); a bf16 x is one piece already, so its
similarity is ``c_hat`` (three pieces) times the raw x tile, three products, scaled by ``1/|x|`` per point. Operands
converted from bf16 / fp16 take only their 1 / 2 pieces (``dots.pieces``). TF32 (10 bits) would flip assignments against
the fp32 reference; FMA dots ("ieee", still selectable, and what fp64 inputs take) cost ~1,000-2,400 FMAs per point.
Window weights ``1/|window|`` are applied once per window after the sums. Gathers (``o[a_n]``, ``dU[a_n]``,
``c_hat[a_n]``, and the pooling adjoints) are loads from a tiny per-program copy of the group state that stays in
L1/L2. A point lies in at most 2x2 windows, the same set for every point of a cell of a fixed grid: each program
first sums the windows' rows per cell (``tiles.adjoint_table``), so a point's adjoint is one gather, not four.

Forward, 3 launches:
  1. ``_pool_kernel``: partial window sums of x for the centres ``c`` (adaptive-avg-pool windows) and of the
     value, ``vc`` (one window-membership tile for both);
  2. ``_assign_kernel``: ``c = sum of partials``; ``s = sigmoid(beta + alpha <c_hat, x_hat>)``,
     ``a = argmax_m s`` (first index on ties), ``sigma = max_m s``; partial sums of
     ``U = sum_n onehot*sigma v_n``, added to the pool kernel's ``vc``, and of the denominator;
  3. ``_dispatch_kernel``: ``o = (U + vc) / (den + 1)``, ``y_n = sigma_n * o[a_n]``.
Backward, 3 launches:
  1. ``_bwd_do_kernel``: partial ``do_m = sum_{a_n=m} sigma_n dy_n``;
  2. ``_bwd_main_kernel``: dv (complete), partial dalpha/dbeta, the direct part of dx, partial ``d c_hat``;
  3. ``_bwd_pool_kernel``: ``dc`` through the normalisation, its pooling adjoint added to dx; the
     dalpha/dbeta partials summed in a fixed order.
Saved for backward: ``a [G, N]`` int32, ``sigma [G, N]``, ``c [G, M, d]``, ``o [G, M, dv]``,
``den [G, M]``: O(G (N + M d)), never a ``[G, M, N]`` tensor.

Files, by job: ``tiles.py`` (tile and window helpers) and ``dots.py`` (the split dots), inlined into the kernels of
``fwd.py`` and ``bwd.py``; ``membership.py`` (the pool kernel's window table, made and cached per geometry);
``config.py`` (the launch policy and the one table of per-kernel settings, :data:`~.config.KERNEL_CONFIGS`);
``launch.py`` (keyword launches, recording, buffers); ``geometry.py`` (a shape's groups, chunks and configurations);
``choices.py`` (the configurations chosen per shape class: keys, cache and pinned files, the lookup) and
``tuning.py`` (the tuner: candidates timed and checked on the user's GPU, rank 0's broadcast, the forward and
assignment entry points that tune first); ``host.py`` (forward, backward, assignment); ``autograd.py``
(:class:`ClusterFunction` and the custom ops). The torch reference paths are ``coc_kernels.reference``.
"""
from __future__ import annotations

from .autograd import ClusterFunction, cluster_bwd, cluster_fwd
from .config import (CENTRE_CLASSES, CHUNKING, DOT_PRECISIONS, KERNEL_CONFIGS, KERNELS, MAX_CHUNKS, ChunkConfig,
                     KernelConfig, LaunchPolicy, chunking, kernel_config, launch_policy, policy, tile_width,
                     vector_width)
from .geometry import Geometry, chunk_tiles, clear_geometries, geometry, points_per_tile
from .host import assignment, fused_backward, fused_forward
from .launch import Launch, dry_run, kernel_params, launch, record_launches
from .tuning import tune, tuned_assignment, tuned_forward

__all__ = ["ClusterFunction", "cluster_fwd", "cluster_bwd", "CENTRE_CLASSES", "CHUNKING", "DOT_PRECISIONS",
           "KERNEL_CONFIGS", "KERNELS", "MAX_CHUNKS", "ChunkConfig", "KernelConfig", "LaunchPolicy", "chunking",
           "kernel_config", "launch_policy", "policy", "tile_width", "vector_width", "Geometry", "clear_geometries",
           "geometry", "points_per_tile", "chunk_tiles", "assignment", "fused_backward", "fused_forward", "Launch",
           "dry_run", "kernel_params", "launch", "record_launches", "tune", "tuned_assignment", "tuned_forward"]
