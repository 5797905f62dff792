"""unroll: iterative solvers as differentiable layers, unrolled and trained end to end.

The core (this package) depends on torch only (plus torchmetrics for ``unroll.metrics``):
operators, proximal maps and projections, steps, the ``Unrolled`` loop, classical solvers,
losses and metrics. Networks live in ``unroll.models``, data in ``unroll.data`` and the
Lightning tasks and CLI in ``unroll.train``.
"""

from . import autodiff, linalg, operators, prox, solvers
from .checks import check_finite, check_measurements
from .linalg import CGInfo, cg, solve_normal
from .losses import Loss, MSELoss, ObjectiveLoss
from .operators import Convolution2d, Diagonal, Identity, LinearOperator, MatrixOperator, adjoint_test, as_operator
from .parametrize import PositiveScalar
from .problem import Problem
from .autodiff import GradMode, SolverWarning
from .prox import (L0, L1, Box, SquaredL2, Indicator, L1Ball, L2Ball, LowRank, NonNegative, Regularizer, Simplex,
                   hard_threshold, soft_threshold)
from .steps import FISTAStep, GradientStep, MomentumState, ProxGradStep, State, Step
from .unrolled import SolverInfo, Unrolled, UnrolledOutput

__version__ = "0.1.0"

__all__ = [
    "operators", "prox", "solvers", "autodiff", "linalg", "cg", "solve_normal", "CGInfo", "GradMode", "SolverWarning",
    "LinearOperator", "MatrixOperator", "Convolution2d", "Diagonal", "Identity", "adjoint_test", "as_operator",
    "Regularizer", "L1", "L0", "SquaredL2", "Indicator", "NonNegative", "Box", "Simplex", "L2Ball", "L1Ball", "LowRank",
    "soft_threshold", "hard_threshold",
    "Problem", "Step", "State", "MomentumState", "GradientStep", "ProxGradStep", "FISTAStep",
    "Unrolled", "UnrolledOutput", "SolverInfo", "PositiveScalar",
    "Loss", "MSELoss", "ObjectiveLoss",
    "check_finite", "check_measurements",
]
