"""Unrolled models with a fixed K under torch.compile: same outputs and gradients, one graph."""

import pytest
import torch

from unroll import MatrixOperator
from unroll.models import ALISTA, LearnedISTA


def problem(m=20, n=40, batch=8):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, n, generator=g) / m ** 0.5
    x = torch.randn(batch, n, generator=g) * (torch.rand(batch, n, generator=g) < 0.1)
    op = MatrixOperator(a)
    return op, op(x), x


@pytest.mark.parametrize("make", [lambda op: LearnedISTA(6), lambda op: ALISTA(6, op)], ids=["learned_ista", "alista"])
def test_compiled_model_matches_eager(make):
    torch._dynamo.reset()
    op, y, x = problem()
    model = make(op)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: no graph break allowed
    out_c = compiled(y, op)
    out_e = model(y, op)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    g_c = torch.autograd.grad(((compiled(y, op) - x) ** 2).mean(), list(model.parameters()))
    g_e = torch.autograd.grad(((model(y, op) - x) ** 2).mean(), list(model.parameters()))
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_task_compile_option_trains_and_evaluates(tmp_path, monkeypatch):
    """`--model.init_args.compile=true` trains through torch.compile (graphs are built) to the
    same weights as eager training, and `unroll evaluate` of its checkpoint (compiled too)
    scores it as the eager checkpoint is scored."""
    import json
    from pathlib import Path

    from torch._dynamo.utils import counters

    from unroll.train.cli import main

    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "learned_ista.yaml")
    tiny = ["--trainer.max_steps=3", "--data.init_args.problem=gaussian", "--data.init_args.m=20",
            "--data.init_args.n=40", "--data.init_args.train_batches=3", "--data.init_args.val_size=32",
            "--data.init_args.test_size=32", "--model.init_args.model.init_args.num_layers=3",
            "--trainer.enable_progress_bar=false"]
    results = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        root = tmp_path / str(compiled)
        main(["fit", "--config", config, *tiny, f"--trainer.default_root_dir={root}",
              f"--model.init_args.compile={str(compiled).lower()}"])
        if compiled:
            assert counters["stats"]["unique_graphs"] > 0
        ckpt = root / "runs" / "learned_ista" / "version_0" / "checkpoints" / "last.ckpt"
        main(["evaluate", "--ckpt_path", str(ckpt), "--output_dir", str(root / "eval")])
        results[compiled] = (torch.load(ckpt, weights_only=False)["state_dict"],
                             json.loads((root / "eval" / "metrics.json").read_text())["LearnedISTA"]["nmse_db"])
    (eager, eager_curve), (comp, comp_curve) = results[False], results[True]
    assert eager.keys() == comp.keys()  # the compiled wrapper adds no state
    for k in eager:
        torch.testing.assert_close(comp[k], eager[k], rtol=1e-4, atol=1e-6)
    assert comp_curve == pytest.approx(eager_curve, abs=1e-3)


def test_compile_mode_is_checked():
    from unroll.train import ReconstructionTask

    with pytest.raises(ValueError, match="compile_mode: expected one of .*max-autotune.*got 'fast'"):
        ReconstructionTask(LearnedISTA(2), compile=True, compile_mode="fast")


def test_compiled_task_compiles_the_model_once(monkeypatch):
    # the operator's cached ‖A‖² is computed eagerly before the compiled call: computed inside
    # the graph, its cache (set during the first call) failed the next call's guards and the
    # whole model was compiled a second time
    from torch._dynamo.testing import CompileCounter

    from unroll.data import Batch
    from unroll.train import ReconstructionTask

    counter = CompileCounter()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, **kw: real_compile(model, backend=counter))
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 20, generator=g)
    x = torch.randn(4, 20, generator=g)
    task = ReconstructionTask(LearnedISTA(3), operator=MatrixOperator(a), compile=True)
    opt = torch.optim.Adam(task.model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = task.training_step(Batch(x @ a.T, x), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert counter.frame_count == 1, f"the model was compiled {counter.frame_count} times"
    torch._dynamo.reset()
