"""Every example notebook runs headless from top to bottom without an error (nbclient)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

import nbopt  # noqa: E402

REPO = Path(nbopt.__file__).resolve().parent.parent
EXAMPLES = REPO / "example_notebooks"
NEEDS = {  # notebook -> modules it needs
    "quickstart.ipynb": ["torch"],
    "teaching.ipynb": ["torch"],
    "keras_tflite.ipynb": ["tensorflow", "keras"],
    "onnx_byo.ipynb": ["torch", "onnx", "onnxruntime", "onnxscript"],
    "llm_on_a_phone.ipynb": ["torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxscript", "gguf"],
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(NEEDS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_notebook_runs(name, tmp_path, monkeypatch):
    for module in NEEDS[name]:
        pytest.importorskip(module)
    shutil.copy(EXAMPLES / name, tmp_path / name)
    # the kernel imports this checkout of nbopt, and writes its store and exports in tmp_path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(tmp_path / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # the %%optimize panel is a widget in the saved outputs, and the study it ran is there too
    if name in ("quickstart.ipynb", "teaching.ipynb", "keras_tflite.ipynb"):
        widget_outputs = [o for c in nb.cells for o in c.get("outputs", [])
                          if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widget_outputs
