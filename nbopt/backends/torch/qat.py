"""Quantization-aware training (``qat``) on the torch backend, and the fine-tune the onnx backend shares.

bits=8, PT2E: the model is exported, prepared with ``prepare_qat_pt2e`` and the XNNPACKQuantizer's QAT
config (int8 per-channel symmetric weights, int8 per-tensor activations, fake quantizers whose ranges are
moving-average min/max), calibrated (calibration batches run through it with fake quantization on, so
training starts from the post-training int8 model), fine-tuned through the torch engine ``fit``,
converted with ``convert_pt2e`` and lowered to an XNNPACK ``.pte`` as int8-static is.

bits=4, torchao QAT on nn.Linear layers: ``QATConfig(Int8DynamicActivationIntxWeightConfig(int4, group))``
fake-quantizes int4 grouped weights and int8 per-token dynamic activations while training; its convert
step gives the same program as int4-weight-only with activations=int8 (XNNPACK's qd8-qb4w kernels).

The loss is the task loss when train= has labels, otherwise distillation from the fp32 model's outputs.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...errors import CandidateError, library_failure
from ...quiet import quiet
from ...training import TrainReport, TrainSettings
from ..base import Artifact, Context, Param
from .backend import TorchBackend, TorchPrepared, build
from .quant import calibrate, export_for_pt2e, int4_config, linear_divisible_by, torchao_quantize
from .reports import describe, layer_counts, pt2e_counts
from .runner import PT2, first_output, import_torchao
from .train import distillation_loss, fit, supervised, teacher_forward

QAT_QUANTIZER = "XNNPACKQuantizer"
INT4_GROUPS = (16, 32, 64, 128, 256)


@dataclass
class QatRun:
    """A finished QAT fine-tune: the converted module and what the row says about it."""

    module: Any  # int8: the convert_pt2e graph (quantize/dequantize nodes); int4: torchao-quantized Linears
    report: TrainReport
    quantized: Counter  # layers whose weights are stored quantized, by type
    converted_by: str  # how the fake-quantized model became the quantized one
    notes: list[str] = field(default_factory=list)


def qat_finetune(module, example: tuple, input_names: list[str], params: dict, ctx: Context) -> QatRun:
    """Quantization-aware fine-tuning of ``module`` (positional inputs, fp32, eval) on ``ctx.train``.

    ``module`` itself is not changed (it is the teacher when train= has no labels)."""
    if ctx.train is None:
        raise CandidateError("qat needs train= data.")
    if int(params["bits"]) == 4:
        return _int4(module, input_names, params, ctx)
    return _int8(module, example, input_names, params, ctx)


def qat_loss(teacher, train) -> tuple[Any, str]:
    """(loss, what it is): the task loss on labelled train data, else distillation from ``teacher`` (the fp32
    model): KL at temperature 1 on class scores, cosine + MSE on other outputs."""
    if train.has_labels:
        return supervised, "the task loss on the train labels (cross-entropy for class labels)"
    teach = teacher_forward(teacher)

    def distill(model, x, y):
        out = first_output(model(*x))
        return distillation_loss(out, teach(x), None, 1.0, embedding=out.dim() < 2 or out.shape[-1] < 2)

    return distill, "distillation from the fp32 model's outputs (train= has no labels; KL at temperature 1)"


def _int8(module, example: tuple, input_names: list[str], params: dict, ctx: Context) -> QatRun:
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    with library_failure("PT2E prepare_qat_pt2e (XNNPACKQuantizer)"):
        # on a copy: an exported program shares its parameters with the module, and training would change
        # the caller's model (the fp32 teacher, and what other recipes start from)
        program, batch = export_for_pt2e(copy.deepcopy(module), example)
        with quiet():
            prepared = prepare_qat_pt2e(program.module(), qat_quantizer())
    train_mode, eval_mode = mode_switches(prepared)
    eval_mode(prepared)  # calibration sees inference behaviour (dropout off, batch-norm running statistics)
    with library_failure("Calibrating the QAT model"):
        seen = calibrate(prepared, ctx.calib_or_train, input_names, batch)
    source = "calibration" if ctx.calib is not None else "train"
    loss, how = qat_loss(module, ctx.train)
    # a program that pins its batch size (``batch``) trains on batches of that size
    settings = TrainSettings.of(params, ctx.seed, **({"batch_size": batch} if batch else {}))
    report = fit(prepared, ctx.train, input_names, loss, settings, ctx, what="qat",
                 train_mode=train_mode, eval_mode=eval_mode)
    with library_failure("PT2E convert_pt2e"), quiet():
        converted = convert_pt2e(prepared)
    notes = [f"PT2E prepare_qat_pt2e with {QAT_QUANTIZER} (int8 per-channel symmetric weights, int8 per-tensor "
             f"activations, moving-average min/max fake quantizers) calibrated on {seen} {source} examples, then "
             f"fine-tuned with fake quantization on, loss: {how}",
             report.note("qat")]
    if batch:
        notes.append(f"the model pins its batch size, so it trained on batches of {batch}")
    return QatRun(converted, report, pt2e_counts(converted), "convert_pt2e", notes)


def mode_switches(graph_module):
    """(train_mode, eval_mode) for a PT2E graph: torchao's ``move_exported_model_to_train`` / ``_eval``, which
    rewrite dropout and batch-norm patterns, where the graph has such ops. They re-export their patterns on
    every call (about a second each, twice an epoch), so a graph without either op, the same in both modes,
    gets no-ops."""
    with quiet():
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    targets = [str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"]
    if any("dropout" in t or "batch_norm" in t for t in targets):
        return move_exported_model_to_train, move_exported_model_to_eval
    return _same, _same


def _same(model):
    return model


def qat_quantizer():
    """The XNNPACKQuantizer with its QAT config: what int8-static uses, with fake quantizers for observers."""
    with quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

    from .quant import keep_integer_scalars

    class QatXNNPACKQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):  # transformers' integer position ids stay integer
            before = set(model.graph.nodes)
            return keep_integer_scalars(super().transform_for_annotation(model), before)

    quantizer = QatXNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    return quantizer


def _int4(module, input_names: list[str], params: dict, ctx: Context) -> QatRun:
    import_torchao()
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    group = int(params["group_size"])
    base, keep = int4_config(group, "int8"), linear_divisible_by(group)
    model = copy.deepcopy(module)
    with library_failure("torchao QATConfig (prepare)"), quiet():
        quantize_(model, QATConfig(base, step="prepare"), filter_fn=keep)
    if not any(hasattr(m, "weight_fake_quantizer") for m in model.modules()):
        raise CandidateError(f"qat bits=4 found no nn.Linear layer whose input size is a multiple of "
                             f"group_size={group} (torchao's 4-bit QAT covers Linear layers only); try a smaller "
                             "group_size, or bits=8.")
    loss, how = qat_loss(module, ctx.train)
    settings = TrainSettings.of(params, ctx.seed)
    report = fit(model, ctx.train, input_names, loss, settings, ctx, what="qat")
    with library_failure("torchao QATConfig (convert)"):
        converted, quantized = torchao_quantize(model, QATConfig(base, step="convert"), filter_fn=keep)
    notes = [f"torchao QATConfig(Int8DynamicActivationIntxWeightConfig(int4, group {group})): int4 grouped "
             f"weights and int8 per-token dynamic activations fake-quantized on Linear layers, no calibration "
             f"(ranges are computed at run time), fine-tuned with loss: {how}", report.note("qat")]
    return QatRun(converted, report, quantized, "QATConfig convert (the int4-weight-only activations=int8 program)",
                  notes)


@TorchBackend.recipe("qat", group_size=Param(32, choices=INT4_GROUPS,
                                            help="bits=4: weights share one scale per group of this many inputs"))
def _qat(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    bits = int(params["bits"])
    total = layer_counts(prepared.module)
    run = qat_finetune(prepared.module, prepared.args, prepared.input_names, params, ctx)
    what = describe(run.quantized, total, f"int{bits}")
    info = {"quantized": what, **run.report.info()}
    if bits == 8:
        info["quantizer"] = QAT_QUANTIZER
    art = build(run.module, prepared, ctx, notes=[*run.notes, f"{run.converted_by}: {what}"], info=info)
    if art.format == PT2:
        art.notes += ("; the .pt2 keeps fp32 weights beside quantize/dequantize nodes (simulated int8), so it is "
                      "not smaller than fp32" if bits == 8 else
                      "; the .pt2 stores each int4 value in one byte (torchao's unpacked layout)")
    return art
