"""A small language model: nbopt's sweep against the peers called directly, perplexity and size per candidate.

The model is the example notebook's (``nbopt.llm_demo``): a 2-layer Llama (hidden 128, vocabulary 2048 from a
byte-level BPE trained here), trained for ``--seconds`` on the standard library's docstrings; perplexity on
64 held-out windows of 64 tokens (every position scored against the next token of ``input_ids``).

1. nbopt: ``backends=["torch", "onnx", "gguf"]`` x fp16 / int8-dynamic / int8-weight-only / int4-weight-only,
   metric="perplexity", then torch int4 with ``algorithm`` hqq and awq (the same store: baselines reused).
2. Peers on the same model, called directly:
   - torchao ``quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))``
     (every Linear, the default filter), evaluated in eager torch; size: the file ``torch.save(state_dict)``
     writes, against the fp32 model's.
   - onnxruntime ``MatMulNBitsQuantizer`` with its defaults (4 bits, block 128, asymmetric, RTN) on nbopt's
     exported fp32 ONNX graph (the onnx baseline row's ``artifact_path``), run in onnxruntime.
   - GGUF Q4_0: llama.cpp's own ``llama-quantize`` on nbopt's F32 GGUF when it is on PATH (else nbopt's Q4_0
     row, the ``gguf`` package's reference quantizer, stands for it); perplexity only with
     llama-cpp-python (``llama_cpp.Llama`` called directly), otherwise the size alone.

Perplexities of every row come from the same function (``nbopt.metrics.perplexity``) on the logits each
runtime returned. Size %: against the fp32 file of the same runtime; perplexity ratio: against the same
runtime's fp32 perplexity.

    python benchmarks/bench_llm.py                 # 2 to 3 minutes on 2 cores
    python benchmarks/bench_llm.py --seconds 20    # a shorter training (a worse model), a faster run
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

import nbopt  # noqa: E402
from nbopt.evaluator import LatencySettings  # noqa: E402
from nbopt.metrics import perplexity as ppl_of_logits  # noqa: E402
from nbopt.quiet import quiet  # noqa: E402
from bench_mixed import table  # noqa: E402
from bench_workers import cpu as cpu_model  # noqa: E402

RECIPES = ["fp16", "int8-dynamic", "int8-weight-only", "int4-weight-only"]
QUICK = LatencySettings(warmup=1, min_runs=3, min_seconds=0.0)  # latency is not what this benchmark reports
COMMON = dict(metric="perplexity", executor="inline", measure_memory=False, progress=False, latency=QUICK)


def short_error(exc: BaseException | str, n: int = 140) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())[:n]


# -- peers -----------------------------------------------------------------------------------------------
def torch_size(model, tmp: Path, name: str) -> int:
    import torch

    path = tmp / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(input_ids=torch.from_numpy(ids[i:i + 16])).logits.float().numpy()
                               for i in range(0, len(ids), 16)])


def onnx_size(path: Path) -> int:
    from nbopt.backends.onnx.convert import model_files

    return sum(f.stat().st_size for f in model_files(Path(path)))


def ort_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    """The graph's first output for every window, fed one window at a time (the export's batch may be static)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    out = []
    for row in ids:
        x = row[None]
        feeds = {}
        for i in inputs:
            if i.name == "input_ids" or len(inputs) == 1:  # nbopt names a single input 'input'
                feeds[i.name] = x
            elif i.name == "attention_mask":
                feeds[i.name] = np.ones_like(x)
            elif i.name == "position_ids":
                feeds[i.name] = np.arange(x.shape[1], dtype=np.int64)[None]
            else:
                raise RuntimeError(f"unexpected graph input {i.name!r}")
        out.append(sess.run(None, feeds)[0])
    return np.concatenate(out).astype(np.float32)


def ort_matmulnbits_defaults(raw: Path, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(raw)))  # defaults: bits=4, block_size=128, is_symmetric=False, RTN
    q.process()
    onnx.save_model(q.model.model, str(out))
    return out


