"""Torch backend recipes: one registered handler per recipe name."""
from __future__ import annotations

import copy
import zlib
from pathlib import Path

from ...errors import CandidateError, library_failure
from ...training import TrainSettings
from ..base import Artifact, Context, Param
from .backend import TorchBackend, TorchPrepared, build
from .prune import count_params, heads_note, structured, unstructured
from .int4 import ALGORITHMS as INT4_ALGORITHMS, check_group, quantize_int4
from .quant import int8_dynamic_config, int8_weight_only_config, pt2e_static, torchao_quantize
from .reports import describe, layer_counts, pt2e_counts
from .runner import PT2, first_output, import_torch
from .train import fit, supervised


@TorchBackend.recipe("fp16")
def _fp16(backend: TorchBackend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    torch = import_torch()

    class Half(torch.nn.Module):
        """fp16 weights and activations inside; fp32 in and out, as the app feeds it."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner.half()

        def forward(self, *args):
            args = [a.half() if a.is_floating_point() else a for a in args]
            out = first_output(self.inner(*args))
            return out.float() if out.is_floating_point() else out

    module = Half(copy.deepcopy(prepared.module))
    art = build(module, prepared, ctx, notes=["fp16 weights and activations (fp32 inputs/outputs cast "
                                                "inside the program)"],
                 info={"quantized": "fp16 (all float weights)"})
    if art.format == PT2:
        art.notes += "; XNNPACK could not run fp16 on this CPU, so the .pt2 runs fp16 on eager torch CPU kernels"
    return art


def _torchao_linear(prepared: TorchPrepared, ctx: Context, config, recipe: str, how: str, hint: str = "") -> Artifact:
    """A torchao ``quantize_`` recipe: it touches nn.Linear only, and the row says so."""
    total = layer_counts(prepared.module)
    module, q = torchao_quantize(prepared.module, config)
    if not q:
        raise CandidateError(f"{recipe} found no nn.Linear layer to quantize (torchao quantizes Linear layers "
                             f"only){hint}.")
    what = describe(q, total, "int8")
    return build(module, prepared, ctx, info={"quantized": what}, notes=[f"{how}: {what}"])


@TorchBackend.recipe("int8-dynamic", honours={"per_channel": (True,)})
def _int8_dynamic(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    return _torchao_linear(prepared, ctx, int8_dynamic_config(), "int8-dynamic",
                           "torchao Int8DynamicActivationIntxWeightConfig (int8 per-channel weights, activations "
                           "quantized at run time)", "; try int8-static, which covers convolutions")


@TorchBackend.recipe("int8-weight-only", honours={"group_size": (None,)})
def _int8_weight_only(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    return _torchao_linear(prepared, ctx, int8_weight_only_config(), "int8-weight-only",
                           "torchao Int8WeightOnlyConfig (int8 weights, fp32 compute)")


# activations int8 by default here: XNNPACK's only packed 4-bit kernels are qd8-qb4w (int8 dynamic
# activations), so that is what makes a 4-bit .pte; activations=float stays the unpacked .pt2 (see int4.py)
@TorchBackend.recipe("int4-weight-only", defaults={"activations": "int8"},
                     algorithm=Param("rtn", choices=INT4_ALGORITHMS,
                                     help="how the 4-bit values are chosen: rtn (round to nearest), hqq (HQQ "
                                          "scale search, data-free) or awq (activation-aware scales searched on "
                                          "calibration data)"))
def _int4_weight_only(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    total = layer_counts(prepared.module)
    group, algorithm, acts = int(params["group_size"]), params["algorithm"], params["activations"]
    skipped = check_group(prepared.module, group)
    with library_failure(f"torchao int4 quantization ({algorithm})"):
        module, q, extra = quantize_int4(prepared.module, group, acts, algorithm, ctx.calib, prepared.input_names)
    what = describe(q, total, f"int4 {algorithm}")
    name = "IntxWeightOnlyConfig" if acts == "float" else "Int8DynamicActivationIntxWeightConfig"
    notes = [f"torchao {name}(int4, group {group}, {algorithm}): {q.get('Linear', 0)} Linear layer(s) with 4-bit "
             f"weights; {what}", *extra]
    if skipped:
        notes.append(f"{skipped} Linear layer(s) kept fp32: input size not a multiple of group_size={group}")
    art = build(module, prepared, ctx, info={"quantized": what, "algorithm": algorithm, "group_size": group},
                notes=notes)
    if art.format == PT2:
        art.notes += ("; the .pt2 stores each int4 value in one byte (torchao's unpacked layout), so the "
                      "size is about that of int8; activations=int8 gives a packed 4-bit XNNPACK .pte")
    return art


@TorchBackend.recipe("int8-static", honours={"calibration": ("minmax", "histogram", "entropy"),
                                             "activations": ("int8",), "per_channel": (True, False)},
                     defaults={"calibration": "histogram"})  # XNNPACKQuantizer's own default observer
def _int8_static(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    calib = ctx.calib
    total = layer_counts(prepared.module)
    with library_failure("PT2E quantization (XNNPACKQuantizer)"):
        module, stats = pt2e_static(prepared.module, prepared.args, calib, prepared.input_names,
                                          bool(params["per_channel"]), params["calibration"])
    what = describe(stats["quantized"], total, "int8")
    scheme = "per-channel" if params["per_channel"] else "per-tensor"
    notes = [f"PT2E, XNNPACKQuantizer (int8 {scheme} weights, int8 activations, {params['calibration']} "
             f"observers, calibrated on {stats['calibrated_on']} calibration examples, {stats['scope']}): {what}"]
    art = build(module, prepared, ctx, info={"quantized": what, "quantizer": "XNNPACKQuantizer"}, notes=notes)
    if art.format == PT2:
        art.notes += ("; the .pt2 keeps fp32 weights beside quantize/dequantize nodes (simulated int8), so it "
                      "is not smaller than fp32")
    return art


# static by default: XNNPACK's dynamic int8 takes Linear layers only, so mode dynamic leaves every Conv fp32
# (the digits CNN: 35 % of fp32 dynamic, 26 % static, the same accuracy)
@TorchBackend.recipe("mixed-precision", defaults={"mode": "static"})
def _mixed(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    """int8 (PT2E, XNNPACKQuantizer) with the most sensitive Linear/Conv layers kept float; see ``mixed``."""
    from .mixed import mixed_precision

    total = layer_counts(prepared.module)
    sens = backend.sensitivity(prepared, ctx.calib, mode=params["mode"])
    with library_failure("PT2E quantization (XNNPACKQuantizer)"):
        module, notes, info = mixed_precision(prepared, params, ctx, sens)
    if not pt2e_counts(module):
        raise CandidateError(f"mixed-precision ({params['mode']}) left no Linear/Conv layer int8: "
                             f"XNNPACKQuantizer quantized none, or keep_float={params['keep_float']} kept them all.")
    what = describe(pt2e_counts(module), total, "int8")
    notes[0] += f": {what}"
    art = build(module, prepared, ctx, info={"quantized": what, **info}, notes=notes)
    if art.format == PT2:
        art.notes += ("; the .pt2 keeps fp32 weights beside quantize/dequantize nodes (simulated int8), so it "
                      "is not smaller than fp32")
    return art


@TorchBackend.recipe("prune-unstructured")
def _prune_unstructured(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    module, sparsity, n = unstructured(prepared.module, params["amount"])
    art = build(module, prepared, ctx, notes=[], info={"quantized": "none (fp32)", "sparsity": round(sparsity, 4)})
    compressed = len(zlib.compress(Path(art.path).read_bytes(), 9))
    art.info["size_compressed_bytes"] = compressed
    art.notes += (f"; global L1 pruning zeroed {sparsity:.0%} of the weights of {n} Conv/Linear layers; "
                  f"size is the dense file, size_compressed_bytes is the file zlib-compressed "
                  f"({compressed} bytes); dense kernels run zeros at full cost, so no speed gain")
    return art


@TorchBackend.recipe("prune-structured",
                     finetune_epochs=Param(5, low=0, high=100,
                                           help="epochs of fine-tuning on train= data (else the labelled "
                                                "calibration data)"))
def _prune_structured(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    before = count_params(prepared.module)
    with library_failure("Torch-Pruning on this model"):
        module = structured(prepared.module, prepared.args, params["amount"])
    after = count_params(module)
    notes = [f"Torch-Pruning MetaPruner, L1 magnitude, {params['amount']:.0%} of channels removed (last layer "
             f"kept): {before} -> {after} parameters ({_ratio(after, before)})"]
    notes += [n for n in [heads_note(prepared.module, module)] if n]
    info = {"quantized": "none (fp32)", "params_before": before, "params_after": after}
    epochs = int(params["finetune_epochs"])
    data, source = (ctx.train, "train") if ctx.train is not None else (ctx.calib, "calibration")
    if epochs == 0:
        notes.append("not fine-tuned (finetune_epochs=0)")
    elif data is None:
        notes.append("not fine-tuned: no train= or calibration data")
    elif not data.has_labels:
        notes.append(f"not fine-tuned: the {source} data has no labels (distill with student='pruned' needs none)")
    else:
        settings = TrainSettings(epochs, 1e-3, seed=ctx.seed)
        report = fit(module, data, prepared.input_names, supervised, settings, ctx, what="fine-tuning")
        notes.append(report.note(f"fine-tuned (cross-entropy) on {source} data:"))
        info.update(report.info())
    return build(module, prepared, ctx, notes=notes, info=info)


def _ratio(a: int, b: int) -> str:
    return f"{a / max(b, 1):.0%}"
