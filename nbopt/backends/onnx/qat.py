"""``qat`` on the onnx backend: the torch QAT fine-tune the torch backend runs (``..torch.qat``), on the torch
module the graph was exported from, then the QAT result itself exported to an ONNX QDQ model.

What is exported is ``convert_pt2e``'s graph: int8 weights with their per-channel scales and the activation
scales the fake quantizers held at the kept epoch. The dynamo exporter writes its quantize / dequantize
ops as QuantizeLinear / DequantizeLinear, so the ONNX model computes what the QAT model computed (no
re-calibration by onnxruntime, which would choose other activation ranges than the ones QAT trained
with); onnxruntime fuses the pairs into QLinearConv / QGemm kernels.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ...errors import CandidateError, library_failure
from ...quiet import quiet
from ..base import Artifact, Context
from .backend import OnnxBackend, OnnxPrepared, onnx_artifact
from .convert import save_model
from .runner import OrtRunner

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
NO_MODULE = ("qat on the onnx backend needs the torch model the graph came from (pass the nn.Module, not an "
             ".onnx file).")


@OnnxBackend.recipe("qat", honours={"bits": (8,)})
def _qat(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    if prepared.module is None:
        raise CandidateError(NO_MODULE)
    from ..torch.qat import QAT_QUANTIZER, qat_finetune
    from ..torch.runner import Positional, to_tensors

    names = list(ctx.train.input_names)
    inputs, _ = next(iter(ctx.train.batches(1)))
    example = to_tensors({k: inputs[k] for k in names})
    module = Positional.wrap(prepared.module, names, prepared.single_input)
    run = qat_finetune(module, example, names, params, ctx)
    out = ctx.workdir / "model.onnx"
    how = export_qdq(run.module, example, prepared.input_names, out)
    with library_failure("onnxruntime loading the QAT model"), quiet():
        runner = OrtRunner(out, threads=1)
        runner({k: v.numpy() for k, v in zip(prepared.input_names, example)})
    summary = qdq_summary(out)
    notes = [*run.notes, f"{run.converted_by}, exported with the torch.onnx dynamo exporter{how}: its int8 "
             "weights, per-channel weight scales and QAT activation scales as QuantizeLinear/DequantizeLinear "
             "(int8 activations, no onnxruntime re-calibration)", summary]
    return onnx_artifact(out, "; ".join(notes), quantized=summary, quantizer=QAT_QUANTIZER, **run.report.info())


def export_qdq(converted, example: tuple, graph_names: list[str], out: Path) -> str:
    """Export the convert_pt2e graph to ``out`` (batch axis dynamic where the graph allows); '' or how."""
    import onnx
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    pair = tuple(torch.cat([a, a]) if a.dim() else a for a in example)  # batch 2: a symbolic batch, not 1

    def export(args, shapes):
        with quiet():
            torch.onnx.export(converted, args, str(out), input_names=graph_names, dynamic_shapes=shapes,
                              dynamo=True, optimize=True, verify=False, external_data=False)

    how = ""
    with library_failure("torch.onnx export of the QAT-converted graph"):
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            export(pair, tuple({0: batch} if a.dim() else None for a in pair))
        except Exception:  # noqa: BLE001 - a graph that pins its batch size exports at that size
            export(example, None)
            how = f" at the model's fixed batch size {len(example[0])}"
        proto = onnx.load(str(out))
    for node in proto.graph.node:  # the exporter's debug metadata (stack traces) would outweigh small weights
        del node.metadata_props[:]
    save_model(proto, out)
    return how


def qdq_summary(path: Path) -> str:
    """'2/2 Conv, 2/2 Gemm (int8 weights); 5 QuantizeLinear': weight ops whose weight is an int8 initializer
    dequantized in the graph, and the activation quantize nodes."""
    import onnx
    from onnx import TensorProto

    proto = onnx.load(str(path), load_external_data=False)
    int8 = {t.name for t in proto.graph.initializer if t.data_type == TensorProto.INT8}
    dq = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    total, done = Counter(), Counter()
    for node in proto.graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1:
            total[node.op_type] += 1
            done[node.op_type] += int(dq.get(node.input[1]) in int8)
    q = sum(1 for n in proto.graph.node if n.op_type == "QuantizeLinear")
    ops = ", ".join(f"{done[op]}/{total[op]} {op}" for op in WEIGHT_OPS if total[op])
    return f"{ops or 'no Conv/Gemm/MatMul'} (int8 weights); {q} QuantizeLinear (int8 activations)"

