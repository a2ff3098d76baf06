"""Conjugate gradient, flat parameter helpers, Hessian-vector products and the KL line search."""

from __future__ import annotations

from collections.abc import Callable

import torch

from agents.meta.trpo import (
    conjugate_gradient,
    flatten_params,
    gauss_newton_vector_product,
    hessian_vector_product,
    line_search,
    unflatten_params,
)


def test_flatten_round_trip_keeps_dict_order() -> None:
    params = {"b": torch.arange(6.0).view(2, 3), "a": torch.tensor([7.0])}
    flat = flatten_params(params)
    torch.testing.assert_close(flat, torch.tensor([0.0, 1, 2, 3, 4, 5, 7]))
    back = unflatten_params(flat, params)
    assert list(back) == ["b", "a"]
    for name in params:
        torch.testing.assert_close(back[name], params[name])


def test_conjugate_gradient_solves_spd_system() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 8
    m = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    x, ax = conjugate_gradient(lambda v: a @ v, b, iters=3 * n, residual_tol=1e-24)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    # Few iterations: an approximation, but already a descent on the quadratic model.
    x2, ax2 = conjugate_gradient(lambda v: a @ v, b, iters=2)
    assert 0.5 * x2 @ a @ x2 - b @ x2 < 0
    # The product CG returns is A x, summed from its own products, at any iteration count.
    torch.testing.assert_close(ax, a @ x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ax2, a @ x2, rtol=1e-10, atol=1e-12)


def test_hessian_vector_product_matches_explicit_hessian() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = a + a.T
    z0 = torch.randn(5, generator=gen, dtype=torch.float64)
    params = {"x": z0[:2].clone(), "y": z0[2:].clone()}

    def fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        z = torch.cat([p["x"], p["y"]])
        # A quadratic plus a cubic coupling, so the Hessian depends on the point.
        return 0.5 * z @ a @ z + p["x"][0] * p["y"].pow(2).sum()

    def flat_fn(z: torch.Tensor) -> torch.Tensor:
        return fn(unflatten_params(z, params))

    hessian = torch.autograd.functional.hessian(flat_fn, flatten_params(params))
    damping = 0.1
    hvp = hessian_vector_product(fn, params, damping=damping)
    for _ in range(3):
        v = torch.randn(5, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(hvp(v), hessian @ v + damping * v)
    assert not params["x"].requires_grad  # the caller's tensors are left alone


LossAndKl = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def quadratic_problem() -> tuple[dict[str, torch.Tensor], torch.Tensor, LossAndKl]:
    """Loss ||w - (2, 0)||^2 from w = 0, with "KL" ||w - 0||^2."""
    start = {"w": torch.zeros(2, dtype=torch.float64)}
    target = torch.tensor([2.0, 0.0], dtype=torch.float64)

    def loss_and_kl(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss = (p["w"] - target).pow(2).sum()
        kl = (p["w"] - start["w"]).pow(2).sum()
        return loss, kl

    return start, target, loss_and_kl


def test_line_search_shrinks_a_step_that_violates_the_kl_bound() -> None:
    start, target, loss_and_kl = quadratic_problem()
    # The full step reaches the loss minimum but has KL 4; 0.5 -> KL 1; 0.25 -> KL 0.25.
    new, result = line_search(start, target.clone(), loss_and_kl, max_kl=0.3)
    assert result.accepted
    assert result.step_fraction == 0.25
    assert result.kl <= 0.3
    assert result.backtracks == 3
    torch.testing.assert_close(new["w"], torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert result.loss < float(loss_and_kl(start)[0])
    # A looser bound takes the full step.
    _, loose = line_search(start, target.clone(), loss_and_kl, max_kl=10.0)
    assert loose.accepted and loose.step_fraction == 1.0


def test_line_search_rejects_when_nothing_improves() -> None:
    start, target, loss_and_kl = quadratic_problem()
    old_loss = float(loss_and_kl(start)[0])
    new, result = line_search(start, -target, loss_and_kl, max_kl=100.0, max_backtracks=5)
    assert not result.accepted
    assert result.step_fraction == 0.0
    assert result.backtracks == 5
    assert result.loss == old_loss
    torch.testing.assert_close(new["w"], start["w"])
    # Improving steps that all break the KL bound are rejected too.
    _, tight = line_search(start, target.clone(), loss_and_kl, max_kl=1e-6, max_backtracks=4)
    assert not tight.accepted


def test_gauss_newton_product_is_jt_m_j_and_the_hessian_at_a_minimum() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    params = {"w": torch.randn(3, 2, generator=gen, dtype=torch.float64),
              "b": torch.randn(2, generator=gen, dtype=torch.float64)}
    curvature = torch.rand(7, 2, generator=gen, dtype=torch.float64) + 0.5

    def outputs(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tanh(x @ p["w"] + p["b"])

    gn = gauss_newton_vector_product(lambda p: [(outputs(p), curvature)], params, damping=0.1)
    jacobian = torch.autograd.functional.jacobian(
        lambda flat: outputs(unflatten_params(flat, params)).reshape(-1), flatten_params(params))
    explicit = jacobian.T @ torch.diag(curvature.reshape(-1)) @ jacobian + 0.1 * torch.eye(8, dtype=torch.float64)
    for v in torch.eye(8, dtype=torch.float64):
        torch.testing.assert_close(gn(v), explicit @ v)

    # A weighted squared distance to fixed targets has curvature 2 * weight in each output. At the
    # targets (its minimum) the Gauss-Newton matrix is its Hessian; away from them it is not.
    target = outputs(params).detach()

    def loss(p: dict[str, torch.Tensor], shift: float = 0.0) -> torch.Tensor:
        return (0.5 * curvature * (outputs(p) - target - shift) ** 2).sum()

    at_minimum = hessian_vector_product(loss, params)
    away = hessian_vector_product(lambda p: loss(p, shift=0.3), params)
    gn_plain = gauss_newton_vector_product(lambda p: [(outputs(p), curvature)], params)
    v = torch.randn(8, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(gn_plain(v), at_minimum(v), rtol=1e-10, atol=1e-12)
    assert float((gn_plain(v) - away(v)).norm()) > 1e-3
