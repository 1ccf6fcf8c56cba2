"""The pool kernel's window membership table (``membership.build``) against PyTorch's own adaptive average
pooling: a point lies in window (i, j) exactly where adaptive_avg_pool2d of an image that is 1 at that point alone
gives window (i, j) a non-zero mean. Both layouts, padding columns and centre slots 0, the table's size limit."""
import pytest
import torch
import torch.nn.functional as F

from coc_kernels.ops.context_cluster import membership


def _torch_membership(rh, rw, ph, pw):
    """``[rh, rw, ph * pw]`` bool from adaptive_avg_pool2d of the rh * rw one-point images."""
    eye = torch.eye(rh * rw, dtype=torch.float64).reshape(rh * rw, 1, rh, rw)
    return (F.adaptive_avg_pool2d(eye, (ph, pw)) > 0).reshape(rh, rw, ph * pw)


@pytest.mark.parametrize("rh,rw,ph,pw,block_m,bw", [
    (7, 7, 7, 7, 64, 16),  # ImageNet stage 1: one point per window
    (25, 42, 5, 5, 32, 16),  # small stage 1 at 800x1344, fold 8: uneven windows
    (5, 7, 3, 3, 16, 8),  # overlapping windows (adaptive pooling of 5 into 3)
    (2, 2, 3, 3, 16, 16),  # more windows than points: each point in several
    (13, 3, 2, 4, 16, 8),  # fewer columns than a tile's width
])
@pytest.mark.parametrize("left", [False, True])
def test_table_matches_adaptive_avg_pool(rh, rw, ph, pw, block_m, bw, left):
    mem = membership.build(rh, rw, ph, pw, block_m, bw, left, torch.bfloat16)
    nct = -(-rw // bw)
    assert mem.dtype == torch.bfloat16 and mem.is_contiguous()
    assert mem.shape == ((rh, nct, block_m, bw) if left else (rh, nct, bw, block_m))
    # back to [rh, columns padded to BW, BLOCK_M]
    full = (mem.transpose(2, 3) if left else mem).reshape(rh, nct * bw, block_m)
    assert set(full.unique().tolist()) <= {0.0, 1.0}
    want = torch.zeros(rh, nct * bw, block_m, dtype=torch.bool)
    want[:, :rw, :ph * pw] = _torch_membership(rh, rw, ph, pw)
    assert torch.equal(full == 1, want)


def test_every_point_lies_in_some_window():
    """The table the kernel sums with covers the region (adaptive pooling leaves no point out)."""
    mem = membership.build(25, 42, 7, 7, 64, 16, False, torch.float32)
    assert (mem.reshape(25, -1, 64)[:, :42].sum(-1) >= 1).all()


def test_table_past_32_bit_offsets_is_named():
    with pytest.raises(ValueError, match="2\\*\\*31.*impl='light'"):
        membership.build(2 ** 20, 2 ** 10, 7, 7, 64, 16, False, torch.bfloat16)


def test_tables_are_cached_per_geometry_but_never_inside_a_graph_capture(monkeypatch):
    """A call reuses its geometry's table; while a CUDA graph is being captured the table is made afresh and kept
    out of the cache (a cached one could be evicted and freed while the graph still reads it)."""
    from coc_kernels.ops import context_cluster as ops
    monkeypatch.setattr(membership, "_TABLES", {})
    q = ops.Geometry(torch.empty(1, 8, 10, 14), None, 2, 3, 3, 2, 2)
    first = membership.pool_table(q, "pool", False)
    assert membership.pool_table(q, "pool", False) is first and len(membership._TABLES) == 1
    assert membership.pool_table(q, "pool", True) is not first and len(membership._TABLES) == 2
    torch.testing.assert_close(first, membership.build(5, 7, 3, 3, q.BM, q.cfg["pool"][1], False, q.dot_operand))
    monkeypatch.setattr(membership, "_capturing", lambda device: True)
    fresh = membership.pool_table(q, "pool", False)
    assert fresh is not first and torch.equal(fresh, first) and len(membership._TABLES) == 2
