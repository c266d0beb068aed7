"""One recipe vocabulary: shared parameters with one name, per-backend limits as skipped rows, short row
names. Resolving a recipe imports no framework, so these run in the fast tier."""
import pytest

from nbopt.backends import get_backend
from nbopt.errors import NboptError
from nbopt.recipes import RECIPES, Recipe, missing_calib


def resolve(backend: str, name: str, **params):
    return get_backend(backend).resolve(Recipe(name, params))


def test_a_value_one_backend_cannot_honour_is_that_backends_skip():
    full, reason = resolve("torch", "int8-static", calibration="histogram")
    assert reason == "" and full.params["calibration"] == "histogram"
    _, reason = resolve("onnx", "int8-static", calibration="histogram")
    assert "cannot do calibration='histogram'" in reason and "percentile" in reason


def test_group_size_is_one_name_on_torch_and_onnx():
    for backend in ("torch", "onnx"):
        full, reason = resolve(backend, "int4-weight-only", group_size=64)
        assert reason == "" and full.params["group_size"] == 64
    with pytest.raises(NboptError, match="block_size"):
        get_backend("onnx").validate(Recipe("int4-weight-only", {"block_size": 64}))


def test_a_value_no_backend_allows_is_one_sentence():
    with pytest.raises(NboptError, match="allowed: 'minmax', 'histogram', 'entropy', 'percentile'"):
        resolve("onnx", "int8-static", calibration="kl")


def test_another_backends_own_parameter_is_a_skip_not_an_error():
    full, reason = resolve("tflite", "int8-static", io="int8")
    assert reason == "" and full.params["io"] == "int8"
    _, reason = resolve("torch", "int8-static", io="int8")
    assert "has no parameter 'io'" in reason


@pytest.mark.parametrize("backend,given,label", [
    ("onnx", {}, "int8-static"),  # onnx's own default activations (uint8) is not shown
    ("onnx", {"calibration": "minmax"}, "int8-static(calibration=minmax)"),  # set by the user: shown
    ("onnx", {"activations": "int8"}, "int8-static(activations=int8)"),
    ("tflite", {"io": "int8"}, "int8-static(io=int8)"),
])
def test_row_names_show_what_the_user_set(backend, given, label):
    full, _ = resolve(backend, "int8-static", **given)
    assert full.label == label
    assert set(full.params) >= set(RECIPES["int8-static"].params)  # the stored params are complete


def test_calibration_need_is_decided_in_one_place():
    assert missing_calib("int8-static", None).startswith("Recipe 'int8-static' needs calibration data")
    assert missing_calib("int8-static", object()) == ""
    assert missing_calib("fp16", None) == ""


@pytest.mark.slow
def test_study_with_two_backends_skips_what_one_cannot_do(tmp_path):
    """{"int8-static": {"calibration": "histogram"}} with torch and onnx: torch builds it, onnx's row is
    skipped with the reason, the study runs (it used to raise)."""
    torch = pytest.importorskip("torch")
    import numpy as np

    import nbopt

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x = np.random.default_rng(0).random((48, 8), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 3, 48)
    study = nbopt.optimize(net, calib=(x, y), eval=(x, y), backends=["torch", "onnx"], progress=False,
                           recipes=[{"int8-static": {"calibration": "histogram"}}], store=tmp_path / "s",
                           measure_memory=False)
    rows = study.results.set_index("name")
    assert rows.loc["torch:int8-static(calibration=histogram)", "status"] == "ok"
    onnx_row = rows.loc["onnx:int8-static(calibration=histogram)"]
    assert onnx_row["status"] == "skipped" and "cannot do calibration='histogram'" in onnx_row["error"]
