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

# learned conjugate directions (issue 14)
from .dcdm import DCDM  # noqa: E402
from .multilevel import MultilevelDirection  # noqa: E402

__all__ += ["DCDM", "MultilevelDirection"]
# MRI (issue 17): MoDL and the classical baselines
from .modl import MoDL, MoDLDenoiser  # noqa: E402
from .mri_baselines import CompressedSensing, HaarWaveletL1, ZeroFilled  # noqa: E402

__all__ += ["MoDL", "MoDLDenoiser", "ZeroFilled", "CompressedSensing", "HaarWaveletL1"]
# Learned proximal networks (issue 15)
from .lpn import LPN, ConvLPN, LearnedProxNet  # noqa: E402

__all__ += ["LPN", "ConvLPN", "LearnedProxNet"]

# Plug-and-play (issue 15): denoisers usable as a prox, PnP solvers, unrolled PnP
from .denoisers import Denoise, DenoiserProx, DnCNN, UNet, as_prox  # noqa: E402
from .pnp import PnPADMMStep, UnrolledPnP, pnp_admm, pnp_pgd  # noqa: E402

__all__ += ["DnCNN", "UNet", "DenoiserProx", "Denoise", "as_prox", "PnPADMMStep", "UnrolledPnP", "pnp_admm", "pnp_pgd"]

# --- MRI models of issue 18 (E2E VarNet, RecurrentVarNet, CIRIM) and their shared parts
from .cirim import CIRIM, CIRIMOutput, RIMState, RIMStep, time_step_loss, time_step_weights  # noqa: E402
from .mri_blocks import ConvGRUCell, ConvGRUStack, MRIProblem, SensitivityNet, acs_mask
from .recurrent_varnet import RecurrentInit, RecurrentState, RecurrentVarNet, RecurrentVarNetStep
from .unet import NormUNet  # (its plain U-Net is unroll.models.unet.UNet; unroll.models.UNet is the denoiser)
from .varnet import KSpaceState, VarNet, VarNetCascade

__all__ += ["VarNet", "VarNetCascade", "KSpaceState", "RecurrentVarNet", "RecurrentVarNetStep", "RecurrentInit",
            "RecurrentState", "CIRIM", "CIRIMOutput", "RIMStep", "RIMState", "time_step_loss", "time_step_weights",
            "NormUNet", "ConvGRUCell", "ConvGRUStack", "SensitivityNet", "MRIProblem", "acs_mask"]
# Adversarial training (issue 19): small image classifiers
from .classifiers import MLPClassifier, SmallCNN  # noqa: E402

__all__ += ["MLPClassifier", "SmallCNN"]

# blind gain calibration (issue 19): the unrolled projected gradient with learned step sizes
from .calibration import LearnedBlindCalibration  # noqa: E402

__all__ += ["LearnedBlindCalibration"]
