"""Derive the built-in MRI data set (``colin27_axial.npz``) from the Colin27 brain template.

Run once, by hand (the package ships the result; nothing is downloaded at run time)::

    apt-get download mricron-data                  # Debian package, 16 MB
    dpkg-deb -x mricron-data_*_all.deb mricron     # -> mricron/usr/share/mricron/templates/ch2.nii.gz
    python data/assets/mri/make_brain.py mricron/usr/share/mricron/templates/ch2.nii.gz

Input: ``ch2.nii.gz``, the single-subject Colin27 T1-weighted template (181 × 217 × 181 voxels of
1 mm, uint8, with scalp and skull) as MRIcron ships it. Output: ``colin27_axial.npz`` next to
this script with

* ``images``: ``(64, 128, 128)`` uint16, axial slices every 2 mm from 1 mm voxel planes
  z = 38, 40, ..., 164 (from the cerebellum to near the vertex), anterior at the top (row 0),
  the 181-column axis zero-padded to 217 (a square 217 mm field of view), then resized to
  128 × 128 (bilinear with antialiasing, 1.7 mm pixels), scaled so that the volume's maximum is
  65535;
* ``z_index``: ``(64,)`` the voxel plane of each slice; ``source``: a provenance string.

The NIfTI-1 file is parsed by hand (a 348-byte header, then the voxels), so no neuroimaging
package is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np
import torch

_DTYPES = {2: np.uint8, 4: np.int16, 16: np.float32, 64: np.float64, 512: np.uint16}
Z_PLANES = list(range(38, 165, 2))  # 64 planes
SIZE = 128


def read_nifti(path: str) -> np.ndarray:
    """The voxels of a (gzipped) NIfTI-1 file as ``(z, y, x)`` (NIfTI stores x fastest)."""
    raw = gzip.open(path).read() if path.endswith(".gz") else Path(path).read_bytes()
    if struct.unpack("<i", raw[:4])[0] != 348 or raw[344:347] not in (b"n+1", b"ni1"):
        raise ValueError(f"{path}: not a little-endian NIfTI-1 file")
    dim = struct.unpack("<8h", raw[40:56])
    code = struct.unpack("<h", raw[70:72])[0]
    offset = int(struct.unpack("<f", raw[108:112])[0])
    slope, inter = struct.unpack("<2f", raw[112:120])
    if dim[0] != 3 or code not in _DTYPES:
        raise ValueError(f"{path}: expected a 3-D volume of a plain dtype, got dim {dim}, datatype {code}")
    nx, ny, nz = dim[1:4]
    dtype = np.dtype(_DTYPES[code])
    data = np.frombuffer(raw[offset:offset + nx * ny * nz * dtype.itemsize], dtype=dtype).reshape(nz, ny, nx)
    data = data.astype(np.float64)
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data * (slope or 1.0) + inter
    return data


def derive(volume: np.ndarray) -> np.ndarray:
    """``(64, 128, 128)`` float slices in [0, 1] from the ``(181, 217, 181)`` Colin27 volume."""
    slices = volume[Z_PLANES][:, ::-1, :]  # anterior (high y) at the top
    ny, nx = slices.shape[1:]
    pad = ny - nx
    slices = np.pad(slices, ((0, 0), (0, 0), (pad // 2, pad - pad // 2)))
    t = torch.from_numpy(np.ascontiguousarray(slices)).unsqueeze(1)
    small = torch.nn.functional.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True,
                                            align_corners=False).squeeze(1).clamp_min(0).numpy()
    return small / small.max()


def main(src: str) -> None:
    digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
    images = derive(read_nifti(src))
    out = Path(__file__).with_name("colin27_axial.npz")
    np.savez_compressed(out, images=np.round(images * 65535).astype(np.uint16), z_index=np.array(Z_PLANES),
                        source=np.array(f"Colin27 ch2.nii.gz (sha256 {digest}) from Debian mricron-data "
                                        "1.2.20211006+dfsg-4; see README.md"))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {images.shape}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
