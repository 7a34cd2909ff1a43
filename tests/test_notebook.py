"""The comparison notebook executes top to bottom, offline, and shows its outputs."""

import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).parents[1] / "experiments" / "compare_strategies.ipynb"


SHORTER = "ROUNDS = 2\nREGIME_ROUNDS = 1"  # the same cells, shorter grids


def test_compare_strategies_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, "the notebook has one cell tagged 'parameters'"
    nb.cells.insert(parameters[0] + 1, nbformat.v4.new_code_cell(SHORTER))
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert len(images) >= 5 and len(tables) >= 3
    grid = tmp_path / "runs" / "notebook-grid"
    results = (grid / "results.csv").read_text()
    assert results.count("finished") == 5
    assert pd.read_csv(grid / "rounds.csv")["round"].max() == 2  # the override reached the grid
    assert {p.name for p in (tmp_path / "runs" / "notebook-plots").iterdir()} >= {"accuracy.png", "features.png"}
    shutil.rmtree(grid)
    regimes = (tmp_path / "runs" / "notebook-regimes" / "results.csv").read_text()
    assert regimes.count("finished") == 6  # 3 methods x {iid, domains}
