"""Every Python code block in guides/*.md runs, in order, in one namespace per guide."""

import pathlib
import re

import pyro
import pytest

GUIDES = sorted((pathlib.Path(__file__).parent.parent / "guides").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("path", GUIDES, ids=[p.name for p in GUIDES])
def test_guide_code_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyro.clear_param_store()
    blocks = BLOCK.findall(path.read_text())
    assert blocks, f"{path.name} has no python code block"
    namespace = {"__name__": f"guide_{path.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"{path.name}, code block {i} failed: {type(e).__name__}: {e}") from e
