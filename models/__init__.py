"""Networks built from the core layers; every one is called as ``model(y, A)``."""

from .alista import ALISTA, analytic_weight
from .base import UnrolledModel, support_selection_schedule
from .blocks import CNNProx
from .ista import LearnedIHT, LearnedISTA
from .lista import LISTA, LISTASS
from .lista_cp import LISTACP, LISTACPSS
from .pgd import LearnedPGD
from .tilista import TiLISTA

__all__ = ["UnrolledModel", "CNNProx", "LearnedISTA", "LearnedIHT", "LISTA", "LISTASS", "LISTACP", "LISTACPSS",
           "TiLISTA", "ALISTA", "LearnedPGD", "analytic_weight", "support_selection_schedule"]

# MRI (issue 17): MoDL and the classical baselines
from .modl import MoDL, MoDLDenoiser  # noqa: E402
from .mri_baselines import CompressedSensing, HaarWaveletL1, ZeroFilled  # noqa: E402

__all__ += ["MoDL", "MoDLDenoiser", "ZeroFilled", "CompressedSensing", "HaarWaveletL1"]

# --- MRI models of issue 18 (E2E VarNet, RecurrentVarNet, CIRIM) and their shared parts
from .cirim import CIRIM, CIRIMOutput, RIMState, RIMStep, time_step_loss, time_step_weights
from .mri_blocks import ConvGRUCell, ConvGRUStack, MRIProblem, SensitivityNet, acs_mask
from .recurrent_varnet import RecurrentInit, RecurrentState, RecurrentVarNet, RecurrentVarNetStep
from .unet import NormUNet, UNet
from .varnet import KSpaceState, VarNet, VarNetCascade

__all__ += ["VarNet", "VarNetCascade", "KSpaceState", "RecurrentVarNet", "RecurrentVarNetStep", "RecurrentInit",
            "RecurrentState", "CIRIM", "CIRIMOutput", "RIMStep", "RIMState", "time_step_loss", "time_step_weights",
            "UNet", "NormUNet", "ConvGRUCell", "ConvGRUStack", "SensitivityNet", "MRIProblem", "acs_mask"]
