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

# Learned proximal networks (issue 15)
from .lpn import LPN, ConvLPN, LearnedProxNet  # noqa: E402

__all__ += ["LPN", "ConvLPN", "LearnedProxNet"]
