"""fastMRI data and metrics (issue 17): fastMRI-convention metrics against scikit-image, the
centre crop, the writer's files, the reader and data module, and the predictions writer."""

from __future__ import annotations

from pathlib import Path

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


def test_ssim_per_slice_batched():
    from unroll.metrics import fastmri_ssim_per_slice

    gt, pred = _volume_pair(seed=4)
    g, p = torch.from_numpy(gt).double(), torch.from_numpy(pred).double()
    per = fastmri_ssim_per_slice(g, p, torch.full((4,), float(g.max()), dtype=torch.float64))
    assert per.shape == (4,) and float(per.mean()) == pytest.approx(float(fastmri_ssim(g, p)), abs=1e-12)
    for s in range(4):
        ref = skimage_metrics.structural_similarity(gt[s].astype(np.float64), pred[s].astype(np.float64),
                                                    data_range=float(gt[s].max()))
        assert float(fastmri_ssim_per_slice(g, p)[s]) == pytest.approx(ref, abs=1e-4)


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


# ------------------------------------------------------------------------------ writer and reader
import xml.etree.ElementTree as ET  # noqa: E402

import h5py  # noqa: E402

from unroll.data import (Batch, FastMRIDataModule, FastMRIFileError, FastMRISliceDataset, birdcage_maps,  # noqa: E402
                         write_fastmri_file, write_fastmri_volume)
from unroll.operators import SENSE, MaskFunc, fft2c, ifft2c, rss  # noqa: E402

NS = {"m": "http://www.ismrm.org/ISMRMRD"}


def _images(slices=3, h=32, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(slices, h, w, generator=g)
    img[:, :4] = 0  # some background
    return img


def _header_value(xml: bytes, path: str) -> int:
    return int(ET.fromstring(xml).find("/".join(f"m:{p}" for p in path.split("/")), NS).text)


def test_writer_round_trip_layout(tmp_path):
    """A written file holds fastMRI's datasets, dtypes, shapes, attributes and header fields, and
    its target is the RSS of its k-space's coil images, cropped to the recon size."""
    imgs = _images()
    path = write_fastmri_volume(tmp_path / "file_brain_001.h5", imgs, num_coils=4, noise=0.01, readout_oversampling=2,
                                kspace_width=28, seed=3, acquisition="AXT2", patient_id="p1")
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["ismrmrd_header", "kspace", "reconstruction_rss"]
        k, t = f["kspace"][()], f["reconstruction_rss"][()]
        assert k.dtype == np.complex64 and k.shape == (3, 4, 64, 28)
        assert t.dtype == np.float32 and t.shape == (3, 32, 24)
        assert f.attrs["max"] == pytest.approx(float(t.max())) and f.attrs["acquisition"] == "AXT2"
        assert f.attrs["norm"] == pytest.approx(float(np.linalg.norm(t.astype(np.float64))), rel=1e-6)
        assert f.attrs["patient_id"] == "p1"
        xml = f["ismrmrd_header"][()]
    assert isinstance(xml, bytes)
    assert [_header_value(xml, f"encoding/encodedSpace/matrixSize/{a}") for a in "xyz"] == [64, 28, 1]
    assert [_header_value(xml, f"encoding/reconSpace/matrixSize/{a}") for a in "xyz"] == [32, 24, 1]
    assert _header_value(xml, "encoding/encodingLimits/kspace_encoding_step_1/center") == 14
    assert _header_value(xml, "encoding/encodingLimits/kspace_encoding_step_1/maximum") == 27
    assert _header_value(xml, "acquisitionSystemInformation/receiverChannels") == 4
    assert ET.fromstring(xml).find("m:encoding/m:trajectory", NS).text == "cartesian"
    full = rss(ifft2c(torch.from_numpy(k)), dim=1)
    np.testing.assert_allclose(full[:, 16:48, 2:26].numpy(), t, rtol=1e-5, atol=1e-6)
    # the image is where the simulation put it: |RSS| ≈ the magnitudes (maps normalised, little noise)
    assert float((full[:, 16:48, 2:26] - imgs).abs().mean()) < 0.02


def test_writer_then_reader_reads_back_identically(tmp_path):
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 3, 16, 12)) + 1j * rng.standard_normal((2, 3, 16, 12))).astype(np.complex64)
    target = rng.random((2, 8, 10)).astype(np.float32)
    path = write_fastmri_file(tmp_path / "a.h5", k, reconstruction_rss=target)
    ds = FastMRISliceDataset(path, mask_func=MaskFunc("random", center_fractions=[0.25], accelerations=[2.0]))
    assert len(ds) == 2
    s = ds[1]
    m = s.operator["mask"]
    assert isinstance(s, Batch) and m.shape == (1, 1, 12) and 0 < int(m.sum()) < 12
    assert torch.equal(s.y, torch.from_numpy(k[1]) * m)  # the file's k-space, exactly, where sampled
    assert torch.equal(s.x, torch.from_numpy(target[1]))
    assert s.meta["fname"] == "a.h5" and int(s.meta["slice_num"]) == 1
    assert float(s.meta["max"]) == pytest.approx(float(target.max()))
    assert s.y.dtype == torch.complex64 and s.x.dtype == torch.float32
    assert s.operator["sensitivities"].shape == (3, 16, 12)
    ssq = (s.operator["sensitivities"].abs() ** 2).sum(0)
    assert torch.allclose(ssq, torch.ones_like(ssq), atol=1e-5)


