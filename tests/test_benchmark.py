"""The speed benchmark's count of the exact MAML-TRPO update's floor."""

from __future__ import annotations

import itertools

import torch
from torch.func import grad, jvp
from torch.utils.flop_counter import FlopCounterMode


def counted_multiply_adds(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def test_product_count_matches_autodiff_minus_the_input_tangent(load_script) -> None:
    """One Fisher-vector product = two train Hessian-vector products + a tangent forward and a
    backward on the valid steps. torch's own forward-over-reverse and reverse passes, counted by
    its FLOP counter, do exactly that work plus the primal passes and the products with the first
    layer's input tangent, which is structurally zero (the count leaves them out)."""
    bench = load_script("benchmark")
    sizes, rows = [5, 7, 3, 2], 11
    x = torch.randn(rows, sizes[0])
    params = {f"w{i}": torch.randn(b, a) for i, (a, b) in enumerate(itertools.pairwise(sizes))}
    tangent = {name: torch.randn_like(p) for name, p in params.items()}

    def network(p):
        h = x
        for i in range(len(sizes) - 1):
            h = h @ p[f"w{i}"].T
            h = torch.tanh(h) if i < len(sizes) - 2 else h
        return h

    def loss(p):
        return (network(p) ** 2).sum()

    first = sizes[0] * sizes[1]
    forward = counted_multiply_adds(lambda: loss(params))
    backward = counted_multiply_adds(lambda: grad(loss)(params)) - forward
    hessian_vector = counted_multiply_adds(lambda: jvp(grad(loss), (params,), (tangent,))) - forward - backward
    tangent_forward = counted_multiply_adds(lambda: jvp(network, (params,), (tangent,))) - forward
    input_tangent = 2 * rows * first  # torch multiplies the first layer's zero input tangent, forward and back
    assert bench.product_multiply_adds(sizes, rows, 0) == 2 * (hessian_vector - input_tangent)
    assert bench.product_multiply_adds(sizes, 0, rows) == (tangent_forward - rows * first) + backward
