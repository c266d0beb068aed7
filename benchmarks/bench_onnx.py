"""ONNX backend benchmark: nbopt's handlers vs calling onnxruntime.quantization directly, and the
fidelity / size of nbopt's default sweep against quantize_dynamic with default options.

Model: a small BERT encoder classifier (transformers BertConfig, 2 layers, hidden 128) trained for a
few seconds on a synthetic token task, exported by nbopt (dynamo exporter). Fidelity is measured on
held-out eval data against the fp32 ONNX model's outputs, everything run in onnxruntime (CPU).

    python benchmarks/bench_onnx.py
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402

from nbopt import data as nbdata  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.backends.onnx import OnnxBackend  # noqa: E402
from nbopt.backends.onnx.quant import make_reader  # noqa: E402
from nbopt.quiet import quiet  # noqa: E402
from nbopt.backends.onnx.convert import model_files  # noqa: E402
from nbopt.backends.onnx.sensitivity import fidelity  # noqa: E402
from nbopt.demo import tiny_bert_encoder, token_batch  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

V, L = 500, 24


def tokens(n, rng):
    x = token_batch(n, int(rng.integers(1 << 31)), vocab=V, length=L, min_length=8)
    label = np.minimum(((x["input_ids"] > 0) & (x["input_ids"] < 100)).sum(1) // 2, 3).astype(np.int64)
    return x, label


def build_model(seconds: float = 20.0):
    import torch

    model = tiny_bert_encoder(vocab=V, hidden=128, max_length=64).train()
    rng = np.random.default_rng(0)
    x, y = tokens(4096, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.time()
    while time.time() - start < seconds:
        for i in range(0, len(y), 64):
            b = {k: torch.from_numpy(v[i:i + 64]) for k, v in x.items()}
            loss = torch.nn.functional.cross_entropy(model(**b), torch.from_numpy(y[i:i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.time() - start > seconds:
                break
    return model.eval()


def size(path) -> int:
    return sum(f.stat().st_size for f in model_files(Path(path)))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main():
    rng = np.random.default_rng(1)
    xc, yc = tokens(256, rng)
    xe, ye = tokens(512, rng)
    calib = nbdata.load({**xc, "label": yc}, "calib")
    ev = nbdata.load({**xe, "label": ye})
    print("training a small BERT encoder (2 layers, hidden 128) ...", flush=True)
    model = build_model()
    backend = OnnxBackend()
    prepared = backend.prepare(model, ev)
    tmp = Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    raw = prepared.path

    def outputs(path):
        runner = backend.load(type("A", (), {"path": Path(path)})())
        return np.concatenate([runner(x) for x, _ in ev.batches(64)])

    ref = outputs(raw)
    acc_ref = float((ref.argmax(1) == ye).mean())
    pre_t, _ = timed(lambda: backend.preprocessed(prepared))

    # -- overhead: nbopt handler vs the onnxruntime call it wraps -----------------------------------
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16
    import onnx

    def direct_fp16(out):
        onnx.save_model(convert_float_to_float16(onnx.load(str(raw)), keep_io_types=True), str(out))

    def direct_dyn(out):
        quantize_dynamic(str(raw), str(out))

    def direct_static(out, method):
        feeds = backend.calib_feeds(prepared, calib)
        quantize_static(str(raw), str(out), make_reader(feeds), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"], calibrate_method=method,
                        extra_options={"MatMulConstBOnly": True})

    def direct_nbits(out, bits, block_size):
        q = MatMulNBitsQuantizer(onnx.load(str(raw)), bits=bits, block_size=block_size)
        q.process()
        onnx.save_model(q.model.model, str(out))

    cases = [
        (Recipe("fp16"), direct_fp16),
        (Recipe("int8-dynamic"), direct_dyn),
        (Recipe("int8-static", {"calibration": "minmax"}), lambda o: direct_static(o, CalibrationMethod.MinMax)),
        (Recipe("int8-static", {"calibration": "entropy"}), lambda o: direct_static(o, CalibrationMethod.Entropy)),
        (Recipe("int4-weight-only"), lambda o: direct_nbits(o, 4, 32)),
        (Recipe("int8-weight-only"), lambda o: direct_nbits(o, 8, 128)),
    ]
    rows = []
    for i, (recipe, direct) in enumerate(cases):
        out = tmp / f"direct_{i}.onnx"
        with quiet():
            d_t, _ = timed(lambda: direct(out))
        ctx = Context(workdir=tmp / f"nbopt_{i}", calib=calib)
        ctx.workdir.mkdir()
        n_t, art = timed(lambda: backend.apply(prepared, backend.validate(recipe), ctx))
        rows.append((recipe.label, d_t, n_t, n_t / d_t))
    print(f"\none-time quant_pre_process (cached on the prepared model, not in the times below): {pre_t:.2f}s")
    print(f"\n{'recipe':<95} {'ORT direct s':>12} {'nbopt s':>8} {'ratio':>6}")
    for label, d_t, n_t, r in rows:
        print(f"{label:<95} {d_t:12.3f} {n_t:8.3f} {r:6.2f}")

    # -- fidelity: nbopt's default sweep vs quantize_dynamic defaults --------------------------------
    peer = tmp / "peer_default.onnx"
    with quiet():
        quantize_dynamic(str(raw), str(peer))
    peer_size = size(peer)
    results = [("fp32 baseline", size(raw), ref, "")]
    results.append(("ORT quantize_dynamic defaults", peer_size, outputs(peer), ""))
    sweep_t = time.perf_counter()
    for j, recipe in enumerate(backend.default_recipes(prepared)):
        ctx = Context(workdir=tmp / f"sweep_{j}", calib=calib)
        ctx.workdir.mkdir()
        try:
            art = backend.apply(prepared, recipe, ctx)
        except Exception as exc:  # noqa: BLE001
            results.append((f"nbopt {recipe.name}", 0, None, f"FAILED: {exc}"))
            continue
        results.append((f"nbopt {recipe.name}", art.size_bytes, outputs(art.path), art.notes))
    sweep_t = time.perf_counter() - sweep_t
    print(f"\nfp32 accuracy on the synthetic task: {acc_ref:.3f}; default sweep built in {sweep_t:.1f}s")
    print(f"\n{'candidate':<32} {'size KB':>8} {'cosine':>9} {'rel err':>8} {'max|diff|':>9} "
          f"{'agree':>6} {'acc':>6}")
    best = None
    for name, sz, out, notes in results:
        if out is None:
            print(f"{name:<32} {notes}")
            continue
        f = fidelity(ref, out)
        agree = float((out.argmax(1) == ref.argmax(1)).mean())
        acc = float((out.argmax(1) == ye).mean())
        print(f"{name:<32} {sz / 1024:8.1f} {f['cosine']:9.6f} {f['rel_error']:8.4%} {f['max_abs_diff']:9.4f} "
              f"{agree:6.3f} {acc:6.3f}")
        if name.startswith("nbopt") and sz <= peer_size and (best is None or f["rel_error"] < best[1]["rel_error"]):
            best = (name, f, sz, notes)
    peer_f = fidelity(ref, results[1][2])
    if best:
        print(f"\nbest nbopt default-sweep candidate no larger than ORT's default: {best[0]} "
              f"({best[2] / 1024:.1f} KB vs {peer_size / 1024:.1f} KB), relative error {best[1]['rel_error']:.4%} "
              f"vs {peer_f['rel_error']:.4%}, max|diff| {best[1]['max_abs_diff']:.4f} vs {peer_f['max_abs_diff']:.4f}")
        print(f"its notes: {best[3]}")
    else:
        print("\nno nbopt default-sweep candidate is as small as ORT's default")


if __name__ == "__main__":
    main()