def test_masks_per_slice_deterministic_and_padding_respected(tmp_path):
    imgs = _images(slices=4, h=32, w=32)
    path = write_fastmri_volume(tmp_path / "v.h5", imgs, num_coils=2, seed=1)
    mf = MaskFunc("random", center_fractions=[0.08], accelerations=[4.0])
    a, b = FastMRISliceDataset(path, mask_func=mf), FastMRISliceDataset(path, mask_func=mf)
    masks = [a[i].operator["mask"] for i in range(4)]
    assert all(torch.equal(m, b[i].operator["mask"]) for i, m in enumerate(masks))  # same in every run
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1  # but one per slice
    assert all(torch.equal(a[i].y, a[i].y) for i in range(2))
    # unseeded (training) masks differ from call to call
    c = FastMRISliceDataset(path, mask_func=mf, seeded=False)
    assert len({tuple(c[0].operator["mask"].flatten().tolist()) for _ in range(6)}) > 1
    # the masked k-space is zero where not sampled
    s = a[0]
    assert bool((s.y * (1 - s.operator["mask"])).abs().max() == 0)


def test_header_padding_unsampled(tmp_path):
    """Columns outside the header's phase-encoding limits are never marked as sampled."""
    rng = np.random.default_rng(1)
    k = (rng.standard_normal((1, 2, 16, 20)) + 1j * rng.standard_normal((1, 2, 16, 20))).astype(np.complex64)
    k[..., :3] = 0
    k[..., 17:] = 0
    path = write_fastmri_file(tmp_path / "p.h5", k, reconstruction_rss=rng.random((1, 16, 16)).astype(np.float32),
                              acquired=(3, 16))
    for i in range(5):
        dense = MaskFunc("random", center_fractions=[0.3], accelerations=[1.2])
        m = FastMRISliceDataset(path, mask_func=dense, seeded=False)[0].operator["mask"].flatten()
        assert m[:3].sum() == 0 and m[17:].sum() == 0 and m[3:17].sum() >= 8


