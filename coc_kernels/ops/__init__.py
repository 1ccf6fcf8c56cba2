"""Triton ops (kernels + autograd), one module per op."""
