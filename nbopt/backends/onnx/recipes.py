"""The ONNX backend's recipe handlers (registered on OnnxBackend by their decorators).

Imported by the package's ``__init__``; onnx and onnxruntime are imported inside the handlers only.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ...errors import CandidateError, NboptError
from ..base import Artifact, Context, Param
from .backend import OnnxBackend, OnnxPrepared, onnx_artifact
from .convert import model_files, save_model
from .graph import fix_external_location, gemm_to_matmul
from .quant import ort_call
from .reports import quant_summary
from .sensitivity import fidelity, keep_float_steps


@OnnxBackend.recipe("fp16")
def _fp16(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, pre_note = backend.preprocessed(prepared)
    model = onnx.load(str(src))
    half = ort_call("onnxruntime.transformers.float16.convert_float_to_float16", convert_float_to_float16,
                     model, keep_io_types=True)
    out = ctx.workdir / "model.onnx"
    save_model(half, out)
    return onnx_artifact(out, f"fp16 weights and compute (inputs/outputs kept float32) via onnxruntime.transformers."
                          f"float16; {pre_note}")


@OnnxBackend.recipe("int8-dynamic",
                    reduce_range=Param(False, choices=(True, False),
                                       help="7-bit weights, for CPUs without VNNI where 8-bit products saturate"),
                    weight_type=Param("int8", choices=("int8", "uint8")))
def _int8_dynamic(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    src, pre_note = backend.preprocessed(prepared)
    out = ctx.workdir / "model.onnx"
    backend.quantize_dynamic(src, out, **params)
    summary = quant_summary(src, out)
    return onnx_artifact(out, f"quantize_dynamic ({_fmt(params)}): {summary}; {pre_note}", quantized=summary)


@OnnxBackend.recipe("int8-static",
                    honours={"calibration": ("minmax", "entropy", "percentile"), "activations": ("uint8", "int8")},
                    defaults={"activations": "uint8"},  # onnxruntime's own default (QUInt8 activations)
                    reduce_range=Param(False, choices=(True, False),
                                       help="7-bit weights, for CPUs without VNNI where 8-bit products saturate"),
                    op_types=Param("weights", choices=("weights", "all"),
                                   help="'weights': Conv/MatMul/Gemm with constant weights only; "
                                        "'all': every op type onnxruntime can quantize (its default)"))
def _int8_static(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    src, pre_note = backend.preprocessed(prepared)
    out = ctx.workdir / "model.onnx"
    backend.quantize_static(prepared, src, out, ctx.calib, **params)
    summary = quant_summary(src, out)
    n = ctx.calib.num_examples if hasattr(ctx.calib, "num_examples") else "?"
    return onnx_artifact(out, f"quantize_static QDQ ({_fmt(params)}), calibrated on {n} calibration examples: "
                          f"{summary}; {pre_note}", quantized=summary)


_SYMMETRIC = Param(False, choices=(True, False), help="symmetric weight ranges (no zero point)")


@OnnxBackend.recipe("int4-weight-only", symmetric=_SYMMETRIC)
def _int4(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    return _weight_only(backend, prepared, params, ctx, bits=4)


# MatMulNBits always quantizes in blocks: no per-channel (group_size=None) form
@OnnxBackend.recipe("int8-weight-only", honours={"group_size": (16, 32, 64, 128, 256)}, defaults={"group_size": 128},
                    symmetric=_SYMMETRIC)
def _int8_weight_only(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    # Weights int8 in blocks, activations left float: no activation-quantization error, which is what
    # costs transformer encoders their fidelity under quantize_dynamic.
    return _weight_only(backend, prepared, params, ctx, bits=8)


def _weight_only(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context, bits: int) -> Artifact:
    """Block-wise weight-only quantization of MatMul weights with MatMulNBits (Gemm rewritten first)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, pre_note = backend.preprocessed(prepared)
    model = onnx.load(str(src))
    n_gemm = gemm_to_matmul(model)
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")

    def run():
        # accuracy_level 4: MatMulNBits computes with int8 activations quantized on the fly
        level = 4 if params.get("activations") == "int8" else None
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=params["group_size"],
                                 is_symmetric=params["symmetric"], accuracy_level=level)
        q.process()
        return q.model.model

    qmodel = ort_call("onnxruntime.quantization MatMulNBitsQuantizer", run)
    done = sum(1 for n in qmodel.graph.node if n.op_type == "MatMulNBits")
    if done == 0:
        raise CandidateError(f"int{bits}-weight-only quantizes MatMul weights only (MatMulNBits), and no MatMul "
                             "with a constant 2-D weight in this model could be quantized.")
    out = ctx.workdir / "model.onnx"
    save_model(qmodel, out)
    gemm = f" ({n_gemm} Gemm rewritten as MatMul+Add first)" if n_gemm else ""
    convs = sum(1 for n in qmodel.graph.node if n.op_type == "Conv")
    what = f"{done}/{before} MatMul (int{bits})" + (f", 0/{convs} Conv (float)" if convs else "")
    return onnx_artifact(out, f"int{bits} weight-only MatMulNBits ({_fmt(params)}): {what}{gemm}, activations and "
                          f"other ops float; {pre_note}", quantized=what)