def test_builtin_datamodule_yields_contract_batches(tmp_path):
    dm = FastMRIDataModule(cache_dir=str(tmp_path), eval_batch_size=2)
    batch = next(iter(dm.val_dataloader()))
    B = 2
    assert batch.y.shape == (B, 8, 128, 128) and batch.y.dtype == torch.complex64
    assert batch.x.shape == (B, 128, 128) and batch.x.dtype == torch.float32
    assert batch.operator["mask"].shape == (B, 1, 1, 128) and batch.operator["mask"].dtype == torch.float32
    assert batch.operator["sensitivities"].shape == (B, 8, 128, 128)
    assert batch.meta["fname"] == ["colin27_slab3.h5"] * B and batch.meta["slice_num"].tolist() == [0, 1]
    for key, dtype in (("slice_num", torch.long), ("max", torch.float32), ("data_range", torch.float32),
                       ("num_low_freqs", torch.long)):
        assert batch.meta[key].shape == (B,) and batch.meta[key].dtype == dtype
    op = dm.build_operator(batch.operator)
    assert isinstance(op, SENSE)
    # the target is the RSS of the fully sampled data; the zero-filled SENSE image is close where sampled
    zf = op.adjoint(batch.y).abs()
    assert zf.shape == (B, 128, 128)
    assert 0.3 < float(fastmri_ssim(batch.x, zf)) < 0.95
    # splits are disjoint volumes
    names = {s: {v.path.rsplit("/", 1)[-1] for v in dm.dataset(s).volumes} for s in ("train", "val", "test")}
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"]) and len(names["test"]) == 2
    assert len(dm.dataset("train")) == 40


# ------------------------------------------------------------------------------ bad input
def _good_file(path, coils=3, width=12, maps=False):
    rng = np.random.default_rng(5)
    k = (rng.standard_normal((2, coils, 16, width)) + 1j * rng.standard_normal((2, coils, 16, width))).astype(np.complex64)
    sm = (rng.standard_normal((coils, 16, width)) + 0j).astype(np.complex64) if maps else None
    return write_fastmri_file(path, k, reconstruction_rss=rng.random((2, 8, 8)).astype(np.float32),
                              sensitivity_maps=sm)


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def test_missing_kspace_named(tmp_path):
    p = _edit(_good_file(tmp_path / "nokspace.h5"), lambda f: f.__delitem__("kspace"))
    with pytest.raises(FastMRIFileError, match=r"nokspace\.h5.*no 'kspace'"):
        FastMRISliceDataset(p)


def test_coil_mismatch_with_maps_named(tmp_path):
    p = _good_file(tmp_path / "coils.h5", coils=3, maps=True)
    _edit(p, lambda f: (f.__delitem__("sensitivity_maps"),
                        f.create_dataset("sensitivity_maps", data=np.ones((4, 16, 12), np.complex64))))
    with pytest.raises(FastMRIFileError, match=r"coils\.h5.*coil dimension.*3 coils"):
        FastMRISliceDataset(p, sensitivities="file")
    ok = FastMRISliceDataset(_good_file(tmp_path / "maps.h5", maps=True), sensitivities="file")[0]
    assert ok.operator["sensitivities"].shape == (3, 16, 12)


def test_mask_width_mismatch_named(tmp_path):
    p = _edit(_good_file(tmp_path / "maskw.h5"), lambda f: f.create_dataset("mask", data=np.ones(10, bool)))
    with pytest.raises(FastMRIFileError, match=r"maskw\.h5.*'mask'.*width must be the k-space width 12"):
        FastMRISliceDataset(p)


def test_truncated_file_named_and_skippable(tmp_path):
    good = _good_file(tmp_path / "good.h5")
    bad = tmp_path / "truncated.h5"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastMRIFileError, match=r"truncated\.h5.*cannot be read as HDF5"):
        FastMRISliceDataset([good, bad])
    with pytest.warns(UserWarning, match=r"truncated\.h5"):
        ds = FastMRISliceDataset([good, bad], on_error="skip")
    assert len(ds) == 2 and ds.skipped and "truncated.h5" in ds.skipped[0][0]


