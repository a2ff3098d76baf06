"""Trust-region machinery: flat parameter vectors, conjugate gradient, Hessian-vector products
and the backtracking line search under a KL bound (Schulman et al. 2015).

Everything works on name -> tensor parameter dicts, so the same code serves a plain policy and
MAML's meta-parameters (whose KL goes through the inner adaptation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

Params = dict[str, torch.Tensor]

logger = logging.getLogger(__name__)


def flatten_params(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate the tensors of `params`, in the dict's order, into one flat vector."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten_params(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Split `flat` back into a dict with the names, order and shapes of `like`."""
    out: Params = {}
    offset = 0
    for name, ref in like.items():
        n = ref.numel()
        out[name] = flat[offset : offset + n].view_as(ref)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} elements, params need {offset}")
    return out


def conjugate_gradient(
    Avp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int = 10,
    residual_tol: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately solve `A x = b` for a symmetric positive-definite `A` given as `Avp(v) = A v`.

    Starts from `x = 0` and stops after `iters` iterations or once the squared residual norm
    falls below `residual_tol`. Returns `x` and `A x`, the latter summed from the products CG made
    anyway (TRPO scales its step with `x^T A x`, which then costs no further product).
    """
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= residual_tol:
            break
        ap = Avp(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        ax = ax + alpha * ap
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, ax


def hessian_vector_product(
    fn: Callable[[Params], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    damping: float = 0.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return `v -> (H + damping * I) v`, `H` the Hessian of the scalar `fn` at `params`.

    `fn` is evaluated once, on detached leaf copies of `params`; each product is one double
    backward through that graph. With `fn` the mean KL to a fixed old policy, evaluated at the old
    policy, `H` is the Fisher information matrix and this is TRPO's Fisher-vector product.

    Args:
        fn: differentiable scalar function of a parameter dict.
        params: the point at which the Hessian is taken.
        damping: multiple of the identity added to `H` (keeps CG well posed).
    """
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    with torch.enable_grad():
        value = fn(leaves)
        grads = torch.autograd.grad(value, list(leaves.values()), create_graph=True, allow_unused=True)
    flat_grad = _flat_or_zeros(grads, leaves)
    if not flat_grad.requires_grad:  # fn is at most linear in params: H = 0
        return lambda v: damping * v

    def product(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            hv = torch.autograd.grad(
                flat_grad @ v.detach(), list(leaves.values()), retain_graph=True, allow_unused=True
            )
        return _flat_or_zeros(hv, leaves) + damping * v

    return product


def gauss_newton_vector_product(
    fn: Callable[[Params], Sequence[tuple[torch.Tensor, torch.Tensor]]],
    params: Mapping[str, torch.Tensor],
    damping: float = 0.0,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return `v -> (J^T M J + damping * I) v`: the Gauss-Newton matrix of a loss of `fn`'s outputs.

    `fn(params)` returns `(output, curvature)` pairs: `J` is the Jacobian of the outputs at `params`
    and `M` the diagonal curvature of the loss in each output (a constant broadcastable to it). For
    a loss at its minimum in the outputs (the KL to the old policy, at the old policy), this is the
    loss's Hessian exactly: the Hessian's other term carries the loss's gradient in the outputs,
    which is 0 there. It skips the third-order terms a double backward through the loss would
    evaluate (each then multiplied by that 0). The graph is built once: each product is one
    backward for `J v` (through the graph of `J^T u`, linear in a dummy `u`) and one for `J^T`.

    Args:
        fn: `params -> [(output, curvature), ...]`.
        params: the point at which the matrix is taken.
        damping: multiple of the identity added (keeps CG well posed).
    """
    leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    with torch.enable_grad():
        pairs = fn(leaves)
        outputs = [output for output, _ in pairs]
        curvatures = [curvature.detach() for _, curvature in pairs]
        dummies = [torch.zeros_like(output, requires_grad=True) for output in outputs]
        jt_dummy = torch.autograd.grad(outputs, list(leaves.values()), dummies, create_graph=True, allow_unused=True)
    flat_jt_dummy = _flat_or_zeros(jt_dummy, leaves)
    if not flat_jt_dummy.requires_grad:  # the outputs do not depend on params
        return lambda v: damping * v

    def product(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            jv = torch.autograd.grad(flat_jt_dummy, dummies, v.detach(), retain_graph=True, allow_unused=True)
            weighted = [torch.zeros_like(o) if j is None else j * m for o, j, m in zip(outputs, jv, curvatures,
                                                                                      strict=True)]
            jtmjv = torch.autograd.grad(outputs, list(leaves.values()), weighted, retain_graph=True, allow_unused=True)
        return _flat_or_zeros(jtmjv, leaves) + damping * v

    return product


def _flat_or_zeros(grads: Sequence[torch.Tensor | None], like: Params) -> torch.Tensor:
    """Flatten gradients, with zeros for parameters the function did not use."""
    return flatten_params(
        {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(like.items(), grads, strict=True)}
    )


def _scalar(x: torch.Tensor | float) -> float:
    return x.detach().item() if isinstance(x, torch.Tensor) else float(x)


@dataclass
class LineSearchResult:
    """Outcome of `line_search`.

    Attributes:
        accepted: a step was taken (False: the old parameters were returned).
        step_fraction: fraction of the full step taken (0 when rejected).
        loss: loss at the returned parameters.
        kl: KL at the returned parameters (0 when rejected: the old policy against itself).
        backtracks: how many candidate steps were tried.
    """

    accepted: bool
    step_fraction: float
    loss: float
    kl: float
    backtracks: int


def line_search(
    params: Mapping[str, torch.Tensor],
    full_step: torch.Tensor,
    loss_and_kl_fn: Callable[[Params], tuple[torch.Tensor | float, torch.Tensor | float]],
    max_kl: float,
    old_loss: float | None = None,
    backtrack_ratio: float = 0.5,
    max_backtracks: int = 15,
) -> tuple[Params, LineSearchResult]:
    """Backtrack along `full_step` until the loss improves and the KL stays within `max_kl`.

    Candidates are `params + backtrack_ratio**k * full_step` for `k = 0 .. max_backtracks - 1`;
    the first with a finite loss strictly below the old loss and `kl <= max_kl` is returned. If none
    qualifies, detached copies of the old parameters are returned with `accepted=False`.

    Args:
        params: current parameters (not modified).
        full_step: flat step (already scaled to the trust region), in `params`' order.
        loss_and_kl_fn: `params -> (loss, kl)`; the KL is measured against the old policy.
        max_kl: trust-region bound on the KL.
        old_loss: loss at `params` (computed with `loss_and_kl_fn` if None).
        backtrack_ratio: shrink factor between candidates.
        max_backtracks: number of candidates tried.
    """
    old = {name: p.detach() for name, p in params.items()}
    old_flat = flatten_params(old)
    if old_loss is None:
        old_loss = _scalar(loss_and_kl_fn(old)[0])
    fraction = 1.0
    for k in range(max_backtracks):
        candidate = unflatten_params(old_flat + fraction * full_step.detach(), old)
        loss, kl = loss_and_kl_fn(candidate)
        loss, kl = _scalar(loss), _scalar(kl)
        if math.isfinite(loss) and math.isfinite(kl) and loss < old_loss and kl <= max_kl:
            return candidate, LineSearchResult(True, fraction, loss, kl, k + 1)
        fraction *= backtrack_ratio
    logger.info("line search: no step improved the loss within max_kl=%g; keeping old params", max_kl)
    return old, LineSearchResult(False, 0.0, float(old_loss), 0.0, max_backtracks)
