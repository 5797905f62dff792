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
