"""unroll: iterative solvers as differentiable layers, unrolled and trained end to end.

The core (this package) depends on torch only (plus torchmetrics for ``unroll.metrics``):
operators, proximal maps and projections, steps, the ``Unrolled`` loop, classical solvers,
losses and metrics. Networks live in ``unroll.models``, data in ``unroll.data`` and the
Lightning tasks and CLI in ``unroll.train``.
"""

from . import autodiff, bilevel, linalg, lipschitz, operators, prox, solvers
from .checks import check_finite, check_measurements
from .info import SolverInfo, Status
from .linalg import CG, BiCGSTAB, CGInfo, LinearSolver, Neumann, SolverWarning, cg, solve_normal
from .losses import Loss, MSELoss, ObjectiveLoss
from .operators import (Convolution2d, Diagonal, Identity, Laplacian, LinearOperator, MatrixOperator, adjoint_test,
                        as_operator)
from .parametrize import PositiveScalar
from .preconditioners import IncompleteCholesky, JacobiPreconditioner
from .problem import LeastSquares, Problem, QuadraticProblem, SmoothProblem
from .autodiff import GradMode
from .prox import (L0, L1, Box, ElasticNet, SquaredL2, Indicator, L1Ball, L2Ball, LowRank, NonNegative, Regularizer, Simplex,
                   hard_threshold, soft_threshold)
from .steps import (ADMMState, ADMMStep, CGState, CGStep, Chain, FISTAStep, GradientStep, MomentumState, ProxGradStep,
                    State, Step)
from .unrolled import NestedStep, Unrolled, UnrolledOutput
from .operators import FFT2c, SENSE, Mask, MultiCoilMRI, fft2c, ifft2c, rss, sense_combine

__version__ = "0.1.0"

__all__ = [
    "operators", "prox", "solvers", "autodiff", "lipschitz", "linalg", "bilevel", "cg", "solve_normal", "CGInfo",
    "GradMode", "SolverWarning",
    "SolverInfo", "Status", "LinearSolver", "CG", "BiCGSTAB", "Neumann",
    "LinearOperator", "MatrixOperator", "Convolution2d", "Diagonal", "Identity", "adjoint_test", "as_operator",
    "Laplacian", "JacobiPreconditioner", "IncompleteCholesky",
    "Regularizer", "L1", "L0", "SquaredL2", "ElasticNet", "Indicator", "NonNegative", "Box", "Simplex", "L2Ball", "L1Ball", "LowRank",
    "soft_threshold", "hard_threshold",
    "Problem", "LeastSquares", "SmoothProblem", "QuadraticProblem",
    "Step", "State", "MomentumState", "CGState", "ADMMState", "GradientStep", "ProxGradStep", "FISTAStep", "CGStep",
    "ADMMStep", "Chain", "Unrolled", "UnrolledOutput", "NestedStep", "PositiveScalar",
    "Loss", "MSELoss", "ObjectiveLoss",
    "check_finite", "check_measurements",
    "FFT2c", "SENSE", "MultiCoilMRI", "Mask", "fft2c", "ifft2c", "rss", "sense_combine",
]

# learned conjugate directions (issue 14)
from .losses import ScaleInvariantLoss  # noqa: E402
from .solvers import ConjugateDirectionsInfo, conjugate_directions  # noqa: E402

__all__ += ["ScaleInvariantLoss", "conjugate_directions", "ConjugateDirectionsInfo"]
# Learned proximal networks (issue 15): the losses they are trained with
from .losses import L1Loss, L2Loss, ProximalMatchingLoss, proximal_matching  # noqa: E402

__all__ += ["L1Loss", "L2Loss", "ProximalMatchingLoss", "proximal_matching"]
# adversarial attacks (issue 19): PGD as an unrolled projected gradient, the linear reference
from . import adversarial  # noqa: E402
from .adversarial import AttackResult, PGDAttack  # noqa: E402

__all__ += ["adversarial", "PGDAttack", "AttackResult"]

# non-convex projected gradient (issue 19): blind gain calibration, supervised dictionary learning
from . import calibration  # noqa: E402
from .calibration import BlindCalibrationProblem, BlindCalibrationStep, CalibrationState, blind_calibration  # noqa: E402

__all__ += ["calibration", "blind_calibration", "BlindCalibrationProblem", "BlindCalibrationStep", "CalibrationState"]
from . import dictionary  # noqa: E402
from .dictionary import (AlternatingDictionaryStep, DictionaryState, SupervisedDictionaryProblem,  # noqa: E402
                         supervised_dictionary_learning)

__all__ += ["dictionary", "supervised_dictionary_learning", "SupervisedDictionaryProblem",
            "AlternatingDictionaryStep", "DictionaryState"]
