"""MoDL: model-based deep learning for multi-coil MRI (Aggarwal, Mani & Jacob, IEEE TMI 2019).

MoDL alternates a learned denoiser ``D_w`` with a data-consistency (DC) step that solves the
regularised normal equations exactly, by conjugate gradient::

    x₀ = Aᴴy
    z_k = D_w(x_k)                                    (a residual CNN on real/imaginary channels)
    x_{k+1} = argmin_x ‖A x − y‖² + μ‖x − z_k‖²  =  (AᴴA + μI)⁻¹ (Aᴴy + μ z_k)

for ``K`` iterations with the same weights ``w`` and the same learned ``μ > 0`` in every
iteration. The DC step is :func:`unroll.linalg.cg`, whose backward pass is one adjoint CG solve
(implicit differentiation, constant memory in the CG iterations) rather than backpropagation
through the CG iterations.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
from torch import Tensor, nn

from unroll.info import SolverInfo
from unroll.linalg import cg
from unroll.operators import LinearOperator

from .base import learned_scalar

__all__ = ["MoDL", "MoDLDenoiser", "MoDLOutput", "complex_to_channels", "channels_to_complex"]


def complex_to_channels(x: Tensor) -> Tensor:
    """``(B, H, W)`` complex → ``(B, 2, H, W)`` real (real and imaginary parts as channels)."""
    return torch.stack((x.real, x.imag), dim=1)


def channels_to_complex(x: Tensor) -> Tensor:
    """``(B, 2, H, W)`` real → ``(B, H, W)`` complex."""
    return torch.complex(x[:, 0], x[:, 1])


class MoDLDenoiser(nn.Module):
    """MoDL's CNN prior ``D_w(x) = x + N_w(x)`` on the real and imaginary parts of a complex image.

    ``N_w`` is ``depth`` 3×3 convolutions (padding 1) of ``features`` channels, each but the last
    followed by batch normalisation (optional) and a ReLU: the paper's 5 layers of 64 filters. The
    last convolution is zero-initialised, so the untrained denoiser is the identity and the
    untrained MoDL is a proximal-point iteration towards the least-squares (SENSE) solution.

    Args:
        features: channels of the hidden layers (64 in the paper).
        depth: number of convolutions, ``>= 2`` (5 in the paper).
        batch_norm: batch normalisation after each hidden convolution (the paper's choice).

    Shapes:
        ``forward``: ``(B, H, W)`` complex → ``(B, H, W)`` complex.
    """

    def __init__(self, features: int = 64, depth: int = 5, batch_norm: bool = True) -> None:
        super().__init__()
        for name, v, low in (("features", features, 1), ("depth", depth, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {v!r}")
        if not isinstance(batch_norm, bool):
            raise ValueError(f"batch_norm: expected true or false, got {batch_norm!r}")
        self.features, self.depth, self.batch_norm = features, depth, batch_norm
        widths = [2] + [features] * (depth - 1) + [2]
        layers: List[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == depth - 1
            layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=last or not batch_norm))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_complex() or x.dim() != 3:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: MoDLDenoiser expects a complex image (B, H, W), got {got}")
        return x + channels_to_complex(self.net(complex_to_channels(x)))

    def extra_repr(self) -> str:
        return f"features={self.features}, depth={self.depth}, batch_norm={self.batch_norm}"


class MoDLOutput(NamedTuple):
    """``MoDL(..., return_trajectory=True)``: the estimate ``x`` ``(B, H, W)``, the estimate after
    each iteration (``K`` tensors, the last is ``x``), and ``info`` (``iterations``: CG iterations
    summed over the DC steps per sample; ``residual``: the last DC solve's relative residual)."""

    x: Tensor
    trajectory: List[Tensor]
    info: SolverInfo


class MoDL(nn.Module):
    """MoDL (Aggarwal et al. 2019) for multi-coil MRI, called ``model(y, op)``.

    Args:
        num_layers: ``K``, the number of denoiser + DC iterations (weights shared by all of them);
            ``num_iters=`` at call time may run more (or fewer) at inference.
        features, depth, batch_norm: the CNN prior (:class:`MoDLDenoiser`; the paper: 64, 5, true).
        mu: initial ``μ`` (learned, positive through a softplus; 0.05 in the paper's code).
        learn_mu: learn ``μ`` (else it stays fixed).
        cg_tol: relative residual tolerance of each DC solve (and of its adjoint solve).
        cg_max_iter: CG iteration budget of each DC solve.
        normalize: divide ``y`` by the largest ``|Aᴴy|`` of each sample before the network and
            multiply the result back (the CNN is not scale-equivariant; MRI data come at any
            scale). The DC step is linear, so this changes nothing but the CNN's input range.

    Call:
        ``model(y, op, *, num_iters=None, return_trajectory=False)`` with ``y`` the undersampled
        k-space ``(B, C, H, W)`` (complex) and ``op`` the batch's
        :class:`~unroll.operators.SENSE` operator (or any linear operator with ``adjoint`` and
        ``normal``, images ``(B, H, W)`` complex); returns the complex image ``(B, H, W)``, or a
        :class:`MoDLOutput` with ``return_trajectory=True``.
    """

    def __init__(self, num_layers: int = 10, features: int = 64, depth: int = 5, batch_norm: bool = True,
                 mu: float = 0.05, learn_mu: bool = True, cg_tol: float = 1e-5, cg_max_iter: int = 30,
                 normalize: bool = True) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected an int >= 1, got {num_layers!r}")
        if isinstance(cg_max_iter, bool) or not isinstance(cg_max_iter, int) or cg_max_iter < 1:
            raise ValueError(f"cg_max_iter: expected an int >= 1, got {cg_max_iter!r}")
        if isinstance(cg_tol, bool) or not isinstance(cg_tol, (int, float)) or not 0 <= cg_tol < 1:
            raise ValueError(f"cg_tol: expected a number in [0, 1), got {cg_tol!r}")
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 < mu < float("inf"):
            raise ValueError(f"mu: expected a finite number > 0, got {mu!r}")
        for name, v in (("learn_mu", learn_mu), ("normalize", normalize)):
            if not isinstance(v, bool):
                raise ValueError(f"{name}: expected true or false, got {v!r}")
        self.num_layers = num_layers
        self.denoiser = MoDLDenoiser(features, depth, batch_norm)
        self.mu = learned_scalar(float(mu), "mu") if learn_mu else None
        if not learn_mu:
            self.register_buffer("mu_fixed", torch.tensor(float(mu)))
        self.cg_tol, self.cg_max_iter, self.normalize = float(cg_tol), cg_max_iter, normalize

    def mu_value(self) -> Tensor:
        """``μ`` (a positive 0-dim tensor; in the graph when learned)."""
        return self.mu() if self.mu is not None else self.mu_fixed

    def data_consistency(self, op: LinearOperator, rhs0: Tensor, z: Tensor, mu: Tensor,
                         x0: Optional[Tensor] = None):
        """The DC step: solve ``(AᴴA + μI) x = Aᴴy + μ z`` by CG (implicit backward).

        Args:
            op: the operator ``A`` (``normal`` is ``AᴴA``).
            rhs0: ``Aᴴy`` ``(B, H, W)``.
            z: the denoiser's output ``(B, H, W)``.
            mu: ``μ``, a positive 0-dim tensor.
            x0: warm start (not differentiated; the solution does not depend on it).

        Returns:
            ``(x, info)`` as :func:`unroll.linalg.cg`.
        """
        mu_c = mu.to(rhs0.real.dtype)

        def system(v: Tensor) -> Tensor:
            return op.normal(v) + mu_c * v

        params = [mu_c] if mu_c.requires_grad else []
        return cg(system, rhs0 + mu_c * z, x0=x0, tol=self.cg_tol, max_iter=self.cg_max_iter, params=params,
                  check_every=5)

    def forward(self, y: Tensor, op: LinearOperator, *, num_iters: Optional[int] = None,
                return_trajectory: bool = False):
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op: MoDL needs the batch's LinearOperator (e.g. SENSE), got {type(op).__name__}")
        if not isinstance(y, Tensor) or not y.is_complex():
            got = f"{y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y: MoDL expects complex k-space (B, C, H, W), got {got}")
        k = self.num_layers if num_iters is None else num_iters
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"num_iters: expected an int >= 1, got {num_iters!r}")
        rhs0 = op.adjoint(y)
        if rhs0.dim() != 3:
            raise ValueError(f"op: MoDL expects images (B, H, W), the operator's adjoint gave shape "
                             f"{tuple(rhs0.shape)}")
        scale = None
        if self.normalize:
            scale = rhs0.detach().abs().flatten(1).amax(1).clamp_min(torch.finfo(rhs0.real.dtype).tiny)
            scale = scale.view(-1, 1, 1)
            rhs0 = rhs0 / scale
        mu = self.mu_value()
        x = rhs0
        trajectory: List[Tensor] = []
        iterations = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
        info = None
        for _ in range(k):
            z = self.denoiser(x)
            x, info = self.data_consistency(op, rhs0, z, mu, x0=x.detach())
            iterations = iterations + info.iterations
            if return_trajectory:
                trajectory.append(x if scale is None else x * scale)
        out = x if scale is None else x * scale
        if not return_trajectory:
            return out
        info = SolverInfo(iterations=iterations, residual=info.residual, converged=info.converged,
                          tol=self.cg_tol, max_iter=self.cg_max_iter * k, method="modl")
        return MoDLOutput(out, trajectory, info)

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, cg_tol={self.cg_tol:g}, cg_max_iter={self.cg_max_iter}, "
                f"normalize={self.normalize}")
