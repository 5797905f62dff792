"""Every script in benchmarks/ runs end to end in its smallest mode and prints or writes what
BENCHMARKS.md is made from (tables, JSON, figures). Budgets are tiny: these check that the
scripts work, not their numbers (a few sanity relations aside).

Scripts are imported and their ``main`` called in this process (``sys.argv`` patched), with
``ROOT`` pointed at a scratch copy of the repository layout where a script writes figures or
results into the repository by default.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture
def bench(monkeypatch, tmp_path):
    """``bench(name, *argv)``: import benchmarks/<name>.py afresh and run its main with ``argv``."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    # the scripts quieten loggers for their own output: give the next tests the levels they had
    levels = {name: log.level for name, log in logging.root.manager.loggerDict.items()
              if isinstance(log, logging.Logger)}

    def load(name):
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses and pickling look it up
        spec.loader.exec_module(mod)
        return mod

    def run(mod, *argv):
        monkeypatch.setattr(sys, "argv", [str(BENCH / f"{mod.__name__[7:]}.py"), *argv])
        mod.main()

    yield load, run
    torch.set_num_threads(threads)  # the scripts set their own
    for name, log in list(logging.root.manager.loggerDict.items()):
        if isinstance(log, logging.Logger):
            log.setLevel(levels.get(name, logging.NOTSET))


def scratch_root(tmp_path) -> Path:
    """A folder laid out as the repository (configs/, benchmarks/) for ``ROOT``-relative outputs."""
    root = tmp_path / "root"
    (root / "benchmarks").mkdir(parents=True)
    (root / "configs").symlink_to(ROOT / "configs")
    return root


