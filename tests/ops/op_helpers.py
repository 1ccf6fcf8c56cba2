"""Inputs and the dense comparison shared by the op's tests."""
import torch

from coc_kernels import context_cluster
from conftest import DEVICE


def make(B, heads, d, dv, H, W, alpha=1.0, beta=0.0, dtype=torch.float32, device=DEVICE):
    x = torch.randn(B, heads * d, H, W, dtype=dtype).to(device)
    v = torch.randn(B, heads * dv, H, W, dtype=dtype).to(device)
    return x, v, torch.tensor([alpha], dtype=dtype, device=device), torch.tensor([beta], dtype=dtype, device=device)


def fwd_bwd(impl, x, v, a, b, dy=None, **kw):
    ins = [t.detach().clone().requires_grad_(True) for t in (x, v, a, b)]
    y = context_cluster(*ins, impl=impl, **kw)
    if dy is None:
        dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, ins, dy)
    return y, grads, dy


def assert_matches_dense(impl, x, v, a, b, rtol=1e-5, atol=1e-5, **kw):
    y_ref, g_ref, dy = fwd_bwd("dense", x, v, a, b, **kw)
    y, g, _ = fwd_bwd(impl, x, v, a, b, dy=dy, **kw)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    for name, got, ref in zip(("dx", "dvalue", "dalpha", "dbeta"), g, g_ref):
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
