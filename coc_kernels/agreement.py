"""Whether two implementations of the op agree, under hard assignment.

Two fp32 summation orders can put a point whose two best centres are within rounding of each other (a near-tie)
on different sides; one flip moves a whole cluster's aggregate, so it shows in its group's outputs and in the
(alpha, beta) gradients, which sum over every group. The rule (used by ``benchmarks/check_correctness.py`` and by
the launch tuner): every point whose assignment differs must be a near-tie of the reference similarity
(``|s[a_test] - s[a_ref]| <= TIE``, in float64); maps are compared on the groups (image, head, region) where
every assignment agrees; sums over all groups only when every assignment agrees.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import from_groups, to_groups

#: largest similarity gap (float64 reference) a point whose assignment differs may have
TIE = 1e-5
#: relative error bound (see :func:`rel`) per compute dtype
TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def _pair(v) -> tuple:
    return (v, v) if isinstance(v, int) else tuple(v)


def rel(a, b, dy) -> float:
    """``|a - b| / max(|b|, 1e-3 |dy| sqrt(numel(b)/numel(dy)))``: relative, with a floor at the scale of the
    upstream gradient, so that a gradient that is ~0 compares its rounding noise with the gradients' scale."""
    floor = 1e-3 * dy.double().norm() * (b.numel() / dy.numel()) ** 0.5
    return ((a.double() - b.double()).norm() / torch.maximum(b.double().norm(), floor).clamp_min(1e-30)).item()


def tie_gap(x, alpha, beta, heads, proposal, fold, a_test, a_ref) -> float:
    """Largest ``|s[a_test] - s[a_ref]|`` (float64 reference similarity) over the points whose assignments differ
    (``a_*``: ``[B, heads, H, W]`` centre indices); 0 when none does."""
    fold = _pair(fold)
    ag, dg = to_groups(a_test, heads, fold), to_groups(a_ref, heads, fold)  # [G, 1, rh, rw]
    groups = (ag != dg).flatten(1).any(1).nonzero().flatten()
    if groups.numel() == 0:
        return 0.0
    xg = to_groups(x.detach().double(), heads, fold)[groups]  # [g, d, rh, rw]
    c_hat = F.normalize(F.adaptive_avg_pool2d(xg, proposal).flatten(2), dim=1)  # [g, d, M]
    x_hat = F.normalize(xg.flatten(2), dim=1)  # [g, d, N]
    s = torch.sigmoid(beta.detach().double() + alpha.detach().double() * torch.einsum("gdm,gdn->gmn", c_hat, x_hat))
    st = s.gather(1, ag[groups].flatten(1)[:, None].long()).squeeze(1)
    sr = s.gather(1, dg[groups].flatten(1)[:, None].long()).squeeze(1)
    return (st - sr).abs().max().item()


def agreeing_points(a_test, a_ref, heads, fold) -> tuple:
    """``(keep [B, heads, H, W] bool, flipped groups)``: the points of groups where every assignment agrees."""
    fold = _pair(fold)
    flips = to_groups(a_test != a_ref, heads, fold)  # [G, 1, rh, rw]
    flipped = flips.flatten(1).any(1)  # [G]
    keep = from_groups((~flipped)[:, None, None, None].expand_as(flips).to(torch.uint8), a_test.shape[0], heads, fold)
    return keep.bool(), int(flipped.sum().item())


def compare(outputs, references, a_test, a_ref, x, alpha, beta, *, heads, proposal, fold, dy, maps: int) -> list:
    """Problems found comparing ``outputs`` with ``references`` (lists of tensors; the first ``maps`` are
    ``[B, heads*c, H, W]`` maps judged on the agreeing groups, the rest sums over all groups, judged only when every
    assignment agrees): ``[]`` when they agree by the rule above, within :data:`TOL` of ``dy``'s dtype."""
    bad = []
    gap = tie_gap(x, alpha, beta, heads, proposal, fold, a_test, a_ref)
    if gap > TIE:
        bad.append(f"a point's assignment differs by {gap:.1e} in similarity (more than a near-tie, {TIE})")
    keep, n_flipped = agreeing_points(a_test, a_ref, heads, fold)
    tol = TOL.get(x.dtype, TOL[torch.float32])
    for k, (t, r) in enumerate(zip(outputs, references)):
        if t.shape != r.shape:
            bad.append(f"output {k}: shape {tuple(t.shape)} != {tuple(r.shape)}")
            continue
        if k < maps:
            m = keep.repeat_interleave(t.shape[1] // heads, dim=1)
            t, r = torch.where(m, t.double(), 0.0), torch.where(m, r.double(), 0.0)
        elif n_flipped:
            continue
        if not torch.isfinite(t).all():
            bad.append(f"output {k}: non-finite values")
            continue
        err = rel(t, r, dy)
        if not err <= tol:
            bad.append(f"output {k}: relative error {err:.1e} > {tol:.0e}")
    return bad
