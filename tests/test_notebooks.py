"""The three notebooks run top to bottom (at small settings) on the embedded set, and use only
the public API: names importable from the ``fire_reg`` top level."""
import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import fire_reg

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
MULTIMODAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "multimodal"
"""The real colour / angiogram pair notebook 03 registers when it is there."""


def test_all_three_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_dataset", "02_training", "03_evaluation"]


def _fire_reg_uses(source: str) -> list[str]:
    """Every way a code cell reaches into fire_reg: 'module:name' for each import."""
    uses = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            uses += [f"{alias.name}:" for alias in node.names  # `import fire_reg` itself is fine
                     if alias.name.startswith("fire_reg.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fire_reg"):
            uses += [f"{node.module}:{alias.name}" for alias in node.names]
    return uses


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_only_the_public_api(path):
    notebook = nbformat.read(path, as_version=4)
    uses = [use for cell in notebook.cells if cell.cell_type == "code"
            for use in _fire_reg_uses(cell.source)]
    assert uses, "the notebook should use fire_reg"
    private = [use for use in uses
               if not use.startswith("fire_reg:") or use.split(":")[1] not in fire_reg.__all__]
    assert not private, f"imports beyond fire_reg's public names: {private}"
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 5, \
        "tell the story in markdown cells"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("FIRE_REG_SMALL", "1")
    monkeypatch.setenv("FIRE_REG_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("FIRE_REG_MULTIMODAL", str(MULTIMODAL))
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit notebooks without outputs"
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code"
              for o in cell.outputs if o.output_type == "error"]
    assert not errors
