"""Lightning tasks, the ``unroll`` CLI, evaluation and callbacks."""

from .callbacks import PredictionWriter, ReportPaths
from .scoring import AdjointBaseline, Baseline, MetricTracker, SolverBaseline
from .stagewise import StageWise
from .task import ReconstructionTask

__all__ = ["ReconstructionTask", "StageWise", "ReportPaths", "PredictionWriter", "Baseline", "SolverBaseline",
           "AdjointBaseline", "MetricTracker"]