def llama_cpp_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(64, ids.shape[1]), logits_all=True, seed=0, verbose=False)
    out = []
    for row in ids:
        llm.reset()
        llm.eval([int(t) for t in row])
        out.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    return np.stack(out)


def has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# -- the benchmark ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="training time of the small model (default 60)")
    parser.add_argument("--no-algorithms", action="store_true", help="skip torch int4 hqq / awq")
    args = parser.parse_args()

    import torch

    from nbopt.llm_demo import lm_demo

    t_all = time.perf_counter()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()}); "
          f"torch {torch.__version__}, Python {platform.python_version()}")
    demo = lm_demo(seconds=args.seconds, verbose=False)
    ids = demo.eval["input_ids"]
    print(f"{demo}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = demo.save(tmp / "tiny-llama")  # from its folder: the GGUF files carry the BPE vocabulary

        # 1. nbopt
        t0 = time.perf_counter()
        with quiet():
            study = nbopt.optimize(model, calib=demo.calib, eval=demo.eval, backends=["torch", "onnx", "gguf"],
                                   recipes=RECIPES, store=tmp / "store", **COMMON)
            records = study.results.to_dict("records")
            if not args.no_algorithms:
                extra = nbopt.optimize(model, calib=demo.calib, eval=demo.eval, backends=["torch"],
                                       recipes=[{"int4-weight-only": {"algorithm": ["hqq", "awq"]}}],
                                       store=tmp / "store", **COMMON)
                records += [r for r in extra.results.to_dict("records") if r["recipe"] != "baseline"]
        sweep_s = time.perf_counter() - t0
        base = {r["backend"]: r for r in records if r["recipe"] == "baseline"}

        def base_ppl(backend: str) -> float | None:
            b = base.get(backend)
            return b["accuracy"] if b and b["status"] == "ok" and b["accuracy"] == b["accuracy"] else None

        def add(name, runtime, size, fp32_size, ppl, fp32_ppl, note=""):
            rows.append([name, runtime, f"{size / 1e6:.3f}" if size else "",
                         f"{100 * size / fp32_size:.1f}" if size and fp32_size else "",
                         f"{ppl:.2f}" if ppl is not None else "n/a",
                         f"{ppl / fp32_ppl:.4f}" if ppl is not None and fp32_ppl else "n/a", note])

        runtime = {"torch": "ExecuTorch .pte", "onnx": "onnxruntime", "gguf": "llama.cpp (GGUF)"}
        for r in records:
            name = f"nbopt {r['name']}"
            if r["status"] != "ok":
                rows.append([name, runtime[r["backend"]], "", "", "", "", f"{r['status']}: {short_error(r['error'])}"])
                continue
            ppl = r["accuracy"] if r["accuracy"] == r["accuracy"] else None
            note = "" if ppl is not None else "unmeasured: llama-cpp-python not installed"
            b = base[r["backend"]]
            add(name, runtime[r["backend"]], r["size_bytes"], b["size_bytes"], ppl, base_ppl(r["backend"]), note)

        # 2. peers
        fp32_sd = torch_size(model, tmp, "fp32")
        fp32_eager = ppl_of_logits(torch_logits(model, ids), ids)
        add("eager torch fp32 (reference)", "torch eager", fp32_sd, fp32_sd, fp32_eager, fp32_eager,
            "size: torch.save(state_dict)")
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        try:
            q = copy.deepcopy(model)
            t = time.perf_counter()
            with quiet():
                quantize_(q, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
            build = time.perf_counter() - t
            add("torchao IntxWeightOnlyConfig(int4, PerGroup(32))", "torch eager", torch_size(q, tmp, "torchao"),
                fp32_sd, ppl_of_logits(torch_logits(q, ids), ids), fp32_eager,
                f"every Linear; size: torch.save(state_dict); quantize_ {build:.2f} s")
        except Exception as exc:  # noqa: BLE001
            rows.append(["torchao IntxWeightOnlyConfig(int4, PerGroup(32))", "torch eager", "", "", "", "",
                         f"FAILED: {short_error(exc)}"])

        ob = base.get("onnx")
        label = "ORT MatMulNBitsQuantizer (defaults: 4 bit, block 128, asymmetric, RTN)"
        if ob and ob["status"] == "ok":
            raw = Path(ob["artifact_path"])
            try:
                t = time.perf_counter()
                with quiet():
                    out = ort_matmulnbits_defaults(raw, tmp / "ort_nbits.onnx")
                build = time.perf_counter() - t
                ort_fp32 = ppl_of_logits(ort_logits(raw, ids), ids)
                add(label, "onnxruntime", onnx_size(out), onnx_size(raw), ppl_of_logits(ort_logits(out, ids), ids),
                    ort_fp32, f"on nbopt's fp32 export (its perplexity here: {ort_fp32:.2f}); process() {build:.2f} s")
            except Exception as exc:  # noqa: BLE001
                rows.append([label, "onnxruntime", "", "", "", "", f"FAILED: {short_error(exc)}"])
        else:
            rows.append([label, "onnxruntime", "", "", "", "", "no fp32 ONNX export (the onnx baseline row failed)"])

        gb = base.get("gguf")
        q4 = next((r for r in records if r["backend"] == "gguf" and r["recipe"] == "int4-weight-only"
                   and r["status"] == "ok"), None)
        quantizer = shutil.which("llama-quantize")
        if gb and gb["status"] == "ok":
            f32 = Path(gb["artifact_path"])
            if quantizer:
                label, path = "llama.cpp llama-quantize Q4_0", tmp / "q4_0.gguf"
                try:
                    subprocess.run([quantizer, str(f32), str(path), "Q4_0"], check=True, capture_output=True)
                except Exception as exc:  # noqa: BLE001
                    path, label = None, f"{label}: FAILED {short_error(exc)}"
            else:
                label = "GGUF Q4_0 (gguf package's reference quantizer; no llama-quantize on PATH)"
                path = Path(q4["artifact_path"]) if q4 else None
            if path is not None:
                ppl = ref = None
                note = "perplexity needs llama-cpp-python (not installed): size only"
                if has_llama_cpp():
                    try:
                        ref = ppl_of_logits(llama_cpp_logits(f32, ids), ids)
                        ppl = ppl_of_logits(llama_cpp_logits(path, ids), ids)
                        note = f"llama_cpp.Llama directly (F32 file: {ref:.2f})"
                    except Exception as exc:  # noqa: BLE001
                        note = f"llama_cpp FAILED: {short_error(exc)}"
                add(label, "llama.cpp (GGUF)", path.stat().st_size, f32.stat().st_size, ppl, ref, note)
            else:
                rows.append([label, "llama.cpp (GGUF)", "", "", "", "", "no Q4_0 file"])

    total = time.perf_counter() - t_all
    table(f"Small Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, trained "
          f"{demo.training['steps']} steps in {demo.training['seconds']:.0f} s): perplexity on {ids.shape[0]} held-out "
          f"windows of {ids.shape[1]} tokens",
          ["candidate", "runtime", "size MB", "size % of fp32", "perplexity", "ratio to fp32 perplexity", "note"],
          rows,
          (f"CPU: {cpu_model()}. nbopt sweep {sweep_s:.0f} s (inline, {len(records)} rows); whole benchmark "
           f"{total:.0f} s.",
           "size % of fp32: against the fp32 file of the same runtime (nbopt rows: the backend's baseline; "
           "torchao: torch.save of the fp32 state dict; ORT: nbopt's fp32 .onnx; GGUF: nbopt's F32 .gguf). "
           "Ratio to fp32 perplexity: against the same runtime's fp32 perplexity. Every perplexity: "
           "nbopt.metrics.perplexity on the logits that runtime returned for the same windows.",
           "The token embedding (a lookup table, 2048 x 128: 28 % of the fp32 file) stays float in every torch "
           "and onnx recipe except onnx int8-dynamic (quantize_dynamic quantizes the Gather too); GGUF stores it "
           "in the recipe's type like the other matrices. torchao's eager state dict keeps its int4 values one "
           "per int8 byte; the .pte packs two per byte."))


if __name__ == "__main__":
    main()