@OnnxBackend.recipe("mixed-precision",
                    mode=Param("dynamic", choices=("dynamic", "static")),
                    keep_float=Param("auto", help="'auto' or how many of the most sensitive nodes stay float"),
                    per_channel=Param("auto", choices=("auto", True, False)),
                    reduce_range=Param("auto", choices=("auto", True, False)),
                    max_size_growth=Param(0.1, low=0.0, high=10.0,
                                          help="'auto' keeps float weights up to this fraction of the "
                                               "fully quantized model's size"))
def _mixed(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    keep = params["keep_float"]
    if keep != "auto" and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise NboptError(f"Recipe 'mixed-precision' parameter 'keep_float' is {keep!r}; give 'auto' or a "
                         "whole number of nodes (0 or more).")
    mode = params["mode"]
    src, pre_note = backend.preprocessed(prepared)
    feeds, ref = backend.reference_outputs(prepared, ctx.calib)
    sens = backend.sensitivity(prepared, ctx.calib, mode=mode)
    ranked = sens.dropna(subset=["rel_error"])
    work = ctx.workdir / "search"
    work.mkdir(parents=True, exist_ok=True)
    trials: list[dict] = []

    def build(cfg: dict, k: int, path: Path) -> dict:
        exclude = list(ranked["node"][:k])
        if mode == "dynamic":
            backend.quantize_dynamic(src, path, per_channel=cfg["per_channel"], reduce_range=cfg["reduce_range"],
                             exclude=exclude)
        else:
            backend.quantize_static(prepared, src, path, ctx.calib, per_channel=cfg["per_channel"],
                            reduce_range=cfg["reduce_range"], exclude=exclude)
        fid = fidelity(ref, backend.outputs(path, feeds))
        row = {**cfg, "k": k, **fid, "size": sum(f.stat().st_size for f in model_files(path)), "path": path}
        trials.append(row)
        return row

    pcs = (False, True) if params["per_channel"] == "auto" else (params["per_channel"],)
    rrs = (False, True) if params["reduce_range"] == "auto" else (params["reduce_range"],)
    i = 0
    # 1) the quantizer's own options, everything quantized
    full = []
    for pc in pcs:
        for rr in rrs:
            full.append(build({"per_channel": pc, "reduce_range": rr}, 0, work / f"t{i}.onnx"))
            i += 1
    best_cfg = min(full, key=lambda r: r["rel_error"])
    cfg = {"per_channel": best_cfg["per_channel"], "reduce_range": best_cfg["reduce_range"]}
    # 2) keep the most sensitive nodes in float, within the size budget
    if keep == "auto":
        budget = params["max_size_growth"] * best_cfg["size"] / 3.0  # a float weight costs ~3 bytes more
        for k in keep_float_steps(ranked, budget):
            build(cfg, k, work / f"t{i}.onnx")
            i += 1
        pool = [t for t in trials if t["per_channel"] == cfg["per_channel"]
                and t["reduce_range"] == cfg["reduce_range"]]
        lowest = min(t["rel_error"] for t in pool)
        chosen = min((t for t in pool if t["rel_error"] <= lowest * 1.05 + 1e-9), key=lambda t: (t["size"], t["k"]))
    else:
        chosen = build(cfg, min(keep, len(ranked)), work / f"t{i}.onnx")
    out = ctx.workdir / "model.onnx"
    for f in model_files(chosen["path"]):
        shutil.move(str(f), str(ctx.workdir / f.name.replace(chosen["path"].name, out.name, 1)))
    fix_external_location(out, chosen["path"].name)
    shutil.rmtree(work, ignore_errors=True)
    kept = list(ranked["node"][: chosen["k"]])
    ref_row = next((t for t in trials if t["k"] == 0 and not t["per_channel"] and not t["reduce_range"]), None)
    vs = (f" vs {ref_row['rel_error']:.2%} with onnxruntime's defaults"
          if ref_row is not None and ref_row is not chosen else "")
    kept_txt = f"kept {len(kept)} most sensitive node(s) in float ({', '.join(kept[:4])}" \
               f"{', ...' if len(kept) > 4 else ''})" if kept else "kept no node in float"
    summary = quant_summary(src, out)
    notes = (f"mixed precision ({mode}, {'searched' if keep == 'auto' else 'fixed'}): chose per_channel="
             f"{chosen['per_channel']}, reduce_range={chosen['reduce_range']}, {kept_txt}; relative output "
             f"error on calibration data {chosen['rel_error']:.2%}{vs}; {summary}; {len(trials)} trials; {pre_note}")
    return onnx_artifact(out, notes, quantized=summary, kept_float=len(kept), calib_rel_error=chosen["rel_error"])


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
