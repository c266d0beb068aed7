"""The ONNX backend's recipe handlers (registered on OnnxBackend by their decorators).

Imported by the package's ``__init__``; onnx and onnxruntime are imported inside the handlers only.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ...errors import CandidateError, NboptError
from ...mixed import CalibScore, choose
from ...quiet import quiet
from ..base import Artifact, Context, Param
from .backend import OnnxBackend, OnnxPrepared, onnx_artifact
from .convert import model_files, save_model
from .graph import fix_external_location, gemm_to_matmul
from .quant import ort_call
from .reports import quant_summary


@OnnxBackend.recipe("fp16")
def _fp16(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, pre_note = backend.quant_source(prepared, ctx.calib)
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
    src, pre_note = backend.quant_source(prepared, ctx.calib)
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
    src, pre_note = backend.quant_source(prepared, ctx.calib)
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

    src, pre_note = backend.quant_source(prepared, ctx.calib)
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
                    defaults={"per_channel": True},  # quantize_dynamic per-channel: 0.98 vs 0.94 cosine on MiniLM
                    reduce_range=Param(False, choices=("auto", True, False),
                                       help="7-bit weights (onnxruntime's option for CPUs without VNNI)"),
                    # int8-weights by default: int8-block quantizes the kept nodes' activations per block, which
                    # an outlier feature still ruins (the outlier MLP: accuracy drop .23 vs .006); on MiniLM
                    # int8-block is 1.35x faster than fp32 at cosine .9989, int8-weights 1.4x slower at .9992
                    keep_as=Param("int8-weights", choices=("int8-weights", "int8-block", "float"),
                                  help="how kept MatMul/Gemm nodes run: int8-weights = 8-bit weights in blocks "
                                       "of 32 (MatMulNBits: no size cost) with float activations and compute "
                                       "(robust to outlier activations, slower than int8 on CPU); int8-block = "
                                       "the same weights with int8 activations quantized per block of 32 "
                                       "(int8 speed, less exact); float = fp32 weights. Other kept ops: fp32"))
def _mixed(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    """Quantize everything with the quantizer's options (per_channel / reduce_range 'auto' tries both), then
    take the most sensitive nodes (``backend.sensitivity``: one float pass) out of per-tensor int8, a few
    at a time; every trial is built by the real quantizer and scored end to end on calibration data by
    the study's metric (``CalibScore``); the smallest trial within 5 % of the best score is kept."""
    keep = params["keep_float"]
    if keep != "auto" and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise NboptError(f"Recipe 'mixed-precision' parameter 'keep_float' is {keep!r}; give 'auto' or a "
                         "whole number of layers (0 or more).")
    mode = params["mode"]
    src, pre_note = backend.quant_source(prepared, ctx.calib)
    feeds, ref = backend.reference_outputs(prepared, ctx.calib)
    score = CalibScore(ref, _first_labels(ctx.calib, len(ref)), ctx.metric)
    ranked = backend.sensitivity(prepared, ctx.calib, mode=mode).dropna(subset=["rel_error"])
    work = ctx.workdir / "search"
    work.mkdir(parents=True, exist_ok=True)
    trials: list[dict] = []
    order = list(ranked["node"])  # the nodes to keep, most sensitive first ('auto': those the budget allows)

    def build(cfg: dict, k: int) -> dict:
        path = work / f"t{len(trials)}.onnx"
        kept = order[:k]
        _mixed_build(backend, prepared, ctx, src, path, mode, cfg, kept, params["keep_as"])
        out = backend.outputs(path, feeds)
        row = {**cfg, "k": k, "loss": score.loss(out), "value": score.value(out),
               "size": sum(f.stat().st_size for f in model_files(path)), "path": path}
        trials.append(row)
        return row

    # 1) the quantizer's own options, everything quantized
    full = [build({"per_channel": pc, "reduce_range": rr}, 0)
            for pc in _choices(params["per_channel"]) for rr in _choices(params["reduce_range"])]
    best_full = min(full, key=lambda t: t["loss"])
    cfg = {k: best_full[k] for k in ("per_channel", "reduce_range")}
    # 2) the most sensitive nodes out of per-tensor int8, a few more at a time
    if keep == "auto":
        # a kept node's fp32 weight costs ~3 B per value more than int8; an int8-block MatMul costs nothing
        int8 = params["keep_as"] != "float"
        if int8:  # embedding tables stay int8: MatMulNBits cannot take them, and fp32 tables are big
            ranked = ranked[ranked["op_type"] != "Gather"]
        costs = [0 if int8 and op in ("MatMul", "Gemm") else n for op, n in zip(ranked["op_type"], ranked["params"])]
        order[:] = _within(list(ranked["node"]), costs, params["max_size_growth"] * best_full["size"] / 3.0)
        for k in sorted({max(1, len(order) // 2), len(order)} - {0}):
            build(cfg, k)  # two group sizes: half and all of what the budget allows (each trial is a full
            # quantizer run: a third size cost 40 % more time on MiniLM and was never the one chosen)
        chosen = choose([t for t in trials if all(t[c] == cfg[c] for c in cfg)], noise=score.noise)
    else:
        chosen = build(cfg, min(keep, len(ranked)))
    out = ctx.workdir / "model.onnx"
    for f in model_files(chosen["path"]):
        shutil.move(str(f), str(ctx.workdir / f.name.replace(chosen["path"].name, out.name, 1)))
    fix_external_location(out, chosen["path"].name)
    shutil.rmtree(work, ignore_errors=True)
    kept = order[: chosen["k"]]
    how = {"float": "fp32", "int8-weights": "float compute with 8-bit weights (MatMulNBits; other ops fp32)",
           "int8-block": "int8 with per-block scales (MatMulNBits; other ops fp32)"}[params["keep_as"]]
    kept_txt = (f"kept the {len(kept)} most sensitive node(s) out of per-tensor int8, as {how} "
                f"({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''})" if kept else "kept no node out of int8")
    summary = quant_summary(src, out)
    notes = (f"mixed precision ({mode}, {'searched' if keep == 'auto' else 'fixed'}): chose per_channel="
             f"{chosen['per_channel']}, reduce_range={chosen['reduce_range']}, {kept_txt}; chosen by {score.by} "
             f"({chosen['value']:.4g}; everything int8: {best_full['value']:.4g}); {summary}; {len(trials)} trials; "
             f"sensitivity ranked by each node's own output error (one float pass); {pre_note}")
    return onnx_artifact(out, notes, quantized=summary, kept_float=len(kept), calib_rel_error=chosen["loss"])


def _mixed_build(backend: OnnxBackend, prepared: OnnxPrepared, ctx: Context, src: Path, path: Path, mode: str,
                 cfg: dict, kept: list[str], keep_as: str) -> None:
    """One trial: the quantizer with ``kept`` excluded; unless keep_as is float, kept MatMul/Gemm nodes then
    become 8-bit MatMulNBits (int8-block: accuracy_level 4, int8 activations quantized per block of 32)."""
    if mode == "dynamic":
        backend.quantize_dynamic(src, path, per_channel=cfg["per_channel"], reduce_range=cfg["reduce_range"],
                                 exclude=kept)
    else:
        backend.quantize_static(prepared, src, path, ctx.calib, per_channel=cfg["per_channel"],
                                reduce_range=cfg["reduce_range"], exclude=kept)
    if keep_as != "float" and kept:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        def run():
            q = MatMulNBitsQuantizer(onnx.load(str(path)), bits=8, block_size=32, is_symmetric=True,
                                     accuracy_level=4 if keep_as == "int8-block" else None,
                                     nodes_to_include=kept)
            q.process()
            return q.model.model
        with quiet():
            model = ort_call("onnxruntime.quantization MatMulNBitsQuantizer", run)
        for f in model_files(path):
            f.unlink()
        save_model(model, path)


def _within(nodes: list[str], costs: list[int], budget: float) -> list[str]:
    """The nodes, most sensitive first, leaving out any whose extra bytes would pass the budget."""
    out, spent = [], 0
    for node, cost in zip(nodes, costs):
        if spent + cost <= budget:
            out.append(node)
            spent += cost
    return out


def _choices(value) -> tuple:
    return (False, True) if value == "auto" else (value,)


def _first_labels(calib, n: int):
    """Labels of the first ``n`` calibration examples (the ones the trials run on), or None."""
    import numpy as np

    if calib is None or not calib.has_labels:
        return None
    got, seen = [], 0
    for _, labels in calib.batches(batch_size=64):
        got.append(np.asarray(labels))
        seen += len(labels)
        if seen >= n:
            break
    return np.concatenate(got)[:n]


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
