"""Lightning tasks, the ``unroll`` CLI, evaluation and callbacks."""

from .callbacks import PredictionWriter, ReportPaths
from .checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint, verify_checkpoint
from .stagewise import StageWise
from .task import ReconstructionTask

__all__ = ["ReconstructionTask", "StageWise", "ReportPaths", "PredictionWriter", "AtomicCheckpointIO",
           "CheckpointError", "load_checkpoint", "verify_checkpoint"]