def test_header_without_recon_size_named(tmp_path):
    p = _good_file(tmp_path / "header.h5")

    def drop_recon(f):
        xml = f["ismrmrd_header"][()]
        root = ET.fromstring(xml)
        enc = root.find("m:encoding", NS)
        enc.remove(enc.find("m:reconSpace", NS))
        del f["ismrmrd_header"]
        f.create_dataset("ismrmrd_header", data=np.bytes_(ET.tostring(root)))

    _edit(p, drop_recon)
    with pytest.raises(FastMRIFileError, match=r"header\.h5.*reconSpace/matrixSize.*recon size"):
        FastMRISliceDataset(p)


def test_wrong_challenge_and_missing_target_named(tmp_path):
    p = _good_file(tmp_path / "multi.h5")
    with pytest.raises(FastMRIFileError, match=r"multi\.h5.*singlecoil"):
        FastMRISliceDataset(p, challenge="singlecoil")
    q = _edit(_good_file(tmp_path / "notarget.h5"), lambda f: f.__delitem__("reconstruction_rss"))
    with pytest.raises(FastMRIFileError, match=r"notarget\.h5.*no 'reconstruction_rss'"):
        FastMRISliceDataset(q)


# ------------------------------------------------------------------------------ batching, single coil
def test_variable_widths_batched_by_shape(tmp_path):
    from torch.utils.data import DataLoader, RandomSampler

    from unroll.data import BucketBatchSampler, collate_fastmri

    for i, width in enumerate([24, 28, 24]):
        write_fastmri_volume(tmp_path / f"v{i}.h5", _images(slices=3, h=16, w=16, seed=i), num_coils=2,
                             kspace_width=width, seed=i)
    ds = FastMRISliceDataset(tmp_path)
    loader = DataLoader(ds, batch_sampler=BucketBatchSampler(RandomSampler(ds), 4), collate_fn=collate_fastmri)
    seen = []
    for batch in loader:
        widths = {"v0.h5": 24, "v1.h5": 28, "v2.h5": 24}
        assert all(widths[f] == batch.y.shape[-1] for f in batch.meta["fname"])
        seen += list(zip(batch.meta["fname"], batch.meta["slice_num"].tolist()))
        op = SENSE(batch.operator["sensitivities"], batch.operator["mask"])
        assert op.adjoint(batch.y).shape == (batch.y.shape[0], 16, batch.y.shape[-1])
    assert sorted(seen) == sorted((f"v{i}.h5", s) for i in range(3) for s in range(3))
    assert len(loader) == 3  # 6 of width 24 -> 4 + 2, 3 of width 28 -> 3
    with pytest.raises(ValueError, match="differ within a batch"):
        collate_fastmri([ds[0], ds[3]])


def test_singlecoil_challenge(tmp_path):
    write_fastmri_volume(tmp_path / "s.h5", _images(slices=2, h=16, w=16), challenge="singlecoil", seed=0)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["kspace"].shape == (2, 16, 16) and "reconstruction_esc" in f
    s = FastMRISliceDataset(tmp_path / "s.h5", challenge="singlecoil")[1]
    assert s.y.shape == (1, 16, 16) and torch.equal(s.operator["sensitivities"], torch.ones(1, 16, 16,
                                                                                           dtype=torch.complex64))
    assert s.x.shape == (16, 16)


# ------------------------------------------------------------------------------ predictions
class ZeroFilled(torch.nn.Module):
    """``Aᴴ y`` (the SENSE zero-filled image), a parameter-free model for the predict tests."""

    num_layers = 1

    def forward(self, y, op, **kwargs):
        return op.adjoint(y)


def _small_builtin(tmp_path):
    from unroll.data import write_builtin_dataset

    write_builtin_dataset(tmp_path / "files", slabs=[1, 5])
    return tmp_path / "files"


