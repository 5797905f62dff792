"""The README's Python snippet runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python snippet"
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "adjoint test:" in out and "FISTA: converged" in out
    assert "implicit: converged backward: converged" in out and "CG: converged" in out
    assert "logistic: converged backward: cg converged" in out and "ADMM: ADMMState converged backward: converged" in out


def test_readme_commands_name_existing_configs():
    text = README.read_text()
    for cfg in re.findall(r"--config (configs/\S+\.yaml)", text):
        assert (README.parent / cfg).is_file(), cfg
