"""Networks built from the core layers; every one is called as ``model(y, A)``."""

from .alista import ALISTA, analytic_weight
from .base import UnrolledModel
from .blocks import CNNProx
from .ista import LearnedIHT, LearnedISTA
from .lista import LISTA

__all__ = ["UnrolledModel", "CNNProx", "LearnedISTA", "LearnedIHT", "LISTA", "ALISTA", "analytic_weight"]
