"""ONNX weight-only quantization of transformers (MatMulNBits): the `algorithm` onnxruntime offers (rtn, hqq,
gptq; awq skipped with the reason), `group_size` as on torch, 4-bit bytes in the size breakdown, and
int8-static quantizing a BertModel's embeddings like int8-dynamic does. Tiny models from transformers configs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # exports and quantizes real graphs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nbopt import data as nbdata  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.backends.onnx import OnnxBackend  # noqa: E402
from nbopt.demo import token_batch  # noqa: E402
from nbopt.errors import CandidateError, NboptError, SkipCandidate  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402


def _ctx(tmp_path: Path, name: str, calib=None) -> Context:
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return Context(workdir=tmp_path / name, calib=calib)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = np.random.default_rng(0).integers(0, 1000, size=(96, 16)).astype(np.int64)
    calib, ev = nbdata.load({"input_ids": ids[:64]}, "calib"), nbdata.load({"input_ids": ids[64:]})
    backend = OnnxBackend()
    prepared = backend.prepare(model, ev)
    base = backend.baseline(prepared, _ctx(tmp_path_factory.mktemp("gpt2"), "base"))
    return backend, prepared, calib, ev, base


def _logits(backend, art, ev) -> np.ndarray:
    runner = backend.load(art)
    return np.concatenate([runner(x) for x, _ in ev.batches(16)])


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


@pytest.mark.parametrize("algorithm", ["rtn", "hqq", "gptq"])
def test_gpt2_int4_algorithms_are_small_and_faithful(gpt2, tmp_path, algorithm):
    backend, prepared, calib, ev, base = gpt2
    recipe = backend.validate(Recipe("int4-weight-only", {"algorithm": algorithm, "group_size": 32}))
    art = backend.apply(prepared, recipe, _ctx(tmp_path, algorithm, calib))
    assert art.info["algorithm"] == algorithm and art.info["group_size"] == 32
    assert f"algorithm={algorithm}" in art.notes and "8/13 MatMul (int4)" in art.notes
    assert art.size_bytes < 0.7 * base.size_bytes  # the tied embedding / lm_head stays fp32
    assert _agreement(_logits(backend, art, ev), _logits(backend, base, ev)) >= 0.95
    if algorithm == "gptq":  # calibrated on calib=, and says when the library changed nothing
        assert "calibrated on 64 examples" in art.notes and "exactly rtn's values" in art.notes
    # the size breakdown counts MatMulNBits' packed weights as 4-bit bytes (two values per byte)
    sizes = backend.size_breakdown(art)
    assert sizes["by_dtype"]["int4"] >= 8 * 64 * 64 // 2 and sizes["by_dtype"].get("int8", 0) == 0
    assert any("packed two 4-bit values" in n for n in sizes["notes"])


@pytest.mark.parametrize("recipe, params, reason", [
    ("int4-weight-only", {"algorithm": "awq"}, "AWQ only through NVIDIA ModelOpt"),
    ("int8-weight-only", {"algorithm": "gptq"}, "4-bit weights only"),
    ("int8-weight-only", {"algorithm": "hqq"}, "float zero points"),
    ("int4-weight-only", {"algorithm": "hqq", "symmetric": True}, "zero point per group"),
])
def test_what_onnxruntime_cannot_run_is_skipped_with_the_reason(gpt2, tmp_path, recipe, params, reason):
    backend, prepared, calib, _, _ = gpt2
    with pytest.raises(SkipCandidate, match=reason):
        backend.apply(prepared, backend.validate(Recipe(recipe, params)), _ctx(tmp_path, "x", calib))


def test_gptq_needs_calibration_and_group_size_is_the_shared_name(gpt2, tmp_path):
    backend, prepared, _, _, _ = gpt2
    with pytest.raises(CandidateError, match="needs calibration data"):
        backend.apply(prepared, backend.validate(Recipe("int4-weight-only", {"algorithm": "gptq"})),
                      _ctx(tmp_path, "nocalib"))
    with pytest.raises(NboptError, match="no parameter 'block_size'"):
        backend.validate(Recipe("int4-weight-only", {"block_size": 32}))
    # the torch backend's int4 recipe takes the same names
    from nbopt.backends.torch import TorchBackend

    spec = TorchBackend.handlers["int4-weight-only"].params("int4-weight-only")
    assert {"group_size", "algorithm"} <= set(spec)


def test_bert_int8_static_quantizes_the_embeddings_like_dynamic(tmp_path):
    """int8-static's QDQ graph quantizes the embedding Gathers too, so it is about int8-dynamic's size."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=256, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    calib = nbdata.load(token_batch(64, 1, vocab=1000, length=16), "calib")
    ev = nbdata.load(token_batch(32, 2, vocab=1000, length=16))
    backend = OnnxBackend()
    prepared = backend.prepare(model, ev)
    base = backend.baseline(prepared, _ctx(tmp_path, "base"))
    static = backend.apply(prepared, backend.validate(Recipe("int8-static")), _ctx(tmp_path, "s", calib))
    dynamic = backend.apply(prepared, backend.validate(Recipe("int8-dynamic")), _ctx(tmp_path, "d", calib))
    assert "2/2 Gather" in static.info["quantized"] and "12/12 MatMul" in static.info["quantized"]
    assert static.size_bytes <= 1.1 * dynamic.size_bytes and static.size_bytes < 0.3 * base.size_bytes
    ref, out = _logits(backend, base, ev), _logits(backend, static, ev)
    cos = (ref * out).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(out, axis=-1)
    assert float(cos.mean()) > 0.99
