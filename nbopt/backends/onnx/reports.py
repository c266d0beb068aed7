"""ONNX backend: what a quantized graph holds, read from the file (shown as ``quantized``), and where the
bytes of an .onnx artifact go (``size_breakdown``)."""
from __future__ import annotations

from pathlib import Path

from .graph import weight_nodes_meta


def quant_summary(float_path: Path, q_path: Path) -> str:
    """'quantized 16/17 MatMul, 1/1 Gemm' from the weight nodes of the float model and the output graph."""
    import onnx

    fm = onnx.load(str(float_path), load_external_data=False)
    qm = onnx.load(str(q_path), load_external_data=False)
    cands = weight_nodes_meta(fm)
    q_inits = [t.name for t in qm.graph.initializer]
    counts: dict[str, list[int]] = {}
    for name, op, idx, weight in cands:
        done = any(t.startswith(weight) and t != weight and ("quantized" in t or "_Q" in t) for t in q_inits)
        c = counts.setdefault(op, [0, 0])
        c[0] += int(done)
        c[1] += 1
    return ", ".join(f"{d}/{t} {op}" for op, (d, t) in counts.items())


# -- where the bytes go --------------------------------------------------------------------------------
_ONNX_NAMES = {"FLOAT": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "DOUBLE": "fp64", "INT8": "int8",
               "UINT8": "uint8", "INT4": "int4", "UINT4": "uint4", "INT16": "int16", "UINT16": "uint16",
               "INT32": "int32", "UINT32": "uint32", "INT64": "int64", "UINT64": "uint64", "BOOL": "bool",
               "STRING": "string"}
# contrib ops: input positions that hold quantization parameters, not weights
_QPARAM_INPUTS = {"MatMulNBits": {2, 3, 4}, "GatherBlockQuantized": {2, 3}, "DynamicQuantizeMatMul": {2, 3},
                  "MatMulIntegerToFloat": {2, 3, 4, 5}, "QAttention": {3, 6, 7, 8}}


def size_breakdown(artifact) -> dict:
    """Bytes of an .onnx artifact (external data included) by tensor dtype, its largest tensors, and
    initializers versus the graph. Read from the file: ``onnx.load`` without loading the external data
    (its byte counts come from the tensors' external-data entries)."""
    import onnx

    from ...speed import SizeTally

    path = Path(artifact.path)
    tally = SizeTally(int(artifact.size_bytes))
    model = onnx.load(str(path), load_external_data=False)
    graphs = list(_graphs(model.graph))
    consumers: dict[str, list[tuple]] = {}
    for g in graphs:
        for node in g.node:
            for pos, name in enumerate(node.input):
                consumers.setdefault(name, []).append((node, pos))
    nbits = {4: 0, 8: 0, 2: 0}
    casts = 0
    for g in graphs:
        for t in g.initializer:
            nbytes = _tensor_bytes(t, path.parent)
            tally.segment("initializers", nbytes)
            dtype, bucket = _classify(t, consumers.get(t.name, []), nbits)
            tally.tensor(t.name, dtype, list(t.dims), nbytes, bucket)
        for node in g.node:
            casts += node.op_type == "Cast"
            if node.op_type != "Constant":
                continue
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    nbytes = _tensor_bytes(a.t, path.parent)
                    tally.segment("Constant nodes", nbytes)
                    dtype, bucket = _classify(a.t, consumers.get(node.output[0], []), nbits)
                    tally.tensor(node.output[0], dtype, list(a.t.dims), nbytes, bucket)
    if nbits[4]:
        tally.note(f"{nbits[4]} MatMulNBits weights (bits=4) are packed two 4-bit values per uint8 byte: "
                   "counted as int4")
    if nbits[8]:
        tally.note(f"{nbits[8]} MatMulNBits weights (bits=8) are stored one value per uint8 byte: counted as int8")
    if tally.by_dtype["fp16"] and casts:
        tally.note(f"{casts} Cast nodes convert between fp16 and fp32 at run time (inputs/outputs, or ops "
                   "without an fp16 kernel)")
    return tally.result("graph/other")


def _graphs(graph):
    """The graph and every subgraph (If / Loop / Scan bodies)."""
    import onnx

    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def _tensor_bytes(t, folder: Path) -> int:
    """Stored bytes of a TensorProto: external-data length (or the rest of its file), raw data, or typed
    fields as the packed element size."""
    import onnx
    from onnx import numpy_helper

    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if "length" in info:
            return int(info["length"])
        file = folder / info.get("location", "")
        return max(file.stat().st_size - int(info.get("offset", 0)), 0) if file.is_file() else 0
    if t.raw_data:
        return len(t.raw_data)
    try:
        return int(numpy_helper.to_array(t).nbytes)
    except Exception:  # noqa: BLE001 - an odd tensor: its protobuf size is what it takes in the file
        return t.ByteSize()


def _classify(t, users: list[tuple], nbits: dict) -> tuple[str, str | None]:
    """(dtype shown, bucket override) of one stored tensor from its type and the nodes that read it."""
    import onnx

    kind = onnx.TensorProto.DataType.Name(t.data_type)
    name = _ONNX_NAMES.get(kind, kind.lower())
    for node, pos in users:
        if node.op_type == "MatMulNBits" and pos == 1:
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            nbits[bits] = nbits.get(bits, 0) + 1
            return (f"int{bits} (packed {name})", "int4" if bits == 4 else "int8" if bits == 8 else "other")
        if _is_qparam(node, pos):
            return f"{name} scale/zero point", "other"
    return name, None


def _is_qparam(node, pos: int) -> bool:
    """True when input ``pos`` of ``node`` is a scale or a zero point (from the op's schema)."""
    if node.op_type in _QPARAM_INPUTS:
        return pos in _QPARAM_INPUTS[node.op_type]
    try:
        import onnx

        schema = onnx.defs.get_schema(node.op_type, domain=node.domain or "")
    except Exception:  # noqa: BLE001 - a contrib op onnx does not know
        return False
    formal = schema.inputs
    if not formal:
        return False
    name = formal[min(pos, len(formal) - 1)].name
    return "scale" in name or "zero_point" in name
