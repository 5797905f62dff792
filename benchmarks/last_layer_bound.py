"""What the last layer of a coupled soft-thresholding network can reach on noisy data.

For a checkpoint of LISTA-CP (or any model whose layers compute ``η_θ(x − Wᵀ(A x − y))``,
:class:`~unroll.models.lista_cp.CoupledStep`) trained on the standard problem at SNR 40 dB,
splits the input of the last layer, ``v = x₁₅ + Wᵀ(y − A x₁₅)``, on the test signals into

    v − x = (I − WᵀA)(x₁₅ − x)   (interference: what the earlier layers left)
          + Wᵀe                  (measurement noise, column i amplified by ‖w_i‖),

and reports the NMSE (dB) of soft thresholding ``v`` at the best threshold, next to what the
same last layer (best threshold) would reach had layers 1..15 delivered ``x`` exactly (then
``v = x + Wᵀe``), for the layer's ``W`` and for ``W = A`` (unit columns: the least noise gain a
column with ``w_iᵀa_i = 1`` can have).

    python benchmarks/last_layer_bound.py CKPT [CKPT ...] [--names ...]

Float32 as trained; one thread; about a second per checkpoint.
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional

import torch

THRESHOLDS = [i * 0.001 for i in range(1, 31)]


def _db(err: torch.Tensor, x: torch.Tensor) -> float:
    return float(10 * torch.log10(err.square().sum() / x.square().sum()))


def best_soft(v: torch.Tensor, x: torch.Tensor) -> Dict[str, float]:
    """NMSE (dB) of ``η_θ(v)`` against ``x`` at the best ``θ`` of :data:`THRESHOLDS`."""
    scores = {th: _db(torch.sign(v) * (v.abs() - th).clamp_min(0) - x, x) for th in THRESHOLDS}
    th = min(scores, key=scores.get)
    return {"theta": th, "nmse_db": scores[th]}


def analyse(ckpt: str, snr_db: float = 40.0) -> Dict[str, object]:
    from unroll.data import SparseRecoveryDataModule
    from unroll.train import ReconstructionTask

    task = ReconstructionTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    model = task.model
    last = model.unrolled.steps[-1]
    if not hasattr(last, "effective_weight") or last.percent:
        raise SystemExit(f"{ckpt}: the last layer is not a coupled soft-thresholding layer (LISTA-CP)")
    data = dict(task.cli_config["data"]["init_args"]) if task.cli_config else {"problem": "standard"}
    data["snr_db"] = snr_db
    dm = SparseRecoveryDataModule(**data)
    dm.setup("test")
    A, y, x = dm.A, dm.test_split.y, dm.test_split.x
    with torch.no_grad():
        out = model(y, dm.operator, return_trajectory=True)
        x_prev = out.trajectory[-2]
        W = last.effective_weight()
        e = y - x @ A.mT  # the noise of these measurements
        v = x_prev - (x_prev @ A.mT - y) @ W
        interference = ((x - x_prev) @ A.mT) @ W - (x - x_prev)
        noise = e @ W
        return {
            "model": type(model).__name__,
            "output_db": _db(out.x - x, x),
            "previous_layer_db": _db(x_prev - x, x),
            "noise_gain": float(W.norm(dim=0).mean()),
            "diag_WtA": float((W * A).sum(0).mean()),
            "theta_last": float(last.theta()),
            "input_error_db": _db(v - x, x),
            "interference_db": _db(interference, x),
            "noise_db": _db(noise, x),
            "best_threshold_of_input": best_soft(v, x),
            "bound_this_W": best_soft(x + noise, x),
            "bound_W_eq_A": best_soft(x + e @ A, x),
        }


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="+")
    ap.add_argument("--names", nargs="*")
    ap.add_argument("--snr_db", type=float, default=40.0)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = args.names or args.ckpt
    if len(names) != len(args.ckpt):
        raise SystemExit("--names: one name per checkpoint")
    rows = {n: analyse(c, args.snr_db) for n, c in zip(names, args.ckpt)}
    print("| run | layer 15 | layer 16 | mean ‖w_i‖ (noise gain) | mean w_iᵀa_i | last layer's input: interference / "
          "noise / total | best θ on it | layers 1–15 perfect, this W | layers 1–15 perfect, W = A |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n} | {r['previous_layer_db']:.2f} | {r['output_db']:.2f} | {r['noise_gain']:.2f} | {r['diag_WtA']:.2f} | "
              f"{r['interference_db']:.1f} / {r['noise_db']:.1f} / {r['input_error_db']:.1f} | "
              f"{r['best_threshold_of_input']['nmse_db']:.2f} | {r['bound_this_W']['nmse_db']:.2f} | "
              f"{r['bound_W_eq_A']['nmse_db']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
