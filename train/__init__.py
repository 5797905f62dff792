"""Lightning tasks, the ``unroll`` CLI, evaluation and callbacks."""

from .callbacks import PredictionWriter, ReportPaths
from .checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint, verify_checkpoint
from .scoring import AdjointBaseline, Baseline, MetricTracker, SolverBaseline
from .stagewise import StageWise
from .task import ReconstructionTask

__all__ = ["ReconstructionTask", "StageWise", "ReportPaths", "PredictionWriter", "Baseline", "SolverBaseline",
           "AdjointBaseline", "MetricTracker", "AtomicCheckpointIO", "CheckpointError", "load_checkpoint",
           "verify_checkpoint"]

# fastMRI predictions (issue 17)
from .fastmri_predictions import FastMRIPredictionWriter, read_reconstructions, score_reconstructions

__all__ += ["FastMRIPredictionWriter", "read_reconstructions", "score_reconstructions"]
