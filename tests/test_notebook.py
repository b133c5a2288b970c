"""examples/train.ipynb runs top to bottom in a real Jupyter kernel (nbconvert --execute), on a
small synthetic CIFAR-10 archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_cifar import make_cifar10_archive

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "train.ipynb"
WHY = "needs nbconvert and ipykernel: pip install -e '.[test]'"


@pytest.mark.slow
def test_the_example_notebook_runs(tmp_path):
    pytest.importorskip("nbconvert", reason=WHY)
    pytest.importorskip("ipykernel", reason=WHY)
    archive = make_cifar10_archive(tmp_path / "c10.tar.gz", 300, 40)
    env = {
        **os.environ,
        "CIFAR100_EXAMPLE_DATA": str(archive),
        "CIFAR100_EXAMPLE_OUT": str(tmp_path / "runs" / "notebook"),
        "CIFAR100_CACHE": str(tmp_path / "cache"),
        # Jupyter's and IPython's own files in the test's folder, not the user's
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    command = [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute",
               str(NOTEBOOK), "--output-dir", str(tmp_path), "--output", "executed.ipynb",
               "--ExecutePreprocessor.timeout=600"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    executed = json.loads((tmp_path / "executed.ipynb").read_text())
    text = "".join(
        "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
        for cell in executed["cells"]
        for out in cell.get("outputs", [])
    )
    assert "TrainingRun(" in text and "test top-1" in text
    assert (tmp_path / "runs" / "notebook" / "model.onnx").is_file()
