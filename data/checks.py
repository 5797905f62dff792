"""Argument validation shared by the data modules of ``unroll.data``.

Every check raises ``ValueError`` whose message starts with the argument's name, then says
what was expected and what came.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["DTYPES", "as_dtype", "check_int", "check_probability", "check_snr", "check_finite_number",
           "check_path"]

#: the dtypes a data module accepts by name
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_dtype(dtype: Union[str, torch.dtype], name: str = "dtype") -> torch.dtype:
    """``"float32"``/``"float64"`` (or a floating ``torch.dtype``) as a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"{name}: expected a floating-point dtype, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"{name}: expected one of {', '.join(repr(k) for k in DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def check_int(name: str, value, minimum: int) -> int:
    """``value`` must be an integer (not a bool) ``≥ minimum``; returns it as an ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer ≥ {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer ≥ {minimum}, got {value}")
    return int(value)


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer)) \
        and math.isfinite(value)


def check_probability(name: str, value, what: str = "a probability") -> float:
    """``value`` must be a finite number in ``(0, 1]``; returns it as a ``float``."""
    if not _is_real(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: expected {what} in (0, 1], got {value!r}")
    return float(value)


def check_finite_number(name: str, value, minimum: Optional[float] = None) -> float:
    """``value`` must be a finite number (``≥ minimum`` when given); returns it as a ``float``."""
    if not _is_real(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" ≥ {minimum}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return float(value)


def check_snr(name: str, value) -> Optional[float]:
    """``value`` must be a finite SNR in dB or ``None`` (noiseless); returns it as a float or None."""
    if value is None:
        return None
    if not _is_real(value):
        raise ValueError(f"{name}: expected a finite SNR in dB or None (noiseless), got {value!r}")
    return float(value)


def check_path(name: str, value) -> Optional[str]:
    """``value`` must be a path (``str`` or ``os.PathLike``) or ``None``; returns it as a ``str``."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name}: expected a path or None, got {value!r}")
    return os.fspath(value)
