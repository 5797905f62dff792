"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tests use small problems: intra-op threads only add overhead (and contention on a
    loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def float64_default():
    """Run a test with float64 as torch's default dtype (models built inside it are float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def _cli_argv(monkeypatch):
    """The tests call the CLI with ``main(args)``: pytest's own command line in ``sys.argv``
    would make LightningCLI warn that both were given."""
    monkeypatch.setattr("sys.argv", ["unroll"])