def test_predictions_in_fastmri_layout_readable(tmp_path):
    """trainer.predict writes one `reconstruction` file per input volume, with its name; they are
    read back and scored against the inputs, and equal the model's output cropped."""
    import lightning as L

    from unroll.train import FastMRIPredictionWriter, ReconstructionTask, read_reconstructions, score_reconstructions

    files = _small_builtin(tmp_path)
    dm = FastMRIDataModule(str(files), test_dir=".", eval_batch_size=3)
    writer = FastMRIPredictionWriter(str(tmp_path / "pred"))
    trainer = L.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(ReconstructionTask(ZeroFilled()), datamodule=dm, return_predictions=False)
    recons = read_reconstructions(tmp_path / "pred")
    assert sorted(recons) == ["colin27_slab1.h5", "colin27_slab5.h5"]
    assert {p.name for p in writer.written} == set(recons)
    for name, vol in recons.items():
        assert vol.shape == (8, 128, 128) and vol.dtype == torch.float32
    ds = dm.dataset("test")
    s = ds[9]  # slab5, slice 1
    op = SENSE(s.operator["sensitivities"][None], s.operator["mask"][None])
    np.testing.assert_allclose(recons["colin27_slab5.h5"][1].numpy(), op.adjoint(s.y[None])[0].abs().numpy(),
                               rtol=1e-5, atol=1e-6)
    scores = score_reconstructions(tmp_path / "pred", files)
    assert set(scores) == {"colin27_slab1.h5", "colin27_slab5.h5", "mean"}
    target = torch.stack([ds[i].x for i in range(8, 16)]).double()
    assert scores["colin27_slab5.h5"]["ssim"] == pytest.approx(
        float(fastmri_ssim(target, recons["colin27_slab5.h5"].double())), abs=1e-6)
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(recons)


def test_predict_on_test_files_with_masks_and_cli(tmp_path, monkeypatch):
    """`unroll predict` on a folder of test files (undersampled k-space + mask, no target) writes
    the fastMRI layout by default (the data module's prediction_layout)."""
    from unroll.train.cli import main

    from unroll.train import read_reconstructions

    full = write_fastmri_volume(tmp_path / "full.h5", _images(slices=2, h=24, w=24), num_coils=2, seed=0)
    with h5py.File(full, "r") as f:
        k, header = f["kspace"][()], f["ismrmrd_header"][()]
    mask = MaskFunc()(24, key="file_test.h5")
    (tmp_path / "test").mkdir()
    write_fastmri_file(tmp_path / "test" / "file_test.h5", k * mask.numpy(), mask=mask, acceleration=4.0,
                       num_low_frequency=2, header=header)
    ds = FastMRISliceDataset(tmp_path / "test", require_target=False)
    assert ds[0].x is None and torch.equal(ds[0].operator["mask"].flatten(), mask.float())
    with pytest.raises(FastMRIFileError, match="can only be predicted"):
        FastMRISliceDataset(tmp_path / "test")
    monkeypatch.chdir(tmp_path)  # without a checkpoint, predictions go to ./predictions
    main(["predict", "--model", "unroll.train.ReconstructionTask", "--model.model", f"{__name__}.ZeroFilled",
          "--data", "unroll.data.FastMRIDataModule", "--data.root", str(tmp_path), "--data.predict_dir", "test",
          "--data.mask", '{"class_path": "unroll.operators.MaskFunc", "init_args": {"kind": "equispaced", '
                         '"center_fractions": [0.04], "accelerations": [8]}}',
          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    recons = read_reconstructions(tmp_path / "predictions")
    assert list(recons) == ["file_test.h5"] and recons["file_test.h5"].shape == (2, 24, 24)


def test_header_parses_with_the_ismrmrd_schema_bindings():
    """The header is accepted by the ISMRMRD package's schema bindings (unknown elements refused)."""
    ismrmrd_xsd = pytest.importorskip("ismrmrd.xsd")
    from unroll.data import ismrmrd_header

    h = ismrmrd_xsd.CreateFromDocument(ismrmrd_header((64, 28), (32, 24), 4, 3, acquired=(2, 25)))
    enc = h.encoding[0]
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (64, 28)
    assert (enc.reconSpace.matrixSize.x, enc.reconSpace.matrixSize.y) == (32, 24)
    lim = enc.encodingLimits.kspace_encoding_step_1
    assert (lim.minimum, lim.maximum, lim.center) == (0, 23, 12)
    assert h.acquisitionSystemInformation.receiverChannels == 4 and h.experimentalConditions.H1resonanceFrequency_Hz > 0


def test_dataset_pickles_without_open_files_and_scales(tmp_path):
    import pickle

    from torch.utils.data import DataLoader

    from unroll.data import collate_fastmri

    path = write_fastmri_volume(tmp_path / "v.h5", 3.0 * _images(slices=2, h=16, w=16), num_coils=2, seed=0)
    ds = FastMRISliceDataset(path)
    first = ds[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))  # an open h5py file cannot be pickled: the handles are not carried
    assert torch.equal(clone[0].x, first.x)
    batches = list(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_fastmri))
    assert torch.equal(batches[0].x[0], first.x) and torch.equal(batches[0].y[0], first.y)
    scaled = FastMRISliceDataset(path, scale_by_max=True)[0]
    vmax = float(first.meta["max"])
    assert float(scaled.meta["scale"]) == pytest.approx(vmax) and float(scaled.meta["max"]) == pytest.approx(1.0)
    assert torch.allclose(scaled.x * vmax, first.x) and torch.allclose(scaled.y * vmax, first.y)


