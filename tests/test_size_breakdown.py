"""Where the bytes go: each backend's ``reports.size_breakdown`` on small real artifacts.

Every breakdown is read from the artifact file alone; its total is the bytes on disk, its dtype bytes fit in
that total, its segments add up to it, and the weight dtype is the one the recipe's name promises -- except
for the torch fp16 .pte of a CNN, which honestly shows its convolution weights still stored as fp32.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # builds real artifacts (the fast tier: pytest -m "not slow")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nbopt import data as nbdata  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402
from nbopt.speed import DTYPES, recipe_check, weight_bytes  # noqa: E402


def _check_shape(b: dict, artifact) -> None:
    """The contract every breakdown keeps, whatever the format."""
    json.dumps(b)  # JSON-safe
    assert b["total_bytes"] == artifact.size_bytes == sum(os.path.getsize(f) for f in artifact.files)
    assert set(b["by_dtype"]) == set(DTYPES)
    assert all(isinstance(v, int) and v >= 0 for v in b["by_dtype"].values())
    assert sum(b["by_dtype"].values()) <= b["total_bytes"]
    assert sum(b["segments"].values()) == b["total_bytes"]
    assert all(v >= 0 for v in b["segments"].values())
    assert 0 < len(b["largest"]) <= 10
    sizes = [t["bytes"] for t in b["largest"]]
    assert sizes == sorted(sizes, reverse=True)
    for t in b["largest"]:
        assert set(t) == {"name", "dtype", "shape", "bytes"} and t["name"] and isinstance(t["shape"], list)
    assert isinstance(b["notes"], list)


def _ctx(root, name, calib=None):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    return Context(workdir=d, calib=calib)


def _torch_data(shape=(3, 16, 16), n=32):
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    y = np.arange(n) % 10
    return nbdata.load((x, y), role="calib"), nbdata.load((x, y), role="eval")


# ------------------------------------------------------------------------------------------------ torch
@pytest.fixture(scope="module")
def torch_artifacts(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch")
    pytest.importorskip("torchao")
    from nbopt.backends.torch import TorchBackend

    torch.manual_seed(0)
    # the CNN of the issue: almost all of its weights are convolution filters
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    calib, ev = _torch_data()
    backend = TorchBackend()
    prepared = backend.prepare(model, ev)
    root = tmp_path_factory.mktemp("sizes_torch")
    arts = {"baseline": backend.baseline(prepared, _ctx(root, "base"))}
    for label, recipe in {"fp16": Recipe("fp16"), "int8-static": Recipe("int8-static"),
                          "int4-weight-only": Recipe("int4-weight-only", {"group_size": 32, "activations": "float"}),
                          "int4-packed": Recipe("int4-weight-only", {"group_size": 32})}.items():
        arts[label] = backend.apply(prepared, backend.validate(recipe), _ctx(root, label, calib))
    from nbopt.backends.torch.reports import size_breakdown

    return {k: (a, size_breakdown(a)) for k, a in arts.items()}


def test_torch_pte_breakdowns_keep_the_contract(torch_artifacts):
    for name, (art, b) in torch_artifacts.items():
        _check_shape(b, art)
    for name in ("baseline", "fp16", "int8-static"):
        art, b = torch_artifacts[name]
        assert art.format == "pte", name
        assert b["segments"]["delegate blobs (XNNPACK)"] > 0
        assert "constant segment" in b["segments"] and "program/other" in b["segments"]
        # the XNNPACK weights (named data) hold every weight byte the breakdown counts
        assert b["segments"]["delegate weights (named data)"] == sum(b["by_dtype"].values())


def test_torch_fp32_baseline_is_fp32(torch_artifacts):
    art, b = torch_artifacts["baseline"]
    assert b["by_dtype"]["fp32"] == weight_bytes(b) == (864 + 32 + 18432 + 64 + 640 + 10) * 4
    assert b["largest"][0]["name"] == "XNNPACK Conv2d #2 filter" and b["largest"][0]["shape"] == [64, 3, 3, 32]
    assert recipe_check("baseline", b) == ""


def test_torch_fp16_pte_keeps_convolution_weights_in_fp32(torch_artifacts):
    """The torch fp16 .pte of a CNN is nearly as large as fp32: ExecuTorch's XNNPACK serializer writes
    convolution filters and biases as fp32 (XNNPACK converts them to fp16 at load), only the Linear layer is
    stored in fp16. The breakdown shows it, and recipe_check says the recipe did not do what its name says."""
    base, b32 = torch_artifacts["baseline"]
    art, b = torch_artifacts["fp16"]
    assert art.size_bytes > 0.9 * base.size_bytes  # the symptom: "fp16" is not half the size
    conv = (864 + 32 + 18432 + 64) * 4  # conv filters + biases, fp32
    assert b["by_dtype"]["fp32"] == conv
    assert b["by_dtype"]["fp16"] == (640 + 10) * 2  # the Linear layer only
    assert b["by_dtype"]["fp32"] > 0.9 * weight_bytes(b)
    for t in b["largest"]:
        assert t["dtype"] == ("fp32" if "Conv2d" in t["name"] else "fp16"), t
    assert any("stored as fp32" in n and "Conv2d" in n and "force_fp32" in n for n in b["notes"])
    check = recipe_check("fp16", b)
    assert check.startswith("fp16 in name, but 98% of the weight bytes are still fp32")
    assert "Conv2d #2 filter" in check


def test_torch_int8_static_is_int8(torch_artifacts):
    art, b = torch_artifacts["int8-static"]
    assert b["by_dtype"]["int8"] > b["by_dtype"]["fp32"]
    assert b["by_dtype"]["int8"] == 864 + 18432 + 640
    assert recipe_check("int8-static", b) == ""


def test_torch_pte_int4_is_packed_two_values_per_byte(torch_artifacts):
    """The default int4-weight-only (int8 dynamic activations) is an XNNPACK .pte with the Linear's 640
    weights in 320 bytes."""
    art, b = torch_artifacts["int4-packed"]
    assert art.format == "pte"
    assert b["by_dtype"]["int4"] == 640 // 2  # (the Conv filters stay fp32: torchao's int4 takes Linear only)


def test_torch_pt2_int4_counts_unpacked_int4_as_int8(torch_artifacts):
    art, b = torch_artifacts["int4-weight-only"]
    if art.format != "pt2":
        pytest.skip(f"int4-weight-only lowered to {art.format} here")
    assert {"weights", "program/other"} <= set(b["segments"])
    assert b["by_dtype"]["int8"] >= 640 and b["by_dtype"]["int4"] == 0
    assert any("[-8, 7]" in n for n in b["notes"])
    assert recipe_check("int4-weight-only", b).startswith("int4 in name, but no weight is stored in 4 bits")


# ------------------------------------------------------------------------------------------------ onnx
@pytest.fixture(scope="module")
def onnx_artifacts(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from nbopt.backends.onnx import OnnxBackend
    from nbopt.backends.onnx.reports import size_breakdown

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).eval()
    calib, ev = _torch_data((64,))
    backend = OnnxBackend()
    prepared = backend.prepare(model, ev)
    root = tmp_path_factory.mktemp("sizes_onnx")
    arts = {"baseline": backend.baseline(prepared, _ctx(root, "base"))}
    for label, recipe in {"int8-dynamic": Recipe("int8-dynamic"),
                          "int4-weight-only": Recipe("int4-weight-only", {"group_size": 32})}.items():
        arts[label] = backend.apply(prepared, backend.validate(recipe), _ctx(root, label, calib))
    return {k: (a, size_breakdown(a)) for k, a in arts.items()}


def test_onnx_breakdowns(onnx_artifacts):
    for name, (art, b) in onnx_artifacts.items():
        _check_shape(b, art)
        assert b["segments"]["initializers"] > 0 and "graph/other" in b["segments"]
    _, base = onnx_artifacts["baseline"]
    assert base["by_dtype"]["fp32"] == (64 * 256 + 256 + 256 * 10 + 10) * 4
    _, dyn = onnx_artifacts["int8-dynamic"]
    assert dyn["by_dtype"]["int8"] > dyn["by_dtype"]["fp32"]
    assert recipe_check("int8-dynamic", dyn) == ""
    _, int4 = onnx_artifacts["int4-weight-only"]
    assert int4["by_dtype"]["int4"] == (64 * 256 + 256 * 10) // 2  # MatMulNBits: two 4-bit values per byte
    assert int4["by_dtype"]["int4"] > int4["by_dtype"]["fp32"]
    assert any("MatMulNBits" in n and "bits=4" in n for n in int4["notes"])
    assert recipe_check("int4-weight-only", int4) == ""


# ------------------------------------------------------------------------------------------------ tflite
@pytest.fixture(scope="module")
def tflite_artifacts(tmp_path_factory):
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from nbopt.backends.tflite.backend import TFLiteBackend
    from nbopt.backends.tflite.reports import size_breakdown

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
                              keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10)])
    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 1), dtype=np.float32)
    calib, ev = nbdata.load(x, role="calib"), nbdata.load((x, np.arange(32) % 10), role="eval")
    backend = TFLiteBackend()
    prepared = backend.prepare(model, ev)
    root = tmp_path_factory.mktemp("sizes_tflite")
    arts = {"baseline": backend.baseline(prepared, _ctx(root, "base"))}
    for label in ("fp16", "int8-static"):
        arts[label] = backend.apply(prepared, backend.validate(Recipe(label)), _ctx(root, label, calib))
    return {k: (a, size_breakdown(a)) for k, a in arts.items()}


def test_tflite_breakdowns(tflite_artifacts):
    for name, (art, b) in tflite_artifacts.items():
        _check_shape(b, art)
        assert b["segments"]["buffers"] > 0 and "other" in b["segments"]
    _, base = tflite_artifacts["baseline"]
    kernels = (8 * 9 + 512 * 64 + 64 * 10) * 4  # the biases start as zeros: the converter stores equal buffers once
    assert kernels <= base["by_dtype"]["fp32"] <= kernels + (8 + 64 + 10) * 4
    _, fp16 = tflite_artifacts["fp16"]
    assert fp16["by_dtype"]["fp16"] > fp16["by_dtype"]["fp32"]
    assert any("DEQUANTIZE" in n for n in fp16["notes"])
    assert recipe_check("fp16", fp16) == ""
    _, int8 = tflite_artifacts["int8-static"]
    assert int8["by_dtype"]["int8"] > int8["by_dtype"]["fp32"]
    assert int8["largest"][0]["dtype"] == "int8" and int8["largest"][0]["shape"] == [64, 512]


# ------------------------------------------------------------------------------------------------ coreml
@pytest.fixture(scope="module")
def coreml_artifacts(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("coremltools")
    from nbopt.backends.coreml import CoreMLBackend
    from nbopt.backends.coreml.reports import size_breakdown

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10)).eval()
    _, ev = _torch_data((64,), n=16)
    backend = CoreMLBackend()
    prepared = backend.prepare(model, ev)
    root = tmp_path_factory.mktemp("sizes_coreml")
    arts = {"baseline": backend.baseline(prepared, _ctx(root, "base")),
            "fp16": backend.apply(prepared, backend.validate(Recipe("fp16")), _ctx(root, "fp16"))}
    return {k: (a, size_breakdown(a)) for k, a in arts.items()}


def test_coreml_breakdowns(coreml_artifacts):
    for name, (art, b) in coreml_artifacts.items():
        _check_shape(b, art)
        assert b["segments"]["weights"] > 0 and "program/other" in b["segments"]
        assert weight_bytes(b) <= b["segments"]["weights"]  # every counted tensor lives in the weights file
    _, base = coreml_artifacts["baseline"]
    assert base["by_dtype"]["fp32"] == (64 * 128 + 128 + 128 * 10 + 10) * 4
    _, fp16 = coreml_artifacts["fp16"]
    assert fp16["by_dtype"]["fp16"] == (64 * 128 + 128 + 128 * 10 + 10) * 2 and fp16["by_dtype"]["fp32"] == 0
    assert recipe_check("fp16", fp16) == ""
