"""The split dots: ``tl.dot`` at fp32 accuracy on tensor cores. An fp32 operand is cut into three bf16 pieces
that sum to it exactly (``split3``); a product with an exact 0/1 operand is then three exact bf16 products
with fp32 sums (``dot_exact``), a product of two dense operands the six above 2**-24 (``dot_dense``)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bf16_head(t):
    """The leading 8 significant bits of fp32 ``t`` (truncated: a bf16 number, never rounded up to inf). A NaN
    whose payload lies in the low bits reads inf here, but the remainder ``t - head`` is NaN, so the pieces
    still sum to NaN."""
    return (t.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def split3(t):
    """fp32 ``t = hi + mid + lo`` exactly, each piece a bf16 number (8 + 8 + 8 of the 24 significand bits;
    the differences are exact in fp32), for ``|t| >= 2**-110``; below that the last piece is subnormal and bf16
    keeps it to within ``2**-133``."""
    hi = bf16_head(t)
    rest = t - hi
    mid = bf16_head(rest)
    return hi, mid, rest - mid


@triton.jit
def pieces(dense, PIECES: tl.constexpr):
    """bf16 pieces that sum to fp32 ``dense`` exactly, the first PIECES of ``hi, mid, lo`` meaningful: all three
    (:func:`split3`) for any fp32 value; values of a narrower input type need fewer, fp16's 11 significant bits
    two (``hi, dense - hi``), bf16's 8 one (``dense``: the others would be zeros, multiplied for nothing)."""
    if PIECES == 1:
        hi, mid, lo = dense, dense, dense
    elif PIECES == 2:
        hi = bf16_head(dense)
        mid = dense - hi
        lo = mid
    else:
        hi, mid, lo = split3(dense)
    return hi, mid, lo


@triton.jit
def dot_exact(dense, exact, acc, PREC: tl.constexpr, OP: tl.constexpr, PIECES: tl.constexpr = 3):
    """``acc + dense @ exact`` for an ``exact`` whose entries are bf16 numbers (0/1 masks, one-hot): with
    ``PREC == "split"`` one tensor-core product per bf16 piece of ``dense`` (:func:`pieces`: 3 for fp32 values,
    2 / 1 for values converted from fp16 / bf16; exact products, fp32 sums: fp32 accuracy); OP is the operand type
    (bf16; fp32 under the interpreter, whose bf16 dots are wrong, on the same bf16-exact values). Otherwise one
    ``tl.dot`` at input precision PREC."""
    if PREC == "split":
        e = exact.to(OP)
        hi, mid, lo = pieces(dense, PIECES)
        acc = tl.dot(hi.to(OP), e, acc, input_precision="ieee")
        if PIECES > 1:
            acc = tl.dot(mid.to(OP), e, acc, input_precision="ieee")
        if PIECES > 2:
            acc = tl.dot(lo.to(OP), e, acc, input_precision="ieee")
    else:
        acc = tl.dot(dense, exact, acc, input_precision=PREC)
    return acc


@triton.jit
def dot_exact_left(exact, dense, acc, PREC: tl.constexpr, OP: tl.constexpr, PIECES: tl.constexpr = 3):
    """``acc + exact @ dense``: :func:`dot_exact` with the exact operand on the left."""
    if PREC == "split":
        e = exact.to(OP)
        hi, mid, lo = pieces(dense, PIECES)
        acc = tl.dot(e, hi.to(OP), acc, input_precision="ieee")
        if PIECES > 1:
            acc = tl.dot(e, mid.to(OP), acc, input_precision="ieee")
        if PIECES > 2:
            acc = tl.dot(e, lo.to(OP), acc, input_precision="ieee")
    else:
        acc = tl.dot(exact, dense, acc, input_precision=PREC)
    return acc


@triton.jit
def dot_dense(a_hi, a_mid, a_lo, b, PREC: tl.constexpr, OP: tl.constexpr, PIECES: tl.constexpr = 3):
    """``a @ b`` for dense fp32 ``a`` given as its :func:`split3` pieces (split once by the caller, e.g.
    outside a loop) and dense ``b`` whose values need PIECES bf16 pieces (:func:`pieces`): with ``PREC ==
    "split"`` the bf16 tensor-core products whose terms are above 2**-24 of the result (of hi.hi, hi.mid, mid.hi,
    hi.lo, lo.hi, mid.mid those that take an existing piece of b: 6, 5 or 3), summed smallest first; otherwise
    one ``tl.dot`` of ``a_hi`` (then the whole of a) at input precision PREC."""
    if PREC == "split":
        b_hi, b_mid, b_lo = pieces(b, PIECES)
        ah, am, al = a_hi.to(OP), a_mid.to(OP), a_lo.to(OP)
        bh = b_hi.to(OP)
        if PIECES > 1:
            bm = b_mid.to(OP)
            acc = tl.dot(am, bm, input_precision="ieee")
            acc = tl.dot(al, bh, acc, input_precision="ieee")
        else:
            acc = tl.dot(al, bh, input_precision="ieee")
        if PIECES > 2:
            acc = tl.dot(ah, b_lo.to(OP), acc, input_precision="ieee")
        acc = tl.dot(am, bh, acc, input_precision="ieee")
        if PIECES > 1:
            acc = tl.dot(ah, bm, acc, input_precision="ieee")
        acc = tl.dot(ah, bh, acc, input_precision="ieee")
    else:
        acc = tl.dot(a_hi, b, input_precision=PREC)
    return acc
