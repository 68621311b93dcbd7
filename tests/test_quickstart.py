"""docs/quickstart.ipynb: its code is the builder's, and that code runs (without Jupyter)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def builder():
    spec = importlib.util.spec_from_file_location("build_quickstart", DOCS / "build_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_notebook_holds_the_builders_cells_with_outputs():
    notebook = json.loads((DOCS / "quickstart.ipynb").read_text())
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert ["".join(cell["source"]) for cell in cells] == builder().code_cells()
    assert all(cell["outputs"] for cell in cells[1:])  # executed: every cell after the imports shows something
    assert not any(output["output_type"] == "error" for cell in cells for output in cell["outputs"])


def test_the_notebook_code_runs_from_top_to_bottom(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text("\n\n".join(builder().code_cells()) + "\nprint('quickstart ran')\n")
    environment = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "quickstart ran" in done.stdout and "mask levels: ((768, 1024), (384, 512), (192, 256))" in done.stdout
    # the notebook shows a working tool: a mean thresholded Jaccard of at least 0.8 on its test images
    headline = float(done.stdout.split("headline, mean thresholded Jaccard:")[1].split()[0])
    assert headline >= 0.8, done.stdout