def test_builtin_temporary_files_outlive_the_datamodule():
    import gc

    loader = FastMRIDataModule().test_dataloader()  # the data module itself is dropped at once
    gc.collect()
    folder = Path(loader.dataset.volumes[0].path).parent
    assert next(iter(loader)).y.shape == (1, 8, 128, 128)
    del loader
    gc.collect()
    assert not folder.exists()  # removed with the last dataset referring to it


def test_predict_variable_widths_in_buckets(tmp_path):
    """Lightning's predict loop wraps the bucket sampler; every slice of every width is written."""
    import lightning as L

    from unroll.train import FastMRIPredictionWriter, ReconstructionTask, read_reconstructions

    for i, width in enumerate([20, 24, 20]):
        write_fastmri_volume(tmp_path / "data" / f"v{i}.h5", _images(slices=3, h=16, w=16, seed=i), num_coils=2,
                             kspace_width=width, seed=i)
    dm = FastMRIDataModule(str(tmp_path / "data"), test_dir=".", eval_batch_size=4)
    loader = dm.predict_dataloader()
    assert loader.batch_sampler.__class__.__name__ == "BucketBatchSampler"
    writer = FastMRIPredictionWriter(str(tmp_path / "pred"))
    trainer = L.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(ReconstructionTask(ZeroFilled()), datamodule=dm, return_predictions=False)
    recons = read_reconstructions(tmp_path / "pred")
    assert sorted(recons) == ["v0.h5", "v1.h5", "v2.h5"]
    assert all(v.shape == (3, 16, 16) for v in recons.values())  # cropped to the recon size


def test_builtin_asset_and_files_are_deterministic(tmp_path):
    from unroll.data import load_builtin_images, write_builtin_dataset

    images = load_builtin_images()
    assert images.shape == (64, 128, 128) and images.dtype == np.float32 and images.max() == 1.0
    assert (images > 0.05).mean() > 0.3  # a head, not an empty field of view
    a = write_builtin_dataset(tmp_path / "a", slabs=[2])[0]
    b = write_builtin_dataset(tmp_path / "b", slabs=[2])[0]
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert np.array_equal(fa["kspace"][()], fb["kspace"][()]) and fa["kspace"].shape == (8, 8, 128, 128)
        # the target is the anatomy of slices 16..23 (coil maps normalised, noise 1 % of the max)
        assert np.abs(fa["reconstruction_rss"][()] - images[16:24]).mean() < 0.02
