"""The workshop notebooks: committed clean, and each runs top to bottom.

Each notebook is executed in a fresh Jupyter kernel (nbclient) with `OPD_LAB_QUICK=1`,
its own smoke setting (the tiny test lab and a few steps), against the session's tiny
lab in `OPD_LAB_HOME`. A cell that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_workshop_series_is_complete():
    assert [path.name[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{path.name} cell {index} has outputs: clear them before committing")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_starts_with_what_you_will_learn_and_a_settings_cell(path):
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and "What you will learn" in "".join(cells[0]["source"])
    first_code = next(cell for cell in cells if cell["cell_type"] == "code")
    assert "SEED" in "".join(first_code["source"])  # the one place to change settings
    assert any("<details>" in "".join(cell["source"]) for cell in cells)  # answers hidden until opened


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_runs_top_to_bottom(path, lab_home, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    monkeypatch.setenv("OPD_LAB_QUICK", "1")  # the kernel inherits this process's environment
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors
    figures = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
               if "application/vnd.plotly.v1+json" in output.get("data", {})]
    assert figures, "every notebook shows at least one plotly figure"


def test_an_executed_notebook_exports_to_html_with_its_figures(tmp_path, monkeypatch):
    """Workshops share HTML exports: every figure must be drawn in them, offline, with plotly.js once."""
    nbformat = pytest.importorskip("nbformat")
    nbconvert = pytest.importorskip("nbconvert")
    from nbclient import NotebookClient

    monkeypatch.setenv("OPD_LAB_QUICK", "1")
    path = next(path for path in NOTEBOOKS if path.name.startswith("01"))  # no lab needed: seconds
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    figures = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
               if "application/vnd.plotly.v1+json" in output.get("data", {})]
    assert figures and all("text/html" in output["data"] for output in figures)  # the fallback travels along
    html, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    assert html.count('class="plotly-graph-div"') == len(figures)
    assert html.count("Plotly.newPlot(") >= len(figures)
    assert html.count("* plotly.js v") == 1  # the library itself, embedded once
    assert not re.search(r'<script[^>]*src="https?://cdn\.plot\.ly', html)  # nothing fetched from the network
