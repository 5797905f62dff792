"""Writing fastMRI-layout HDF5 files from image volumes, with simulated coils.

The fastMRI layout (Zbontar et al. 2018, https://fastmri.org/dataset, and the ``fastmri``
package's ``SliceDataset``), as written here:

==========================  ===============================================================
``kspace``                  multi-coil ``(slices, coils, H, W)`` complex64, single-coil
                            ``(slices, H, W)`` complex64: fully sampled (train/val) or
                            undersampled with a ``mask`` dataset (test / challenge files)
``reconstruction_rss``      ``(slices, h, w)`` float32: the root-sum-of-squares of the coil
                            images, centre-cropped to the recon size ``(h, w)``
``reconstruction_esc``      single-coil only: the magnitude of the single-coil image, cropped
``mask``                    test files only: ``(W,)`` bool, the sampled columns
``ismrmrd_header``          ``()`` bytes: the ISMRMRD XML header (below)
attrs ``max``, ``norm``     the target volume's maximum and L2 norm (float64)
attrs ``acquisition``       e.g. ``"AXT1"`` (brain) or ``"CORPD_FBK"`` (knee)
attrs ``patient_id``        a hex string
attrs ``acceleration``,     test files only: the acceleration and number of fully sampled
``num_low_frequency``       centre columns of ``mask``
==========================  ===============================================================

The header is a minimal but valid ISMRMRD header (namespace ``http://www.ismrm.org/ISMRMRD``):
``experimentalConditions/H1resonanceFrequency_Hz``; one ``encoding`` with ``encodedSpace`` and
``reconSpace`` (``matrixSize`` x, y, z and ``fieldOfView_mm``), ``encodingLimits``
(``kspace_encoding_step_1`` min/max/centre for the phase-encoding columns; ``slice``) and
``trajectory`` = ``cartesian``; ``acquisitionSystemInformation/receiverChannels``. As in fastMRI,
``encodedSpace/matrixSize`` is ``(x, y) = (H, W)`` of the k-space and ``reconSpace/matrixSize``
the recon (target) size ``(h, w)``; the phase-encoding limits say which of the ``W`` columns
were acquired (``maximum + 1 − minimum`` of them, centred at ``center``), the rest being zero
padding.

What is simulated (:func:`simulate_multicoil`): complex images (the given magnitudes times an
optional smooth phase), birdcage coil sensitivities (:func:`birdcage_maps`, as SigPy's
``birdcage_maps``), optional readout oversampling (zero-padding of the image along ``H``, as
fastMRI's 2× oversampled readout) and complex Gaussian k-space noise.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from unroll.operators.fft import fft2c, ifft2c
from unroll.operators.mri import center_crop, rss

__all__ = ["ISMRMRD_NS", "birdcage_maps", "smooth_phase", "simulate_multicoil", "ismrmrd_header",
           "write_fastmri_file", "write_fastmri_volume"]

#: the ISMRMRD XML namespace
ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"

PathLike = Union[str, os.PathLike]


def birdcage_maps(num_coils: int, shape: Sequence[int], radius: float = 1.5,
                  dtype: torch.dtype = torch.complex64) -> Tensor:
    """Birdcage-style coil sensitivities: ``num_coils`` coils evenly spaced on a circle of radius
    ``radius`` (in units of the half field of view) around the image, each with a sensitivity
    ``exp(i φ_c) / r_c`` (``r_c`` the distance to the coil, ``φ_c`` its angle plus the coil's
    phase), normalised so that ``Σ_c |S_c|² = 1`` at every pixel (SigPy's ``birdcage_maps``).

    Args:
        num_coils: ``C`` (≥ 1).
        shape: ``(H, W)``.
        radius: the coils' distance from the centre; larger is smoother.

    Returns:
        ``(C, H, W)`` complex maps.
    """
    if isinstance(num_coils, bool) or not isinstance(num_coils, int) or num_coils < 1:
        raise ValueError(f"num_coils: expected an integer ≥ 1, got {num_coils!r}")
    h, w = (int(s) for s in shape)
    if not (isinstance(radius, (int, float)) and radius > 1):
        raise ValueError(f"radius: expected a number > 1 (coils outside the field of view), got {radius!r}")
    c = torch.arange(num_coils, dtype=torch.float64).view(-1, 1, 1)
    y = torch.arange(h, dtype=torch.float64).view(1, -1, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, 1, -1)
    x_co = (x - w / 2.0) / (w / 2.0) - radius * torch.cos(c * 2 * math.pi / num_coils)
    y_co = (y - h / 2.0) / (h / 2.0) - radius * torch.sin(c * 2 * math.pi / num_coils)
    rr = torch.sqrt(x_co ** 2 + y_co ** 2)
    phi = torch.atan2(x_co, -y_co) - c * 2 * math.pi / num_coils
    maps = torch.polar(1.0 / rr, phi)
    maps = maps / torch.sqrt((maps.abs() ** 2).sum(0, keepdim=True))
    return maps.to(dtype)


def smooth_phase(shape: Sequence[int], generator: torch.Generator, strength: float = math.pi / 2) -> Tensor:
    """A smooth random phase map ``(H, W)`` (a random 2-D polynomial of degree 2, values within
    about ``± strength``), as the slowly varying phase of a real acquisition."""
    h, w = (int(s) for s in shape)
    y = torch.linspace(-1, 1, h, dtype=torch.float64).view(-1, 1)
    x = torch.linspace(-1, 1, w, dtype=torch.float64).view(1, -1)
    a = (torch.rand(6, generator=generator, dtype=torch.float64) * 2 - 1) * strength / 2
    return a[0] + a[1] * x + a[2] * y + a[3] * x * y + a[4] * x ** 2 + a[5] * y ** 2


def simulate_multicoil(images: Tensor, num_coils: int = 8, noise: float = 0.0, phase: bool = True,
                       readout_oversampling: int = 1, kspace_width: Optional[int] = None, seed: int = 0,
                       coil_radius: float = 1.5) -> Dict[str, Tensor]:
    """Fully sampled multi-coil k-space of an image volume.

    The images ``(S, h, w)`` (magnitudes, or complex) get a smooth phase (``phase``: one per
    volume), are zero-padded to ``(H, W) = (readout_oversampling · h, kspace_width or w)``,
    multiplied by birdcage maps, Fourier transformed (centred orthonormal) and get complex
    Gaussian noise of standard deviation ``noise · max|image|`` per k-space sample (the FFT is
    orthonormal, so it is also the image-space noise level).

    Returns:
        ``{"kspace": (S, C, H, W) complex64, "maps": (C, H, W) complex64,
        "reconstruction_rss": (S, h, w) float32}`` (the RSS of the noisy coil images, cropped).
    """
    if not isinstance(images, Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dim() != 3:
        raise ValueError(f"images: expected a volume (slices, h, w), got shape {tuple(images.shape)}")
    if isinstance(readout_oversampling, bool) or not isinstance(readout_oversampling, int) or readout_oversampling < 1:
        raise ValueError(f"readout_oversampling: expected an integer ≥ 1, got {readout_oversampling!r}")
    if not (isinstance(noise, (int, float)) and noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"noise: expected a finite number ≥ 0, got {noise!r}")
    S, h, w = images.shape
    H, W = readout_oversampling * h, w if kspace_width is None else int(kspace_width)
    if W < w:
        raise ValueError(f"kspace_width: expected at least the image width {w}, got {W}")
    gen = torch.Generator().manual_seed(int(seed))
    # complex64 throughout (the files are complex64; float64 would only double the time)
    x = images.to(torch.complex64) if images.is_complex() else images.to(torch.float32).to(torch.complex64)
    if phase:
        x = x * torch.polar(torch.ones(h, w, dtype=torch.float64), smooth_phase((h, w), gen)).to(torch.complex64)
    top, left = (H - h) // 2, (W - w) // 2
    padded = torch.zeros(S, H, W, dtype=torch.complex64)
    padded[:, top:top + h, left:left + w] = x
    maps = birdcage_maps(num_coils, (H, W), radius=coil_radius, dtype=torch.complex64)
    kspace = fft2c(maps.unsqueeze(0) * padded.unsqueeze(1))
    if noise > 0:
        sigma = noise * float(x.abs().max()) / math.sqrt(2.0)
        kspace = kspace + sigma * torch.complex(torch.randn(kspace.shape, generator=gen, dtype=torch.float32),
                                                torch.randn(kspace.shape, generator=gen, dtype=torch.float32))
    target = center_crop(rss(ifft2c(kspace), dim=1), (h, w))
    return {"kspace": kspace.to(torch.complex64), "maps": maps.to(torch.complex64),
            "reconstruction_rss": target.to(torch.float32)}


def ismrmrd_header(encoded_size: Sequence[int], recon_size: Sequence[int], num_coils: int, num_slices: int,
                   acquired: Optional[Tuple[int, int]] = None, fov_mm: Optional[Sequence[float]] = None,
                   field_strength_t: float = 3.0) -> bytes:
    """A minimal but valid ISMRMRD XML header (UTF-8 bytes).

    Args:
        encoded_size: ``(H, W)`` of the k-space (``encodedSpace/matrixSize`` x, y; z = 1).
        recon_size: ``(h, w)`` of the reconstruction (``reconSpace/matrixSize`` x, y; z = 1).
        num_coils: ``acquisitionSystemInformation/receiverChannels``.
        num_slices: ``encodingLimits/slice`` maximum + 1.
        acquired: ``(first, last)`` acquired phase-encoding columns (inclusive) of the ``W``;
            all of them by default. ``encodingLimits/kspace_encoding_step_1`` gets
            ``minimum = 0``, ``maximum = last − first`` and ``center = W // 2 − first`` (so
            that fastMRI's ``padding_left = W // 2 − center`` is ``first``).
        fov_mm: ``(x, y)`` field of view in mm of the encoded space (1 mm pixels by default).
        field_strength_t: ``systemFieldStrength_T`` (the H1 frequency follows).
    """
    H, W = (int(s) for s in encoded_size)
    h, w = (int(s) for s in recon_size)
    first, last = (0, W - 1) if acquired is None else (int(acquired[0]), int(acquired[1]))
    if not 0 <= first <= W // 2 <= last < W:
        raise ValueError(f"acquired: expected columns (first, last) with 0 <= first <= {W // 2} <= last < {W}, "
                         f"got {acquired!r}")
    fx, fy = (float(H), float(W)) if fov_mm is None else (float(fov_mm[0]), float(fov_mm[1]))
    ET.register_namespace("", ISMRMRD_NS)

    def sub(parent, tag, text=None):
        el = ET.SubElement(parent, f"{{{ISMRMRD_NS}}}{tag}")
        if text is not None:
            el.text = str(text)
        return el

    root = ET.Element(f"{{{ISMRMRD_NS}}}ismrmrdHeader")
    system = sub(root, "acquisitionSystemInformation")
    sub(system, "systemFieldStrength_T", f"{field_strength_t:g}")
    sub(system, "receiverChannels", int(num_coils))
    cond = sub(root, "experimentalConditions")
    sub(cond, "H1resonanceFrequency_Hz", int(round(42.57747892e6 * field_strength_t)))
    enc = sub(root, "encoding")
    for space, (mx, my), (vx, vy) in (("encodedSpace", (H, W), (fx, fy)),
                                      ("reconSpace", (h, w), (fx * h / H, fy * w / W))):
        el = sub(enc, space)
        m = sub(el, "matrixSize")
        sub(m, "x", mx)
        sub(m, "y", my)
        sub(m, "z", 1)
        f = sub(el, "fieldOfView_mm")
        sub(f, "x", f"{vx:g}")
        sub(f, "y", f"{vy:g}")
        sub(f, "z", "1")
    lim = sub(enc, "encodingLimits")
    for name, (lo, hi, c) in (("kspace_encoding_step_1", (0, last - first, W // 2 - first)),
                              ("kspace_encoding_step_2", (0, 0, 0)),
                              ("slice", (0, num_slices - 1, 0))):
        el = sub(lim, name)
        sub(el, "minimum", lo)
        sub(el, "maximum", hi)
        sub(el, "center", c)
    sub(enc, "trajectory", "cartesian")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def write_fastmri_file(path: PathLike, kspace, *, reconstruction_rss=None, reconstruction_esc=None,
                       recon_size: Optional[Sequence[int]] = None, acquired: Optional[Tuple[int, int]] = None,
                       mask=None, acceleration: Optional[float] = None, num_low_frequency: Optional[int] = None,
                       acquisition: str = "AXT1", patient_id: Optional[str] = None, sensitivity_maps=None,
                       header: Optional[bytes] = None) -> Path:
    """Write one fastMRI-layout HDF5 file (the table in the module's docstring).

    Args:
        path: the ``.h5`` file to write (its folder is created).
        kspace: ``(slices, coils, H, W)`` (multi-coil) or ``(slices, H, W)`` (single-coil), complex.
        reconstruction_rss, reconstruction_esc: ``(slices, h, w)`` targets (either or both; none
            for a test file). ``attrs["max"]``/``["norm"]`` are those of the ESC target for
            single-coil files, else of the RSS target.
        recon_size: ``(h, w)``; by default the targets' size, else the k-space's ``(H, W)``.
        acquired: the acquired phase-encoding columns, see :func:`ismrmrd_header`.
        mask: ``(W,)`` bool, for a test file (undersampled ``kspace``), with ``acceleration`` and
            ``num_low_frequency``.
        acquisition, patient_id: the attributes of those names (``patient_id`` default: a hash
            of the file name).
        sensitivity_maps: optional ``(slices, coils, H, W)`` or ``(coils, H, W)`` complex maps,
            stored as ``sensitivity_maps`` (not part of fastMRI's layout; the reader uses them
            with ``maps="file"``).
        header: the ``ismrmrd_header`` bytes (default: :func:`ismrmrd_header` from the sizes).

    Returns:
        the path written.
    """
    import h5py

    path = Path(path)
    k = _np(kspace)
    if not np.iscomplexobj(k) or k.ndim not in (3, 4):
        raise ValueError(f"kspace: expected complex (slices, coils, H, W) or (slices, H, W), got {k.dtype} of shape "
                         f"{k.shape}")
    S, (H, W) = k.shape[0], k.shape[-2:]
    coils = k.shape[1] if k.ndim == 4 else 1
    targets = {name: _np(t).astype(np.float32) for name, t in (("reconstruction_rss", reconstruction_rss),
                                                                ("reconstruction_esc", reconstruction_esc))
               if t is not None}
    for name, t in targets.items():
        if t.ndim != 3 or t.shape[0] != S:
            raise ValueError(f"{name}: expected ({S}, h, w) (one image per k-space slice), got shape {t.shape}")
    if recon_size is None:
        recon_size = next(iter(targets.values())).shape[-2:] if targets else (H, W)
    if header is None:
        header = ismrmrd_header((H, W), recon_size, coils, S, acquired)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k.astype(np.complex64))
        for name, t in targets.items():
            f.create_dataset(name, data=t)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header))
        if mask is not None:
            m = _np(mask).astype(bool).reshape(-1)
            f.create_dataset("mask", data=m)
            if acceleration is not None:
                f.attrs["acceleration"] = float(acceleration)
            if num_low_frequency is not None:
                f.attrs["num_low_frequency"] = int(num_low_frequency)
        if sensitivity_maps is not None:
            f.create_dataset("sensitivity_maps", data=_np(sensitivity_maps).astype(np.complex64))
        main = targets.get("reconstruction_esc" if k.ndim == 3 else "reconstruction_rss")
        if main is None and targets:
            main = next(iter(targets.values()))
        if main is not None:
            f.attrs["max"] = float(main.max())
            f.attrs["norm"] = float(np.linalg.norm(main.astype(np.float64)))
        f.attrs["acquisition"] = str(acquisition)
        f.attrs["patient_id"] = patient_id if patient_id is not None else \
            __import__("hashlib").sha256(path.name.encode()).hexdigest()
    return path


def write_fastmri_volume(path: PathLike, images, challenge: Literal["multicoil", "singlecoil"] = "multicoil",
                         num_coils: int = 8, noise: float = 0.0, phase: bool = True, readout_oversampling: int = 1,
                         kspace_width: Optional[int] = None, seed: int = 0, acquisition: str = "AXT1",
                         patient_id: Optional[str] = None, write_maps: bool = False) -> Path:
    """Simulate and write a fastMRI file from an image volume ``(slices, h, w)``.

    ``"multicoil"``: :func:`simulate_multicoil` (``num_coils`` birdcage coils) and its
    ``reconstruction_rss``. ``"singlecoil"``: one coil of uniform sensitivity (the complex image
    itself: an idealised emulated single coil), ``kspace`` ``(slices, H, W)`` and
    ``reconstruction_esc`` (its magnitude, cropped). The recon size is ``(h, w)``.

    ``write_maps``: also store the true (simulated) maps as ``sensitivity_maps`` ``(C, H, W)``.
    """
    if challenge not in ("multicoil", "singlecoil"):
        raise ValueError(f"challenge: expected 'multicoil' or 'singlecoil', got {challenge!r}")
    sim = simulate_multicoil(torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images,
                             num_coils=num_coils if challenge == "multicoil" else 1, noise=noise, phase=phase,
                             readout_oversampling=readout_oversampling, kspace_width=kspace_width, seed=seed,
                             coil_radius=1.5)
    h, w = sim["reconstruction_rss"].shape[-2:]
    if challenge == "multicoil":
        return write_fastmri_file(path, sim["kspace"], reconstruction_rss=sim["reconstruction_rss"],
                                  recon_size=(h, w), acquisition=acquisition, patient_id=patient_id,
                                  sensitivity_maps=sim["maps"] if write_maps else None)
    # one coil: the birdcage map of a single coil is normalised to |S| = 1 (its phase is kept)
    kspace = sim["kspace"][:, 0]
    return write_fastmri_file(path, kspace, reconstruction_esc=sim["reconstruction_rss"], recon_size=(h, w),
                              acquisition=acquisition, patient_id=patient_id,
                              sensitivity_maps=sim["maps"] if write_maps else None)
