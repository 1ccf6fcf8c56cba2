"""Torch paths of the Context Cluster mixer.

Two implementations of the same math (see ``shared/DESIGN.md`` and the public CoC code):

* :func:`context_cluster_dense` - a faithful restatement of the original ``Cluster.forward`` (minus the
  1x1 convs): dense ``[G, M, N]`` similarity, a one-hot mask, ``[G, M, N, d]`` products for the
  aggregate and dispatch steps. It is the oracle the other paths are tested against.
* :func:`context_cluster_light` - the same result without any ``[G, M, N, d]`` temporary: the hard
  assignment is found under ``no_grad`` and only ``sigma_n = s[a_n, n]`` is rebuilt with autograd, so
  what autograd saves is O(G * N * d). This is what CPU users get by default.

Shapes: ``x [B, heads*d, H, W]``, ``value [B, heads*dv, H, W]``, ``alpha``/``beta`` one-element tensors.
Every ``fh x fw`` grid cell ("region", ``rh x rw`` pixels) of every head of every image is one group;
``G = B * heads * fh * fw`` and ``N = rh * rw``, ``M = ph * pw`` centres per group.

``denominator`` selects the normaliser of the aggregate step ``o_m = (U_m + vc_m) / (D_m + 1)``:
``"count"`` (``D_m`` = number of points assigned to centre m: what the released code and all its
checkpoints use, ``mask.sum``) or ``"similarity"`` (``D_m = sum of sigma_n`` over those points: the
paper's Eq. 1, which the authors' code comment calls the intended form).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

EPS = 1e-12  # F.normalize's eps
DENOMINATORS = ("count", "similarity")


def pool_windows(size: int, out: int) -> list[tuple[int, int]]:
    """``adaptive_avg_pool`` windows along one axis: ``[(start, end), ...]`` (end exclusive)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def pooling_matrix(rh: int, rw: int, ph: int, pw: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``P [M, N]`` with ``P @ points == adaptive_avg_pool2d`` of a ``rh x rw`` region (row-major points)."""
    P = torch.zeros(ph, pw, rh, rw, dtype=dtype, device=device)
    for i, (r0, r1) in enumerate(pool_windows(rh, ph)):
        for j, (c0, c1) in enumerate(pool_windows(rw, pw)):
            P[i, j, r0:r1, c0:c1] = 1.0 / ((r1 - r0) * (c1 - c0))
    return P.reshape(ph * pw, rh * rw)


def to_groups(t: torch.Tensor, heads: int, fold: Tuple[int, int]) -> torch.Tensor:
    """``[B, heads*c, H, W] -> [G, c, rh, rw]`` with ``G = B*heads*fh*fw`` (group order b, head, i, j)."""
    B, C, H, W = t.shape
    fh, fw = fold
    c = C // heads
    t = t.reshape(B, heads, c, fh, H // fh, fw, W // fw)
    return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(B * heads * fh * fw, c, H // fh, W // fw)


def from_groups(t: torch.Tensor, B: int, heads: int, fold: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_groups`: ``[G, c, rh, rw] -> [B, heads*c, fh*rh, fw*rw]``."""
    G, c, rh, rw = t.shape
    fh, fw = fold
    t = t.reshape(B, heads, fh, fw, c, rh, rw).permute(0, 1, 4, 2, 5, 3, 6)
    return t.reshape(B, heads * c, fh * rh, fw * rw)


def context_cluster_dense(x, value, alpha, beta, *, heads: int, proposal, fold, denominator="count"):
    """The original mixer body, restated: dense similarity, one-hot mask, ``[G, M, N, d]`` products."""
    B = x.shape[0]
    xg = to_groups(x, heads, fold)  # [G, d, rh, rw]
    vg = to_groups(value, heads, fold)  # [G, dv, rh, rw]
    G, d, rh, rw = xg.shape
    centres = F.adaptive_avg_pool2d(xg, proposal)  # [G, d, ph, pw]
    vcentres = F.adaptive_avg_pool2d(vg, proposal).flatten(2).transpose(1, 2)  # [G, M, dv]
    c_hat = F.normalize(centres.flatten(2).transpose(1, 2), dim=-1)  # [G, M, d]
    x_hat = F.normalize(xg.flatten(2).transpose(1, 2), dim=-1)  # [G, N, d]
    sim = torch.sigmoid(beta + alpha * torch.matmul(c_hat, x_hat.transpose(-2, -1)))  # [G, M, N]
    _, idx = sim.max(dim=1, keepdim=True)
    mask = torch.zeros_like(sim)
    mask.scatter_(1, idx, 1.0)
    sim = sim * mask
    v2 = vg.flatten(2).transpose(1, 2)  # [G, N, dv]
    den = mask.sum(dim=-1, keepdim=True) if denominator == "count" else sim.sum(dim=-1, keepdim=True)
    out = ((v2.unsqueeze(1) * sim.unsqueeze(-1)).sum(dim=2) + vcentres) / (den + 1.0)  # [G, M, dv]
    out = (out.unsqueeze(2) * sim.unsqueeze(-1)).sum(dim=1)  # [G, N, dv]
    out = out.transpose(1, 2).reshape(G, -1, rh, rw)
    return from_groups(out, B, heads, fold)


def _group_points(x, heads, fold):
    """``[B, heads*c, H, W] -> ([G, N, c], [G, c, rh, rw])``."""
    g = to_groups(x, heads, fold)
    return g.flatten(2).transpose(1, 2), g


def assign_light(x, alpha, beta, *, heads: int, proposal, fold):
    """Hard assignment without ``[G, M, N, d]`` temporaries.

    Returns ``a [G, N]`` (int64, first index on ties of the sigmoid), ``c_hat [G, M, d]``,
    ``x_hat [G, N, d]`` (both differentiable), and ``cos [G, N]`` of each point with its centre.
    """
    xp, xg = _group_points(x, heads, fold)
    c_hat = F.normalize(F.adaptive_avg_pool2d(xg, proposal).flatten(2).transpose(1, 2), dim=-1)
    x_hat = F.normalize(xp, dim=-1)
    with torch.no_grad():
        s = torch.sigmoid(beta + alpha * torch.bmm(c_hat, x_hat.transpose(1, 2)))  # [G, M, N]
        a = s.argmax(dim=1)  # first index of the maximum
        del s
    c_sel = torch.gather(c_hat, 1, a.unsqueeze(-1).expand(-1, -1, c_hat.shape[-1]))  # [G, N, d]
    cos = (c_sel * x_hat).sum(-1)
    return a, c_hat, x_hat, cos


def context_cluster_light(x, value, alpha, beta, *, heads: int, proposal, fold, denominator="count"):
    """Memory-light torch path: same output and gradients as :func:`context_cluster_dense`."""
    B = x.shape[0]
    ph, pw = proposal
    M = ph * pw
    a, _, _, cos = assign_light(x, alpha, beta, heads=heads, proposal=proposal, fold=fold)
    # sigma_n = s[a_n, n]: the same sigmoid evaluated at the chosen centre (bitwise the same value
    # as in the dense matrix up to the dot product's summation order).
    sigma = torch.sigmoid(beta + alpha * cos)  # [G, N]
    vp, vg = _group_points(value, heads, fold)  # [G, N, dv]
    G, N, dv = vp.shape
    vc = F.adaptive_avg_pool2d(vg, proposal).flatten(2).transpose(1, 2)  # [G, M, dv]
    idx = a.unsqueeze(-1).expand(-1, -1, dv)
    U = torch.zeros(G, M, dv, dtype=vp.dtype, device=vp.device).scatter_add(1, idx, sigma.unsqueeze(-1) * vp)
    if denominator == "count":
        den = torch.zeros(G, M, dtype=vp.dtype, device=vp.device).scatter_add(
            1, a, torch.ones_like(sigma, dtype=vp.dtype))
    else:
        den = torch.zeros(G, M, dtype=sigma.dtype, device=vp.device).scatter_add(1, a, sigma)
    o = (U + vc) / (den.unsqueeze(-1) + 1.0)  # [G, M, dv]
    y = sigma.unsqueeze(-1) * torch.gather(o, 1, idx)  # [G, N, dv]
    rh, rw = vg.shape[-2:]
    return from_groups(y.transpose(1, 2).reshape(G, dv, rh, rw), B, heads, fold)


def cluster_assignment_reference(x, alpha, beta, *, heads: int, proposal, fold) -> torch.Tensor:
    """Centre index of every pixel and head: ``[B, heads, H, W]`` int64 (index m = i*pw + j)."""
    B, _, H, W = x.shape
    with torch.no_grad():
        a, *_ = assign_light(x, alpha, beta, heads=heads, proposal=proposal, fold=fold)
    fh, fw = fold
    rh, rw = H // fh, W // fw
    a = a.reshape(B, heads, fh, fw, rh, rw).permute(0, 1, 2, 4, 3, 5)
    return a.reshape(B, heads, H, W)
