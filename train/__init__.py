"""Lightning tasks, the ``unroll`` CLI, evaluation and callbacks."""

from .callbacks import PredictionWriter, ReportPaths
from .task import ReconstructionTask

__all__ = ["ReconstructionTask", "ReportPaths", "PredictionWriter"]
