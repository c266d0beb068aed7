"""The ONNX backend's recipe handlers (registered on OnnxBackend by their decorators).

Imported by the package's ``__init__``; onnx and onnxruntime are imported inside the handlers only.
"""
from __future__ import annotations

import shutil

import numpy as np
from pathlib import Path

from ...errors import CandidateError, NboptError, SkipCandidate
from ...mixed import CalibScore, choose, fidelity
from ...quiet import quiet
from ..base import Artifact, Context, Param
from .backend import SENS_EXAMPLES, OnnxBackend, OnnxPrepared, onnx_artifact
from .convert import model_files, save_model
from .graph import fix_external_location, gemm_to_matmul
from .quant import (NEEDS_CALIB, WEIGHT_ONLY_ALGORITHMS, nbits_quantizer, node_aliases, ort_call, packed_weights,
                    set_accuracy_level, weight_only_refusal)
from .reports import quant_summary
from .sensitivity import weight_nodes


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


@OnnxBackend.recipe("int8-dynamic", defaults={"per_channel": "auto"},  # never bigger than the library for nothing
                    reduce_range=Param(False, choices=(True, False),
                                       help="7-bit weights, for CPUs without VNNI where 8-bit products saturate"),
                    weight_type=Param("int8", choices=("int8", "uint8")))
