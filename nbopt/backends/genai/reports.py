"""What a built folder holds, read back from its ``model.onnx`` (the external data is not loaded: byte
counts come from the tensors' external-data entries), not from what was asked for.

``summary(folder)`` says how the weights are stored ("MatMulNBits 15 (4-bit, block 32, accuracy_level 1),
GatherBlockQuantized 1 (4-bit); fp32 matrices 1"), ``size_breakdown(artifact)`` where the folder's
bytes go: tensor bytes by dtype, the largest tensors, and tensors against the config and tokenizer files.
"""
from __future__ import annotations

from pathlib import Path

# ONNX TensorProto type names by nbopt's size buckets
_BUCKETS = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "fp16", "INT8": "int8", "UINT8": "int8",
            "INT4": "int4", "UINT4": "int4"}
_PACKED = {"MatMulNBits": 1, "GatherBlockQuantized": 0}  # op -> input holding the packed weight


def _model(folder: Path):
    import onnx

    return onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False)


def _attr(node, name: str, default=None):
    return next((a.i for a in node.attribute if a.name == name), default)


def _packed(model) -> dict[str, tuple[str, int]]:
    """Packed weight name -> (op, bits) for the quantized MatMul and Gather nodes."""
    out = {}
    for node in model.graph.node:
        if node.op_type in _PACKED and len(node.input) > _PACKED[node.op_type]:
            out[node.input[_PACKED[node.op_type]]] = (node.op_type, _attr(node, "bits", 4))
    return out


def _float_weights(model) -> set[str]:
    """Names of the weights a MatMul / Gemm multiplies by or a Gather reads rows of (left float)."""
    out = set()
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1:
            out.add(node.input[1])
        elif node.op_type == "Gather" and node.input:
            out.add(node.input[0])
    return out


def summary(folder: Path) -> str:
    model = _model(folder)
    ops: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type in _PACKED:
            ops.setdefault(node.op_type, []).append(node)
    parts = []
    for op, nodes in ops.items():
        bits = sorted({_attr(n, "bits", 4) for n in nodes})
        blocks = sorted({_attr(n, "block_size", 0) for n in nodes} - {0})
        levels = sorted({_attr(n, "accuracy_level", 0) for n in nodes} - {0})
        detail = f"{'/'.join(map(str, bits))}-bit" + (f", block {'/'.join(map(str, blocks))}" if blocks else "")
        detail += f", accuracy_level {'/'.join(map(str, levels))}" if levels else ""
        parts.append(f"{op} {len(nodes)} ({detail})")
    weights = _float_weights(model)
    floats: dict[str, int] = {}
    for t in model.graph.initializer:
        kind = _type_name(t.data_type)
        if t.name in weights and kind in ("FLOAT", "FLOAT16", "BFLOAT16"):
            floats[kind] = floats.get(kind, 0) + 1
    parts += [f"{_BUCKETS[k]} matrices {n}" for k, n in floats.items()]
    return ", ".join(parts) or "no weights found"


def _type_name(data_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(data_type)


def _tensor_bytes(t, folder: Path) -> int:
    import onnx
    from onnx import numpy_helper

    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        return int(info.get("length", 0))
    return len(t.raw_data) if t.raw_data else int(numpy_helper.to_array(t).nbytes)


def size_breakdown(artifact) -> dict:
    from ...speed import SizeTally

    folder = Path(artifact.path)
    tally = SizeTally(int(artifact.size_bytes))
    model = _model(folder)
    packed = _packed(model)
    for t in model.graph.initializer:
        nbytes = _tensor_bytes(t, folder)
        kind = _type_name(t.data_type)
        bucket = _BUCKETS.get(kind, "other")
        if t.name in packed:
            op, bits = packed[t.name]
            bucket, kind = {4: "int4", 8: "int8"}.get(bits, "other"), f"int{bits} (packed {kind.lower()})"
        elif t.name.endswith(("_scales", "_zero_points")):
            bucket = "other"
        tally.tensor(t.name, kind, list(t.dims), nbytes, bucket)
        tally.segment("tensors (model.onnx + model.onnx.data)", nbytes)
    if any(bits == 4 for _, bits in packed.values()):
        tally.note("4-bit weights are packed two per uint8 byte: counted as int4; their scales are 'other'")
    return tally.result("graph, genai_config.json and tokenizer files")
