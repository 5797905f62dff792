"""Proximal operators, projections and regulariser modules.

Pure functions (:mod:`unroll.prox.functional`: thresholds and projections) and the
``Regularizer`` modules built on them (:mod:`unroll.prox.regularizers`: ``L1``, ``L0``,
``SquaredL2`` and the indicators ``NonNegative``, ``Box``, ``Simplex``, ``L2Ball``, ``L1Ball``,
``LowRank``), all importable from here.
"""

from ..parametrize import inverse_softplus
from .functional import (hard_threshold, project_box, project_l1_ball, project_l2_ball, project_nonneg,
                         project_rank, project_simplex, soft_threshold, soft_threshold_support_selection)
from .regularizers import L0, L1, Box, ElasticNet, Indicator, L1Ball, L2Ball, LowRank, NonNegative, Regularizer, Simplex, SquaredL2

__all__ = [
    "soft_threshold",
    "hard_threshold",
    "soft_threshold_support_selection",
    "project_nonneg",
    "project_box",
    "project_simplex",
    "project_l2_ball",
    "project_l1_ball",
    "project_rank",
    "inverse_softplus",
    "Regularizer",
    "L1",
    "L0",
    "SquaredL2",
    "ElasticNet",
    "Indicator",
    "NonNegative",
    "Box",
    "Simplex",
    "L2Ball",
    "L1Ball",
    "LowRank",
]

# Image priors for plug-and-play (issue 15)
from .tv import TotalVariation, tv_prox, tv_value  # noqa: E402
from .wavelet import WAVELETS, WaveletL1, dwt2, idwt2  # noqa: E402

__all__ += ["TotalVariation", "tv_prox", "tv_value", "WaveletL1", "dwt2", "idwt2", "WAVELETS"]