def _int8_dynamic(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    src, pre_note = backend.quant_source(prepared, ctx.calib)
    out = ctx.workdir / "model.onnx"
    scheme = ""
    if params["per_channel"] == "auto":
        params = dict(params)

        def build(pc: bool, path: Path) -> None:
            backend.quantize_dynamic(src, path, **{**params, "per_channel": pc}, cache=prepared.dir)
        params["per_channel"], scheme = _scheme(backend, prepared, ctx, build)
    backend.quantize_dynamic(src, out, **params, cache=prepared.dir)
    summary = quant_summary(src, out)
    return onnx_artifact(out, f"quantize_dynamic ({_fmt(params)}): {summary}; {scheme}{pre_note}", quantized=summary)


@OnnxBackend.recipe("int8-static",
                    honours={"calibration": ("minmax", "entropy", "percentile"), "activations": ("uint8", "int8")},
                    # onnxruntime's own default (QUInt8 activations); per_channel auto: never bigger than
                    # quantize_static's per-tensor default unless per-channel scores better (digits CNN: 27.0 % vs
                    # 27.8 % of fp32 at the same accuracy)
                    defaults={"activations": "uint8", "per_channel": "auto"},
                    reduce_range=Param(False, choices=(True, False),
                                       help="7-bit weights, for CPUs without VNNI where 8-bit products saturate"),
                    op_types=Param("weights", choices=("weights", "all"),
                                   help="'weights': Conv/MatMul/Gemm with constant weights only; "
                                        "'all': every op type onnxruntime can quantize (its default)"))
def _int8_static(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    src, pre_note = backend.quant_source(prepared, ctx.calib)
    out = ctx.workdir / "model.onnx"
    scheme = ""
    if params["per_channel"] == "auto":
        params = dict(params)

        def build(pc: bool, path: Path) -> None:
            backend.quantize_static(prepared, src, path, ctx.calib, **{**params, "per_channel": pc})
        params["per_channel"], scheme = _scheme(backend, prepared, ctx, build)
    backend.quantize_static(prepared, src, out, ctx.calib, **params)
    summary = quant_summary(src, out)
    n = ctx.calib.num_examples if hasattr(ctx.calib, "num_examples") else "?"
    return onnx_artifact(out, f"quantize_static QDQ ({_fmt(params)}), calibrated on {n} calibration examples: "
                          f"{summary}; {scheme}{pre_note}", quantized=summary)


def _scheme(backend: OnnxBackend, prepared: OnnxPrepared, ctx: Context, build) -> tuple[bool, str]:
    """per_channel 'auto': onnxruntime's default (per-tensor) and per-channel are both built (``build(pc,
    path)``), scored by the study's metric on calibration data; per-channel is kept only where it scores
    better beyond noise, since its scales cost bytes (2 % of a 2-layer GPT-2's int8 file)."""
    if ctx.calib is None:
        return True, "per_channel auto: per-channel (no calibration data to compare with); "
    feeds, ref = backend.reference_outputs(prepared, ctx.calib)
    score = CalibScore(ref, _first_labels(ctx.calib, len(ref)), ctx.metric)
    cache = (prepared.dir, f"calib{getattr(ctx.calib, 'fingerprint', id(ctx.calib))}")
    trials = []
    for pc in (False, True):
        path = ctx.workdir / "scheme" / f"pc{int(pc)}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        build(pc, path)
        out = backend.outputs(path, feeds, cache=cache)
        trials.append({"per_channel": pc, "k": int(pc), "loss": score.loss(out), "value": score.value(out),
                       "rel": fidelity(ref, out)["rel_error"], "size": sum(f.stat().st_size for f in model_files(path))})
    shutil.rmtree(ctx.workdir / "scheme", ignore_errors=True)
    pt, pc = trials
    # a counting metric on a few dozen examples misses small losses (a ViT: the same calibration agreement,
    # 4 in 256 more eval predictions changed): per-tensor must also move the outputs no more than 10 % more
    chosen = choose(trials, noise=score.noise) if pt["rel"] <= pc["rel"] * 1.1 + 1e-9 else pc
    return chosen["per_channel"], (f"per_channel auto: {'per-channel' if chosen['per_channel'] else 'per-tensor'} "
                                   f"kept ({score.by}: per-tensor {pt['value']:.4g} at {pt['size']:,} B, "
                                   f"per-channel {pc['value']:.4g} at {pc['size']:,} B); ")


_SYMMETRIC = Param(False, choices=(True, False), help="symmetric weight ranges (no zero point)")
# rtn by default: on all-MiniLM-L6-v2 (int4, group 32, cosine) rtn .9726 in 19 s, hqq .9753 but 2 % bigger
# (float zero points) in 39 s, gptq = rtn's exact values in 124 s (onnxruntime 1.32's port carries no error)
_ALGORITHM = Param("rtn", choices=WEIGHT_ONLY_ALGORITHMS,
                   help="how the weight values are chosen (onnxruntime's MatMulNBits quantizers): rtn (round to "
                        "nearest, the default: fastest, within 0.003 cosine of hqq on MiniLM), hqq (HQQ scale "
                        "search, data-free, float zero points: 4-bit only), gptq (on calibration data, 4-bit only; "
                        "onnxruntime 1.32's gives rtn's values) or awq (onnxruntime offers it only through NVIDIA "
                        "ModelOpt, online: skipped)")


@OnnxBackend.recipe("int4-weight-only", symmetric=_SYMMETRIC, algorithm=_ALGORITHM)
def _int4(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    return _weight_only(backend, prepared, params, ctx, bits=4)


# MatMulNBits always quantizes in blocks: no per-channel (group_size=None) form
@OnnxBackend.recipe("int8-weight-only", honours={"group_size": (16, 32, 64, 128, 256)}, defaults={"group_size": 128},
                    symmetric=_SYMMETRIC, algorithm=_ALGORITHM)
def _int8_weight_only(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    # Weights int8 in blocks, activations left float: no activation-quantization error, which is what
    # costs transformer encoders their fidelity under quantize_dynamic.
    return _weight_only(backend, prepared, params, ctx, bits=8)


def _weight_only(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context, bits: int) -> Artifact:
    """Block-wise weight-only quantization of MatMul weights with MatMulNBits (Gemm rewritten first), the
    values chosen by onnxruntime's ``algorithm`` (rtn / hqq / gptq)."""
    import onnx

    algorithm, group = params["algorithm"], params["group_size"]
    refusal = weight_only_refusal(algorithm, bits, params["symmetric"])
    if refusal:
        raise SkipCandidate(f"int{bits}-weight-only algorithm='{algorithm}': {refusal}.")
    feeds = _weight_only_feeds(backend, prepared, ctx, algorithm, bits)
    src, pre_note = backend.quant_source(prepared, ctx.calib)
    model = onnx.load(str(src))
    n_gemm = gemm_to_matmul(model)
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")
    # accuracy_level 4: MatMulNBits computes with int8 activations quantized on the fly
    level = 4 if params.get("activations") == "int8" else None

    def run():
        q = nbits_quantizer(model, bits, group, params["symmetric"], algorithm, level, feeds)
        q.process()
        return q.model.model

    rtn = _rtn_packed(model, bits, group, params["symmetric"]) if algorithm == "gptq" else None
    qmodel = ort_call(f"onnxruntime.quantization MatMulNBitsQuantizer ({algorithm})", run)
    set_accuracy_level(qmodel, level)
    done = sum(1 for n in qmodel.graph.node if n.op_type == "MatMulNBits")
    if done == 0:
        raise CandidateError(f"int{bits}-weight-only quantizes MatMul weights only (MatMulNBits), and no MatMul "
                             "with a constant 2-D weight in this model could be quantized.")
    out = ctx.workdir / "model.onnx"
    save_model(qmodel, out)
    gemm = f" ({n_gemm} Gemm rewritten as MatMul+Add first)" if n_gemm else ""
    convs = sum(1 for n in qmodel.graph.node if n.op_type == "Conv")
    what = f"{done}/{before} MatMul (int{bits})" + (f", 0/{convs} Conv (float)" if convs else "")
    calib = f", calibrated on {sum(len(next(iter(f.values()))) for f in feeds)} examples" if feeds else ""
    same = ("; onnxruntime's GPTQ gave exactly rtn's values here (its error feedback reads the zero half of "
            "the Cholesky factor, so no rounding error is carried forward)" if rtn == packed_weights(qmodel) else "")
    return onnx_artifact(out, f"int{bits} weight-only MatMulNBits ({_fmt(params)}{calib}): {what}{gemm}, "
                          f"activations and other ops float{same}; {pre_note}", quantized=what, algorithm=algorithm,
                         group_size=group)


def _rtn_packed(model, bits: int, group: int, symmetric: bool) -> list[bytes]:
    """rtn's packed weights for ``model`` (a copy is quantized), to tell whether another algorithm changed any."""
    import copy

    def run():
        q = nbits_quantizer(copy.deepcopy(model), bits, group, symmetric, "rtn", None)
        q.process()
        return packed_weights(q.model.model)
    return ort_call("onnxruntime.quantization MatMulNBitsQuantizer (rtn)", run)


def _weight_only_feeds(backend: OnnxBackend, prepared: OnnxPrepared, ctx: Context, algorithm: str, bits: int):
    """Calibration feeds for the algorithms that need them (gptq), else None."""
    if algorithm not in NEEDS_CALIB:
        return None
    if ctx.calib is None:
        raise CandidateError(f"int{bits}-weight-only with algorithm='{algorithm}' needs calibration data: pass "
                             "calib=... (a few hundred examples), or use algorithm='rtn' or 'hqq'.")
    # the Hessian of each MatMul's input: a few dozen examples give it (time grows with every example)
    return backend.calib_feeds(prepared, ctx.calib, limit=SENS_EXAMPLES)


# how a kept MatMul/Gemm runs, fastest first (the order breaks ties between trials of the same size)
KEEP_AS = ("int8-block", "int8-weights", "float", "fp16")
# bytes a kept weight value costs over int8: fp32 +3, fp16 +1, 8-bit blocks (MatMul/Gemm only) ~0
EXTRA_BYTES = {"float": 3.0, "fp16": 1.0, "int8-block": 0.0, "int8-weights": 0.0}


@OnnxBackend.recipe("mixed-precision",
                    defaults={"per_channel": True},  # quantize_dynamic per-channel: 0.98 vs 0.94 cosine on MiniLM
                    reduce_range=Param(False, choices=("auto", True, False),
                                       help="7-bit weights (onnxruntime's option for CPUs without VNNI)"),
                    # auto: int8-block is int8-fast (MiniLM: 3.4 ms vs fp32 8.7, cosine .9989) but an outlier
                    # feature ruins it (the outlier MLP: accuracy drop .23); int8-weights is robust but
                    # float-slow (MiniLM 12.1 ms). Both are tried; the faster wins when it scores as well.
                    keep_as=Param("auto", choices=("auto",) + KEEP_AS,
                                  help="how kept MatMul/Gemm nodes run: int8-block = 8-bit weights in blocks of "
                                       "64 with int8 activations quantized per block (MatMulNBits, int8 "
                                       "speed); int8-weights = the same weights with float activations and "
                                       "compute (robust to outlier activations, slower); float = fp32 "
                                       "weights; auto = try int8-block and int8-weights (other kept ops: "
                                       "fp32); fp16 = every kept node in fp16 (an int8/fp16 mix)"))
def _mixed(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    """Quantize everything with the quantizer's options (per_channel / reduce_range 'auto' tries both), then
    take nodes out of per-tensor int8. Where keeping costs no bytes (kept MatMul/Gemm become 8-bit blocks)
    all of them are tried kept; otherwise the most sensitive (``backend.sensitivity``: one float pass)
    within ``max_size_growth``, half and all of them. Every trial is built by the real quantizer and
    scored end to end on calibration data by the study's metric (``CalibScore``); the smallest trial within
    5 % of the best score is kept (then the fastest, then the one keeping fewest nodes)."""
    keep = params["keep_float"]
    if keep != "auto" and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise NboptError(f"Recipe 'mixed-precision' parameter 'keep_float' is {keep!r}; give 'auto' or a "
                         "whole number of layers (0 or more).")
    search = _MixedSearch(backend, prepared, params, ctx)
    best_full = search.everything_int8()
    if keep == "auto":
        order, why = search.keep_order(best_full["size"])
        steps = [len(order)] if search.free else sorted({max(1, len(order) // 2), len(order)} - {0})
        for k in steps:
            search.keep(k)
        chosen = choose([t for t in search.trials if all(t[c] == best_full[c] for c in search.cfg_keys)],
                        noise=search.score.noise)
    else:
        order, why = search.ranked_order()
        search.keep(min(keep, len(order)))
        chosen = min(search.trials[len(search.full):], key=lambda t: (t["loss"], t["slow"]))
    out = ctx.workdir / "model.onnx"
    for f in model_files(chosen["path"]):
        shutil.move(str(f), str(ctx.workdir / f.name.replace(chosen["path"].name, out.name, 1)))
    fix_external_location(out, chosen["path"].name)
    shutil.rmtree(search.work, ignore_errors=True)
    return onnx_artifact(out, search.notes(chosen, best_full, why, out), quantized=quant_summary(search.src, out),
                         kept_float=chosen["k"], calib_rel_error=chosen["loss"])


class _MixedSearch:
    """The trials of one mixed-precision build, each a real quantizer run scored on calibration data."""

    cfg_keys = ("per_channel", "reduce_range")

    def __init__(self, backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context):
        self.backend, self.prepared, self.params, self.ctx = backend, prepared, params, ctx
        self.mode = params["mode"]
        self.src, self.pre_note = backend.quant_source(prepared, ctx.calib)
        self.feeds, ref = backend.reference_outputs(prepared, ctx.calib)
        self.score = CalibScore(ref, _first_labels(ctx.calib, len(ref)), ctx.metric)
        self.outputs_cache = (prepared.dir, f"calib{getattr(ctx.calib, 'fingerprint', id(ctx.calib))}")
        self.work = ctx.workdir / "search"
        self.work.mkdir(parents=True, exist_ok=True)
        self.variants = KEEP_AS[:2] if params["keep_as"] == "auto" else (params["keep_as"],)
        self.trials: list[dict] = []
        self.full: list[dict] = []
        self.order: list[str] = []
        self.op_of: dict[str, str] = {}
        self.free = False  # keeping costs no bytes (every candidate node becomes 8-bit blocks)
        self.cfg: dict = {}

    def everything_int8(self) -> dict:
        """Trials with nothing kept, one per quantizer option; the best one's options are used after."""
        for pc in _choices(self.params["per_channel"]):
            for rr in _choices(self.params["reduce_range"]):
                self.cfg = {"per_channel": pc, "reduce_range": rr}
                self.full.append(self._trial(0, "float"))
        best = min(self.full, key=lambda t: t["loss"])
        self.cfg = {c: best[c] for c in self.cfg_keys}
        return best

    def keep_order(self, int8_size: int) -> tuple[list[str], str]:
        """The nodes to try keeping, most sensitive first, and how they were picked."""
        import onnx

        blocks = self.variants[0] in ("int8-block", "int8-weights")
        nodes = weight_nodes(onnx.load(str(self.src), load_external_data=False))
        if self.variants != ("fp16",):  # embedding tables stay int8: MatMulNBits cannot take them, fp32 is big
            nodes = [n for n in nodes if n["op_type"] != "Gather"]
        self.op_of = {n["node"]: n["op_type"] for n in nodes}
        if blocks and nodes and all(n["op_type"] in ("MatMul", "Gemm") for n in nodes):
            # keeping costs nothing, and more 8-bit blocks only get closer to fp32: try them all kept, no
            # ranking needed (this skips the sensitivity pass: 2 s of 7 on MiniLM)
            self.free, self.order = True, [n["node"] for n in nodes]
            return self.order, "every MatMul/Gemm kept costs no bytes as 8-bit blocks, so all were tried"
        ranked, why = self.ranked_order()
        extra = EXTRA_BYTES["float" if blocks else self.variants[0]]
        costs = [0.0 if blocks and self.op_of.get(n) in ("MatMul", "Gemm") else extra * int(p)
                 for n, p in zip(ranked, self._ranked["params"])]
        self.order = _within(ranked, costs, self.params["max_size_growth"] * int8_size)
        return self.order, why

    def ranked_order(self) -> tuple[list[str], str]:
        ranked = self.backend.sensitivity(self.prepared, self.ctx.calib, mode=self.mode).dropna(subset=["rel_error"])
        if self.variants[0] in ("int8-block", "int8-weights"):
            ranked = ranked[ranked["op_type"] != "Gather"]
        self._ranked = ranked
        self.op_of.update(zip(ranked["node"], ranked["op_type"]))
        self.order = list(ranked["node"])
        return self.order, "sensitivity ranked by each node's own output error (one float pass)"

    def keep(self, k: int) -> None:
        """Trials keeping the ``k`` first nodes of the order, once per way of running them."""
        kept = self.order[:k]
        blocks = any(self.op_of.get(n) in ("MatMul", "Gemm") for n in kept)
        for variant in (self.variants if blocks or self.variants == ("fp16",) else ("float",)):
            self._trial(k, variant)

    def _trial(self, k: int, variant: str) -> dict:
        kept = self.order[:k]
        base = self._quantized(kept)
        path = base
        if variant != "float" and kept:
            path = self.work / f"t{len(self.trials)}.onnx"
            (_to_fp16 if variant == "fp16" else _to_blocks)(base, path, kept, variant)
        # everything-int8 is the model the pre-processing check and int8-dynamic already ran: cached
        out = self.backend.outputs(path, self.feeds, cache=None if kept else self.outputs_cache)
        row = {**self.cfg, "k": k, "keep_as": variant if kept else "-", "slow": KEEP_AS.index(variant),
               "loss": self.score.loss(out), "value": self.score.value(out),
               "size": sum(f.stat().st_size for f in model_files(path)), "path": path}
        self.trials.append(row)
        return row

    def _quantized(self, kept: list[str]) -> Path:
        """The quantizer's model with ``kept`` left out, built once per options and kept set."""
        path = self.work / f"q{len(self.trials)}.onnx"
        cfg = self.cfg
        if self.mode == "dynamic":
            self.backend.quantize_dynamic(self.src, path, per_channel=cfg["per_channel"],
                                          reduce_range=cfg["reduce_range"], exclude=kept, cache=self.prepared.dir)
        else:
            self.backend.quantize_static(self.prepared, self.src, path, self.ctx.calib,
                                         per_channel=cfg["per_channel"], reduce_range=cfg["reduce_range"],
                                         exclude=kept)
        return path

    def notes(self, chosen: dict, best_full: dict, why: str, out: Path) -> str:
        kept = self.order[: chosen["k"]]
        how = {"float": "fp32", "int8-weights": "float compute with 8-bit weights (MatMulNBits; other ops fp32)",
               "int8-block": "int8 with per-block scales (MatMulNBits; other ops fp32)",
               "fp16": "fp16 (casts at their edges)"}
        kept_txt = (f"kept {len(kept)} node(s) out of per-tensor int8, as {how[chosen['keep_as']]} "
                    f"({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''})" if kept
                    else "kept no node out of int8")
        tried = ", ".join(f"k={t['k']}{'/' + t['keep_as'] if t['k'] else ''}: {t['value']:.4g}" for t in self.trials)
        auto = self.params["keep_float"] == "auto"
        return (f"mixed precision ({self.mode}, {'searched' if auto else 'fixed'}): chose per_channel="
                f"{chosen['per_channel']}, reduce_range={chosen['reduce_range']}, {kept_txt}; chosen by "
                f"{self.score.by} ({chosen['value']:.4g}; everything int8: {best_full['value']:.4g}); "
                f"{quant_summary(self.src, out)}; {len(self.trials)} trials ({tried}); {why}; {self.pre_note}")


# MatMulNBits block for kept nodes: one fp32 scale per 64 weights (+6 % on them). MiniLM, all MatMuls kept
# as int8-block: block 32 cosine .9994 at 27.0 % of fp32, 64 .9991 at 25.9 %, 128 .9986 at 25.4 %.
BLOCK = 64


def _to_blocks(src: Path, dst: Path, kept: list[str], keep_as: str) -> None:
    """The kept MatMul/Gemm nodes as 8-bit MatMulNBits (int8-block: accuracy_level 4, int8 activations
    quantized per block of BLOCK; int8-weights: float compute)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    def run():
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=BLOCK, is_symmetric=True,
                                 accuracy_level=4 if keep_as == "int8-block" else None,
                                 nodes_to_include=node_aliases(kept))
        q.process()
        return q.model.model
    with quiet():
        model = ort_call("onnxruntime.quantization MatMulNBitsQuantizer", run)
    save_model(model, dst)


def _to_fp16(src: Path, dst: Path, kept: list[str], _: str = "fp16") -> None:
    """The kept nodes in fp16: their float initializers stored as fp16, a Cast to fp16 on each other float
    input and back to fp32 on each output; everything else as the quantizer left it. (onnxruntime's
    float16 converter with the other nodes on its block list broke the digits CNN's int8 graph: chance
    accuracy, and the MLP's fp32 weights stayed in the file beside the fp16 copies.)"""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph, keep = model.graph, set(node_aliases(kept))  # a Gemm 'x' is MatMul 'x_MatMul' + Add by now
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    new_nodes = []
    for node in graph.node:
        if node.name not in keep:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            t = inits.get(name)
            if t is not None and t.data_type == TensorProto.FLOAT:
                half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), f"{name}_fp16")
                graph.initializer.append(half)
                if users.get(name, 0) == 1:  # nobody else reads the fp32 copy: drop it
                    graph.initializer.remove(t)
                node.input[i] = half.name
            elif name and t is None and not _is_index(node, i):
                cast = helper.make_node("Cast", [name], [f"{name}_{node.name}_fp16"], to=TensorProto.FLOAT16,
                                        name=f"{node.name}_in{i}_fp16")
                new_nodes.append(cast)
                node.input[i] = cast.output[0]
        outs = list(node.output)
        for j, name in enumerate(outs):
            node.output[j] = f"{name}_fp16"
        new_nodes.append(node)
        for name in outs:
            new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT,
                                              name=f"{node.name}_{name}_fp32"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    save_model(model, dst)


def _is_index(node, i: int) -> bool:
    """Inputs that are not float data: Gather's indices."""
    return node.op_type == "Gather" and i == 1


def _within(nodes: list[str], costs: list[float], budget: float) -> list[str]:
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