def table_rows(text: str, header_start: str):
    """The data rows of the Markdown table whose header starts with ``header_start``."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    assert re.fullmatch(r"\|(-*:?\|)+", lines[i + 1].replace("---", "-")), lines[i + 1]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_machine():
    sys.path.insert(0, str(BENCH))
    try:
        from machine import cpu_name
    finally:
        sys.path.remove(str(BENCH))
    assert isinstance(cpu_name(), str) and cpu_name()


def test_state_evolution_smoke(bench, capsys):
    load, run = bench
    run(load("state_evolution"), "--smoke", "--snr_db", "40")
    (row,) = table_rows(capsys.readouterr().out, "| SNR (dB)")
    assert row[0] == "40" and len(row) == 8
    soft = float(row[2].split()[0])
    vals = [soft] + [float(row[k]) for k in (4, 5, 6, 7)]
    soft, mc_soft, bayes, mc_bayes, oracle = vals
    assert bayes < soft  # the Bayes-optimal denoiser beats the best soft threshold
    assert abs(mc_soft - soft) < 0.5 and abs(mc_bayes - bayes) < 0.5  # Monte Carlo confirms both fixed points
    assert oracle < soft


def test_sup_vs_unsup_smoke(bench, tmp_path, capsys):
    load, run = bench
    mod = load("sup_vs_unsup")
    root = scratch_root(tmp_path)
    mod.ROOT = root  # figures go to the scratch folder
    out = tmp_path / "svu.json"
    run(mod, "--smoke", "--out", str(out))
    res = json.loads(out.read_text())
    assert set(res) >= {"config", "lam", "classical", "learned", "mismatch", "budget"}
    for algo in ("ista", "iht"):
        for kind in ("sup", "unsup"):
            entry = res["learned"][algo][kind]["3"]
            assert entry["train"]["steps"] == 3 and len(entry["test"]["nmse_db"]) == 3
    for name in ("curves", "steps"):
        assert (root / "benchmarks" / "figures" / f"sup_vs_unsup_smoke_{name}.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "#### IHT" in text and "| 3 | learned, supervised (MSE) |" in text


def test_grad_modes_smallest(bench, tmp_path, capsys):
    load, run = bench
    out = tmp_path / "gm.json"
    run(load("grad_modes"), "--settings", "a", "--modes", "full", "--K", "4", "--no-accuracy",
        "--threads", "1", "--timeout", "300", "--out", str(out))
    res = json.loads(out.read_text())
    assert [(r["setting"], r["mode"], r["K"]) for r in res["results"]] == [("a", "full", 4)]
    for r in res["results"]:
        assert "error" not in r, r
        assert r["time_s"] > 0 and r["forward_iterations"] == 4 and r["params_with_grad"] > 0
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0
    assert res["accuracy"] is None and res["K"] == [4]
    rows = table_rows(capsys.readouterr().out, "| mode | K=4 |")
    assert [r[0] for r in rows] == ["full"] and rows[0][1] != "–"


def test_lista_ablation_smallest(bench, tmp_path, capsys):
    load, run = bench
    out = tmp_path / "abl.json"
    run(load("lista_ablation"), "--steps", "2", "--layers", "1", "--models", "LISTACP", "--variants", "analytic",
        "--jobs", "1", "--results", str(out))
    res = json.loads(out.read_text())
    (r,) = res["results"]
    assert (r["model"], r["variant"]) == ("LISTACP", "analytic") and len(r["test_nmse_db"]) == 1
    assert res["meta"]["steps_per_stage"] == 2
    rows = table_rows(capsys.readouterr().out, "| model | variant |")
    assert rows[0][0] == "LISTACP" and float(rows[0][2]) == pytest.approx(r["test_nmse_db"][0], abs=0.01)


def test_lista_family_and_last_layer_bound_smallest(bench, tmp_path, capsys):
    """One LISTA-CP run of a few seconds, its evaluation and table; then the last-layer analysis
    of that checkpoint."""
    load, run = bench
    mod = load("lista_family")
    root = scratch_root(tmp_path)
    mod.ROOT = root  # configs through the symlink, figures into the scratch folder
    out = tmp_path / "lf.json"
    run(mod, "--budget", "00:00:00:03", "--settings", "noiseless", "--models", "LISTA-CP", "--jobs", "1",
        "--work", str(tmp_path / "work"), "--results", str(out))
    res = json.loads(out.read_text())["results"]["noiseless"]
    curves = res["curves"]
    assert set(curves) == {"LISTA-CP", "ista", "fista"} and all(len(v) == 16 for v in curves.values())
    assert res["lasso"] is None and res["limits"] is None  # noiseless: no LASSO reference, no limits
    assert res["progress"]["LISTA-CP"]["steps"] > 0
    run_ = res["runs"]["LISTA-CP"]  # the budget is training CPU time, read back from the checkpoint
    assert run_["budget"] == "00:00:00:03 CPU" and run_["cpu_s"] >= 3.0 or res["progress"]["LISTA-CP"]["done"]
    assert (root / "benchmarks" / "figures" / "lista_family_noiseless.png").read_bytes()[:4] == b"\x89PNG"
    rows = table_rows(capsys.readouterr().out, "| layer |")
    assert len(rows) == 16 and rows[0][0] == "1"

    ckpt = res["runs"]["LISTA-CP"]["ckpt"]
    bound = tmp_path / "bound.json"
    run(load("last_layer_bound"), ckpt, "--names", "smoke", "--json", str(bound))
    (row,) = table_rows(capsys.readouterr().out, "| run |")
    assert row[0] == "smoke"
    r = json.loads(bound.read_text())["smoke"]
    assert r["model"] == "LISTACP"
    # had layers 1..15 been perfect, only noise is left: at least as good as the real last layer
    assert r["bound_this_W"]["nmse_db"] <= r["best_threshold_of_input"]["nmse_db"] + 1e-9


def test_main_job_short(bench, tmp_path, capsys):
    load, run = bench
    run(load("main_job"), "--max_time", "00:00:00:03", "--workdir", str(tmp_path / "job"))
    text = capsys.readouterr().out
    rows = table_rows(text, "| iteration | model | ISTA | FISTA |")
    assert len(rows) == 16 and all(len(r) == 4 for r in rows)
    assert re.search(r"final test NMSE .*\*\*-?\d+\.\d\d dB\*\*", text)


def test_overhead_smallest(bench, monkeypatch, capsys):
    """The timing loop at its smallest (``--smoke``: no deepinv venv, no compilation; compiling
    costs a minute here, and tests/test_compile.py covers it)."""
    load, run = bench
    monkeypatch.setattr(torch, "compile", lambda model, *a, **k: model)
    run(load("overhead"), "--smoke", "--layers", "2", "--batch", "4")
    text = capsys.readouterr().out
    rows = table_rows(text, "| training step |")
    names = [r[0] for r in rows]
    assert names[:2] == ["plain loop", "lean-kernel loop"] and "framework" in names
    assert float(rows[0][2]) == 1.0 and all(float(r[1]) > 0 for r in rows)
    assert "framework output vs plain loop at init: max rel. diff" in text

def test_mri_modl_smoke(bench, tmp_path, capsys):
    """benchmarks/mri_modl.py (issue 17): unroll fit on configs/modl.yaml then unroll evaluate,
    the report table and the results JSON (2 steps of a tiny MoDL, cheap baselines)."""
    load, run = bench
    mod = load("mri_modl")
    mod.ROOT = scratch_root(tmp_path)
    run(mod, "--smoke", "--workdir", str(tmp_path / "work"))
    out = capsys.readouterr().out
    rows = {r[0]: r for r in table_rows(out, "| method | SSIM")}
    assert len(rows) == 3 and {"zero-filled (SENSE)", "MoDL"} <= set(rows), rows
    assert any(k.startswith("CS, Haar wavelet ℓ1") and "λ = " in k for k in rows), rows
    assert all(0 < float(r[1]) <= 1 for r in rows.values())
    result = json.loads((mod.ROOT / "benchmarks" / "results" / "mri_modl.json").read_text())
    assert set(result["metrics"]) == {"zero_filled", "cs_wavelet", "MoDL"} and result["tuned"]["cs_wavelet"]["lam"] > 0
    assert (mod.ROOT / "benchmarks" / "figures" / "mri_modl_panel.png").is_file()


def test_mri_compare_smoke(bench, tmp_path, capsys):
    """benchmarks/mri_compare.py (issue 18): a tiny equal-compute run of the learned models with
    zero-filled and CS on 32² images; the peak-memory figure is the profiler's true peak, so it
    holds at least the parameters and, with checkpointing, is below the full-backprop peak."""
    load, run = bench
    mod = load("mri_compare")
    out_json = tmp_path / "mri_compare.json"
    methods = ["zero_filled", "varnet", "recurrent_varnet"]
    run(mod, "--steps", "2", "--cpu_budget", "60", "--size", "32", "--test_slices", "2", "--settings", "equispaced4",
        "--methods", *methods, "--output", str(out_json), "--figures", str(tmp_path / "fig"))
    out = capsys.readouterr().out
    rows = {r[0]: r for r in table_rows(out, "| method | SSIM")}
    assert set(rows) == {mod.LABELS[m] for m in methods}, rows
    res = json.loads(out_json.read_text())["results"]["equispaced4"]
    for name in methods[1:]:
        r = res[name]
        assert r["train_steps"] == 2 and r["train_cpu_seconds"] > 0
        assert r["peak_full"]["peak"] >= 4 * r["params"]  # float32 parameters are live during the step
        assert r["peak_checkpoint"]["peak"] < r["peak_full"]["peak"], (name, r["peak_checkpoint"], r["peak_full"])
    assert (tmp_path / "fig" / "mri_compare_equispaced4.png").is_file()


def test_adversarial_short(bench, tmp_path, capsys):
    """benchmarks/adversarial.py (issue 19): the three configs (and PGD training through the
    attack) fitted for two steps each, then attacked; the tables, the JSON and the figure."""
    load, run = bench
    mod = load("adversarial")
    mod.ROOT = scratch_root(tmp_path)
    run(mod, "--short", "--workdir", str(tmp_path / "work"))
    out = capsys.readouterr().out
    rows = table_rows(out, "| method | config |")
    assert len(rows) == 6 and all(int(r[3]) >= 1 for r in rows)
    acc = table_rows(out, "| method | clean |")
    assert len(acc) == 4 and all(0 <= float(v) <= 1 for r in acc for v in r[1:])
    result = json.loads((mod.ROOT / "benchmarks" / "results" / "adversarial.json").read_text())
    assert set(result["results"]) == {"standard", "pgd", "pgd_through", "finetune", "l2_pgd", "l2_pgd_through"}
    assert (mod.ROOT / "benchmarks" / "figures" / "adversarial_robust_accuracy.png").is_file()


def test_blind_calibration_short(bench, tmp_path, capsys):
    """benchmarks/blind_calibration.py (issue 19) in its smoke mode: the phase-transition table,
    the learned variant's table, the JSON and the heat map."""
    load, run = bench
    mod = load("blind_calibration")
    mod.ROOT = scratch_root(tmp_path)
    run(mod, "--short")
    out = capsys.readouterr().out
    rows = table_rows(out, "| n | m | transition")
    assert len(rows) == 2 and all(r[0] == "8" for r in rows)
    learned = table_rows(out, "| p | mp/(n+m) |")
    assert len(learned) == 3
    res = json.loads((mod.ROOT / "benchmarks" / "results" / "blind_calibration.json").read_text())
    assert len(res["cells"]) == 4 and all(0 <= c["success"] <= 1 for c in res["cells"])
    assert len(res["learned"]["step_sizes"]) == 3
    assert (mod.ROOT / "benchmarks" / "figures" / "blind_calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_dictionary_rank_short(bench, tmp_path, capsys):
    """benchmarks/dictionary_rank.py (issue 19) in its smoke mode: errors vs assumed rank."""
    load, run = bench
    mod = load("dictionary_rank")
    mod.ROOT = scratch_root(tmp_path)
    run(mod, "--short")
    rows = table_rows(capsys.readouterr().out, "| assumed rank |")
    assert [r[0] for r in rows] == ["1", "2 (true)", "4"]
    res = json.loads((mod.ROOT / "benchmarks" / "results" / "dictionary_rank.json").read_text())
    w_err = [r["W_err"] for r in res["curves"]["0.05"]]
    assert w_err[0] > w_err[1]  # a rank below the truth is biased (Eckart–Young), even on a smoke budget
    assert (mod.ROOT / "benchmarks" / "figures" / "dictionary_rank.png").read_bytes()[:4] == b"\x89PNG"


def test_blind_calibration_learned_grid_short(bench, tmp_path, capsys):
    """benchmarks/blind_calibration.py --learned-grid (issue 19): the learned variant against
    untrained layers over the grid (smoke budget)."""
    load, run = bench
    mod = load("blind_calibration")
    mod.ROOT = scratch_root(tmp_path)
    run(mod, "--short", "--learned-grid")
    rows = table_rows(capsys.readouterr().out, "| m | p | mp/(n+m) | untrained")
    assert len(rows) == 4
    res = json.loads((mod.ROOT / "benchmarks" / "results" / "blind_calibration_learned.json").read_text())
    assert len(res["cells"]) == 4 and all(0 <= c["learned"]["success"] <= 1 for c in res["cells"])
    assert (mod.ROOT / "benchmarks" / "figures" / "blind_calibration_learned.png").read_bytes()[:4] == b"\x89PNG"


def test_pnp_deblur_short(bench, tmp_path, capsys):
    """benchmarks/pnp_deblur.py (issue 15) in its smoke mode: the three learned denoisers through
    the CLI for a few steps, their denoising check, PnP-ADMM with every prior on one setting, the
    unrolled PnP for two steps; the JSON and both figures."""
    load, run = bench
    mod = load("pnp_deblur")
    mod.ROOT = scratch_root(tmp_path)
    run(mod, "--short")
    res = json.loads((mod.ROOT / "benchmarks" / "results" / "pnp_deblur_short.json").read_text())
    assert set(res["denoising"]) == {"noisy input", "DnCNN", "U-Net", "LPN", "LPN + Lipschitz penalty"}
    # ‖J‖₂ by power iteration of every learned prox at noisy and blurred test crops (2 images each)
    assert set(res["jacobian_norm"]) == {"DnCNN", "U-Net", "LPN", "LPN + Lipschitz penalty"}
    assert all(len(v["noisy"]) == 2 and min(v["blurred"]) > 0 for v in res["jacobian_norm"].values())
    # the noisy input's PSNR at σ_d = 0.05 is 20·log10(1/0.05) ≈ 26 dB (a fixed draw, data range 1)
    assert res["denoising"]["noisy input"] == pytest.approx(26.0, abs=0.3)
    (rows,) = res["settings"].values()
    assert set(rows) == {"blurred", "TV", "wavelet-l1", "DnCNN", "U-Net", "LPN", "LPN + Lipschitz penalty"}
    assert all(math.isfinite(r["psnr"]) and len(r["psnr_per_image"]) == 2 for r in rows.values())
    assert all(len(r["final_residual"]) == 2 for k, r in rows.items() if k != "blurred")
    assert res["unrolled"]["K"] == 10 and math.isfinite(res["unrolled"]["unrolled PnP, K = 10"]["psnr"])
    for name in ("pnp_deblur_panel_short.png", "pnp_deblur_residuals_short.png"):
        assert (mod.ROOT / "benchmarks" / "figures" / name).read_bytes()[:4] == b"\x89PNG"


def test_unrolled_pnp_short(bench, tmp_path, capsys):
    """benchmarks/unrolled_pnp.py (issue 15, reproduction 3) in its smoke mode: the DnCNN for a few
    steps, PnP-ADMM with the rule's and the tuned ρ, tied and untied unrolled networks for three
    steps each; the JSON (every row, the ρ grid, a validation curve per network) and the figure."""
    load, run = bench
    mod = load("unrolled_pnp")
    mod.ROOT = scratch_root(tmp_path)
    run(mod, "--short", "--setting", "2", "0.04", "--rho-start", "tuned")
    res = json.loads((mod.ROOT / "benchmarks" / "results" / "unrolled_pnp_blur2_noise0.04_short.json").read_text())
    rows = res["rows"]
    assert set(rows) == {"blurred input", "PnP-ADMM, rule rho, 10 iterations", "PnP-ADMM, rule rho, 12 iterations",
                         "PnP-ADMM, rho tuned on validation, 10 iterations", "unrolled PnP, K = 10, tied",
                         "unrolled PnP, K = 10, untied"}
    assert all(math.isfinite(r["psnr"]) and len(r["psnr_per_image"]) == 2 for r in rows.values())
    tuned = rows["PnP-ADMM, rho tuned on validation, 10 iterations"]["rho"]
    assert res["budget"]["rho_start"] == {"from": "tuned", "value": tuned}
    assert max(res["rho_grid_val_psnr"].values()) == res["rho_grid_val_psnr"][f"{tuned:.4g}"]
    assert len(rows["unrolled PnP, K = 10, tied"]["rho_learned"]) == 1
    assert len(rows["unrolled PnP, K = 10, untied"]["rho_learned"]) == 10
    assert res["training"]["unrolled PnP, K = 10, untied"]["step"] == [0, 2, 3]
    assert (mod.ROOT / "benchmarks" / "figures" / "unrolled_pnp_blur2_noise0.04_short.png").read_bytes()[:4] \
        == b"\x89PNG"


def test_lpn_pnp_diagnosis_smallest(bench, tmp_path, capsys):
    """benchmarks/lpn_pnp_diagnosis.py: one LPN variant trained for a few steps, its denoising,
    proximal-point and PnP-ADMM measurements in both update orders; the JSON."""
    load, run = bench
    mod = load("lpn_pnp_diagnosis")
    out = tmp_path / "diag.json"
    run(mod, "--steps", "4", "--iters", "3", "--variants", "learned quadratic", "--out", str(out))
    res = json.loads(out.read_text())["variants"]["learned quadratic"]
    assert res["noisy_psnr"] == pytest.approx(26.0, abs=0.3) and set(res["proximal_point"]) >= {"1", "30"}
    assert set(res["pnp_admm"]) == {f"blur{b} {o}" for b in ("1_noise0.02", "2_noise0.04")
                                    for o in ("x,z,u", "x,u,z")}
    assert all(set(r["psnr_at"]) == {"1", "2", "3"} and math.isfinite(r["psnr_at"]["3"])
               for r in res["pnp_admm"].values())
    # R along the proximal-point path, exact at points f(w): f is the prox of R, so it never increases
    path = [res["proximal_point"][k]["R"] for k in ("1", "2", "3", "5", "10", "20", "30")]
    for a, b in zip(path, path[1:]):
        assert all(rb <= ra + 1e-4 * (1 + abs(ra)) for ra, rb in zip(a, b)), (a, b)
    assert len(res["R_clean"]["R"]) == 2 and res["R_clean"]["inverse_converged"]


def test_compile_task_smallest(bench, capsys):
    """benchmarks/compile_task.py: eager against compiled task (``compile: true``) on one config,
    one round of one step; the table row."""
    load, run = bench
    mod = load("compile_task")
    run(mod, "--configs", "learned_ista", "--rounds", "1", "--steps", "1", "--warmup", "1", "--threads", "1")
    rows = table_rows(capsys.readouterr().out, "| config (model, K=16, batch 64) |")
    assert len(rows) == 1 and rows[0][0] == "`learned_ista.yaml`"
    assert float(rows[0][1]) > 0 and float(rows[0][2]) > 0


def test_lpn_denoise_short(bench, capsys):
    """benchmarks/lpn_denoise.py: a small ConvLPN and DnCNN trained for a few steps, the table."""
    load, run = bench
    mod = load("lpn_denoise")
    run(mod, "--short")
    rows = table_rows(capsys.readouterr().out, "| variant |")
    assert [r[0] for r in rows] == ["small:10", "dncnn"]
    assert all(float(r[1]) == pytest.approx(26.0, abs=0.5) for r in rows)  # σ = 0.05: 20·log10(20) dB
    assert all(math.isfinite(float(v)) for r in rows for v in r[2:])
    with pytest.raises(SystemExit, match="INIT:BETA"):
        mod.build("paper:100", 4, 2)
