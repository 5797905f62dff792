"""Lightning tasks, the ``unroll`` CLI, evaluation and callbacks."""

from .callbacks import CPUTimer, PredictionWriter, ReportPaths
from .checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint, verify_checkpoint
from .scoring import AdjointBaseline, Baseline, MetricTracker, SolverBaseline
from .stagewise import StageWise
from .task import ReconstructionTask

__all__ = ["ReconstructionTask", "StageWise", "ReportPaths", "PredictionWriter", "Baseline", "SolverBaseline",
           "AdjointBaseline", "MetricTracker", "CPUTimer", "AtomicCheckpointIO", "CheckpointError", "load_checkpoint",
           "verify_checkpoint"]

# fastMRI predictions (issue 17)
from .fastmri_predictions import FastMRIPredictionWriter, read_reconstructions, score_reconstructions

__all__ += ["FastMRIPredictionWriter", "read_reconstructions", "score_reconstructions"]

# learned conjugate directions (issue 14)
from .dcdm import DCDMTask, KrylovBaseline, RelativeResidual, SolveTime, solve_trace  # noqa: E402

__all__ += ["DCDMTask", "KrylovBaseline", "RelativeResidual", "SolveTime", "solve_trace"]
# MRI (issue 17): the MRI task, its loss, fastMRI evaluation and baselines
from .mri import FastMRITracker, MRIBaseline, MRILoss, MRIReconstructionTask  # noqa: E402

__all__ += ["MRIReconstructionTask", "MRILoss", "FastMRITracker", "MRIBaseline"]
# Learned proximal networks (issue 15): projection, proximal-matching schedule, denoising task
from .lpn import DenoisingTask, ProjectLPN, ProximalMatchingSchedule  # noqa: E402

__all__ += ["DenoisingTask", "ProjectLPN", "ProximalMatchingSchedule"]

# bilevel (issue 16)
from .bilevel import BilevelTask  # noqa: E402

__all__ += ["BilevelTask"]

# MRI (issue 18): the loss over every time step (CIRIM)
from .mri import MRITimeStepTask  # noqa: E402

__all__ += ["MRITimeStepTask"]

# adversarial training (issue 19)
from .adversarial import AdversarialTrainingTask  # noqa: E402

__all__ += ["AdversarialTrainingTask"]

# blind gain calibration (issue 19)
from .calibration import BlindCalibrationTask  # noqa: E402

__all__ += ["BlindCalibrationTask"]
