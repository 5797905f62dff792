"""fastMRI data and metrics (issue 17): fastMRI-convention metrics against scikit-image, the
centre crop, the writer's files, the reader and data module, and the predictions writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unroll.metrics import FastMRINMSE, FastMRIPSNR, FastMRISSIM, fastmri_nmse, fastmri_psnr, fastmri_ssim
from unroll.operators.mri import center_crop

skimage_metrics = pytest.importorskip("skimage.metrics")


def _volume_pair(seed=0, shape=(4, 40, 36), noise=0.2, dtype=np.float32):
    rng = np.random.default_rng(seed)
    gt = (rng.random(shape) * 3.0 + np.linspace(0, 2, shape[-1])).astype(dtype)
    pred = (gt + noise * rng.standard_normal(shape)).astype(dtype)
    return gt, pred


def _skimage_ssim(gt, pred, maxval=None):
    """fastMRI's ``evaluate.ssim``: mean over slices of scikit-image's SSIM, data range the volume max."""
    maxval = gt.max() if maxval is None else maxval
    return np.mean([skimage_metrics.structural_similarity(gt[s], pred[s], data_range=maxval)
                    for s in range(gt.shape[0])])


# ------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("noise", [0.02, 0.5])
def test_ssim_equals_scikit_image(dtype, noise):
    gt, pred = _volume_pair(noise=noise, dtype=dtype)
    ref = _skimage_ssim(gt.astype(np.float64), pred.astype(np.float64))
    ours = fastmri_ssim(torch.from_numpy(gt), torch.from_numpy(pred))
    assert abs(float(ours) - ref) < 1e-4
    # the data range is the *volume's* max, not each slice's
    assert abs(float(fastmri_ssim(torch.from_numpy(gt), torch.from_numpy(pred), maxval=7.5))
               - _skimage_ssim(gt.astype(np.float64), pred.astype(np.float64), 7.5)) < 1e-4


def test_ssim_of_identical_volumes_is_one_and_is_differentiable():
    gt, _ = _volume_pair()
    t = torch.from_numpy(gt).double()
    assert float(fastmri_ssim(t, t)) == pytest.approx(1.0, abs=1e-12)
    p = (t + 0.1).requires_grad_()
    fastmri_ssim(t, p).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_psnr_and_nmse_equal_fastmri_formulas():
    gt, pred = _volume_pair(seed=1)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    ref_psnr = skimage_metrics.peak_signal_noise_ratio(g, p, data_range=g.max())
    assert float(fastmri_psnr(torch.from_numpy(g), torch.from_numpy(p))) == pytest.approx(ref_psnr, abs=1e-5)
    ref_nmse = np.linalg.norm(g - p) ** 2 / np.linalg.norm(g) ** 2
    assert float(fastmri_nmse(torch.from_numpy(g), torch.from_numpy(p))) == pytest.approx(ref_nmse, rel=1e-10)


def test_metric_inputs_checked():
    gt, pred = _volume_pair()
    with pytest.raises(ValueError, match="prediction"):
        fastmri_ssim(torch.from_numpy(gt), torch.from_numpy(pred[:, :-1]))
    with pytest.raises(ValueError, match="slices, H, W"):
        fastmri_ssim(torch.from_numpy(gt[0]), torch.from_numpy(pred[0]))


def test_volume_metrics_accumulate_per_volume_and_average_over_volumes():
    """Two volumes split over uneven batches (one slice repeated, as a distributed sampler pads):
    the metric classes give the mean over volumes of the functional per-volume values."""
    vols = {"a.h5": _volume_pair(seed=2, shape=(5, 24, 20)), "b.h5": _volume_pair(seed=3, shape=(3, 24, 20), noise=1.0)}
    items = [(f, s) for f in vols for s in range(vols[f][0].shape[0])] + [("a.h5", 4)]
    metrics = {"nmse": FastMRINMSE(), "psnr": FastMRIPSNR(), "ssim": FastMRISSIM()}
    for start, stop in [(0, 3), (3, 4), (4, 9)]:
        chunk = items[start:stop]
        gt = torch.stack([torch.from_numpy(vols[f][0][s]) for f, s in chunk]).double()
        pred = torch.stack([torch.from_numpy(vols[f][1][s]) for f, s in chunk]).double()
        meta = {"fname": [f for f, _ in chunk], "slice_num": torch.tensor([s for _, s in chunk]),
                "max": torch.tensor([float(vols[f][0].max()) for f, _ in chunk], dtype=torch.float64)}
        for m in metrics.values():
            m.update(pred, gt, meta=meta)
    fns = {"nmse": fastmri_nmse, "psnr": fastmri_psnr, "ssim": fastmri_ssim}
    for key, m in metrics.items():
        per_vol = {f: float(fns[key](torch.from_numpy(g).double(), torch.from_numpy(p).double()))
                   for f, (g, p) in vols.items()}
        assert m.per_volume() == pytest.approx(per_vol, rel=1e-6)
        assert float(m.compute()) == pytest.approx(np.mean(list(per_vol.values())), rel=1e-6)
    # SSIM with file names needs each volume's max
    with pytest.raises(ValueError, match="data_range"):
        FastMRISSIM().update(pred, gt, fname=["a.h5"] * len(gt), slice_num=torch.arange(len(gt)))


def test_center_crop_as_fastmri():
    x = torch.arange(7 * 10).view(1, 7, 10)
    c = center_crop(x, (3, 4))
    assert torch.equal(c, x[:, 2:5, 3:7])
    assert torch.equal(center_crop(x, (7, 10)), x)
    z = torch.randn(2, 3, 8, 9, dtype=torch.complex64)
    assert torch.equal(center_crop(z, (8, 1)), z[..., 4:5])
    with pytest.raises(ValueError, match="shape"):
        center_crop(x, (8, 4))
