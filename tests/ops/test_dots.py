"""The split dots (fp32 operands as three bf16 pieces on tensor cores) against float64 products, in the
interpreter."""
import pytest
import torch
import triton
import triton.language as tl

from coc_kernels.ops.context_cluster.dots import dot_dense, dot_exact, dot_exact_left, split3
from conftest import DEVICE


@triton.jit
def _split_probe(x_ptr, hi_ptr, mid_ptr, lo_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    hi, mid, lo = split3(tl.load(x_ptr + offs))
    tl.store(hi_ptr + offs, hi)
    tl.store(mid_ptr + offs, mid)
    tl.store(lo_ptr + offs, lo)


@triton.jit
def _dots_probe(a_ptr, b_ptr, e_ptr, dense_ptr, exact_ptr, left_ptr, M: tl.constexpr, K: tl.constexpr,
                N: tl.constexpr, PREC: tl.constexpr):
    om, ok, on = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    a = tl.load(a_ptr + om[:, None] * K + ok[None, :])
    b = tl.load(b_ptr + ok[:, None] * N + on[None, :])
    e = tl.load(e_ptr + ok[:, None] * N + on[None, :])
    a_hi, a_mid, a_lo = split3(a)
    tl.store(dense_ptr + om[:, None] * N + on[None, :], dot_dense(a_hi, a_mid, a_lo, b, PREC, tl.float32))
    acc = tl.zeros((M, N), dtype=tl.float32)
    tl.store(exact_ptr + om[:, None] * N + on[None, :], dot_exact(a, e, acc, PREC, tl.float32))
    acc_t = tl.zeros((N, M), dtype=tl.float32)  # (a @ e)^T = e^T @ a^T, the exact operand on the left
    tl.store(left_ptr + on[:, None] * M + om[None, :],
             dot_exact_left(tl.trans(e), tl.trans(a), acc_t, PREC, tl.float32))


@pytest.mark.skipif(DEVICE == "cuda", reason="the probes run in the interpreter")
def test_split3_pieces_are_bf16_and_sum_exactly():
    """The split dots' premise: every fp32 value is hi + mid + lo exactly, each a bf16 number, so products with
    bf16-exact (one-hot, membership) operands on bf16 tensor cores lose nothing; NaN and inf stay non-finite."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, generator=g) * torch.exp2(torch.randint(-60, 60, (1024,), generator=g).float())
    x[:8] = torch.tensor([0.0, -0.0, 1.0, 3.4e38, -3.4e38, 1e-38, float("nan"), float("inf")])
    hi, mid, lo = (torch.empty_like(x) for _ in range(3))
    _split_probe[(1,)](x, hi, mid, lo, N=1024)
    normal = torch.isfinite(x) & ((x.abs() >= 2.0 ** -110) | (x == 0))  # every piece a normal fp32 number
    assert normal.sum() > 1000 and not normal[5]
    for piece in (hi, mid, lo):
        assert torch.equal(piece[normal], piece[normal].bfloat16().float())
    total = (hi.double() + mid.double()) + lo.double()  # exact in float64
    assert torch.equal(total[normal].float(), x[normal])
    # below 2**-110 the last piece is subnormal: what bf16 keeps of it is within 2**-133
    as_bf16 = (hi.bfloat16().double() + mid.bfloat16().double()) + lo.bfloat16().double()
    assert (as_bf16[5] - x[5].double()).abs() < 2.0 ** -133
    assert not torch.isfinite(total[6:8]).any()


@pytest.mark.skipif(DEVICE == "cuda", reason="the probes run in the interpreter")
def test_split_dots_keep_fp32_accuracy():
    """``dot_exact`` (dense @ a 0/1 matrix), ``dot_exact_left`` (the 0/1 matrix on the left) and ``dot_dense``
    (dense @ dense, six bf16 products) against float64: within a few fp32 roundings, where one bf16 product would
    be off by ~1e-3 and dropping the last piece by ~1e-5 (relative)."""
    g = torch.Generator().manual_seed(1)
    M, K, N = 16, 32, 16
    a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
    e = (torch.rand(K, N, generator=g) < 0.3).float()
    dense, exact, left = torch.empty(M, N), torch.empty(M, N), torch.empty(N, M)
    _dots_probe[(1,)](a, b, e, dense, exact, left, M=M, K=K, N=N, PREC="split")
    scale = a.abs().double() @ b.abs().double()  # the size of the sum's terms
    err_dense = ((dense.double() - a.double() @ b.double()).abs() / scale).max().item()
    err_exact = ((exact.double() - a.double() @ e.double()).abs() / (a.abs().double() @ e.double()).clamp_min(
        1e-30)).max().item()
    err_left = ((left.double().T - a.double() @ e.double()).abs() / (a.abs().double() @ e.double()).clamp_min(
        1e-30)).max().item()
    eps = torch.finfo(torch.float32).eps
    assert err_dense < 8 * eps and err_exact < 8 * eps and err_left < 8 * eps, (err_dense, err_exact, err_left)


@triton.jit
def _dense_pieces_probe(a_ptr, b_ptr, out_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
                        PIECES: tl.constexpr):
    om, ok, on = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
    a_hi, a_mid, a_lo = split3(tl.load(a_ptr + om[:, None] * K + ok[None, :]))
    b = tl.load(b_ptr + ok[:, None] * N + on[None, :])
    tl.store(out_ptr + om[:, None] * N + on[None, :], dot_dense(a_hi, a_mid, a_lo, b, "split", tl.float32, PIECES))


@pytest.mark.skipif(DEVICE == "cuda", reason="the probes run in the interpreter")
@pytest.mark.parametrize("dtype,pieces", [(torch.bfloat16, 1), (torch.float16, 2), (torch.float32, 3)])
def test_dot_dense_with_the_pieces_of_a_narrow_right_operand(dtype, pieces):
    """``dot_dense(..., PIECES)`` with b's values of a type that needs PIECES pieces (the assign kernel's raw bf16
    x tile) against float64: the products it keeps (3 / 5 / 6) are those above 2**-24, so it stays within a few
    fp32 roundings; leaving out one of them (lo.hi, 2**-16) would not."""
    g = torch.Generator().manual_seed(3)
    M, K, N = 16, 32, 16
    a = torch.randn(M, K, generator=g)
    b = torch.randn(K, N, generator=g).to(dtype).float()
    out = torch.empty(M, N)
    _dense_pieces_probe[(1,)](a, b, out, M=M, K=K, N=N, PIECES=pieces)
    want = a.double() @ b.double()
    err = ((out.double() - want).abs() / (a.abs().double() @ b.abs().double())).max().item()
    assert err < 8 * torch.finfo(torch.float32).eps, err


def _nonzero_pieces(values: torch.Tensor) -> int:
    """How many of the split3 pieces (in torch: the fp32 value's leading 8 bits, the next 8, the rest) are non-zero
    for some of the values."""
    def head(t):
        return (t.view(torch.int32) & -65536).view(torch.float32)
    hi = head(values)
    mid = head(values - hi)
    lo = values - hi - mid
    return 1 + int(bool(mid.any() or lo.any())) + int(bool(lo.any()))


@pytest.mark.parametrize("dtype,pieces", [(torch.bfloat16, 1), (torch.float16, 2), (torch.float32, 3)])
def test_the_pool_launch_takes_the_pieces_its_inputs_need(dtype, pieces):
    """The pool kernel's dots multiply only the first PIECES bf16 pieces of x and the value (of one dtype; the rest
    would be zeros for a narrow type), and the assign kernel's similarity takes the raw x tile where PIECES is 1:
    every finite value of bf16 and fp16 (all bit patterns; fp32: random ones over its exponents) has no non-zero
    piece past that count, and needs all of them; the recorded launches pass it."""
    if dtype == torch.float32:
        g = torch.Generator().manual_seed(2)
        values = torch.randn(4096, generator=g) * torch.exp2(torch.randint(-100, 100, (4096,), generator=g).float())
    else:
        values = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype).float()
    values = values[torch.isfinite(values)]
    assert _nonzero_pieces(values) == pieces
    from coc_kernels import context_cluster
    from coc_kernels.ops import context_cluster as ops
    x = torch.randn(1, 4, 8, 8).to(dtype)
    with ops.record_launches(execute=False) as rec:
        context_cluster(x, x, torch.ones(1), torch.zeros(1), heads=1, proposal=2, fold=1, impl="triton")
    pool, assign = rec[0], rec[1]
    assert pool.kernel.__name__ == "_pool_kernel" and assign.kernel.__name__ == "_assign_kernel"
    assert pool.constexprs["PIECES"] == pieces
    assert assign.constexprs["PIECES"] == pieces  # its similarity dot takes the raw x tile's pieces (bf16)
