"""Per-node quantization sensitivity for the ONNX backend, from one float pass over calibration data.

One run of the float model in onnxruntime, with the inputs of every weight node added as graph outputs,
caches what each node sees. Each node is then run alone (a one-node model with the same op and attributes,
in onnxruntime) twice on its cached input: as given, and with int8 inputs and weights as onnxruntime's
quantizer makes them (weights symmetric int8 per output channel; activations uint8, their range taken per
example at run time in dynamic mode, from the calibration data in static mode; embedding tables uint8 per
tensor). The node's own output error ranks it: rank 1 = most sensitive.

This costs one calibration pass plus milliseconds per node, where quantizing the model once per node and
running it end to end cost a minute on a 6-layer transformer. The mixed-precision search then measures its
few trials end to end with the real quantizer (``recipes._mixed``); only the ranking comes from here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import one_line
from ...mixed import fidelity

# op types whose constant weight onnxruntime.quantization turns into int8
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather")
MAX_EXAMPLES = 32  # cached inputs: 32 examples keep a transformer's activations to a few hundred MB


def weight_nodes(model) -> list[dict[str, Any]]:
    """Nodes with a constant float weight that the quantizer can turn into int8, with the weight size."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in WEIGHT_OPS:
            continue
        idx = 0 if node.op_type == "Gather" else 1
        if len(node.input) <= idx or node.input[idx] not in inits:
            continue
        w = inits[node.input[idx]]
        if w.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        numel = int(np.prod(w.dims)) if len(w.dims) else 1
        if numel < 16:
            continue
        out.append({"node": node.name or f"#{i}", "op_type": node.op_type, "weight": w.name, "numel": numel})
    return out


def sensitivity_table(proto, feeds: list[dict[str, np.ndarray]], mode: str = "dynamic"):
    """DataFrame (node, op_type, params, rel_error, cosine, max_abs_diff, rank, error), rank 1 = most
    sensitive, measured on the node's own output (see the module docstring)."""
    import pandas as pd

    nodes = weight_nodes(proto)
    by_name = {(n.name or f"#{i}"): n for i, n in enumerate(proto.graph.node)}
    seen = _node_inputs(proto, [by_name[n["node"]] for n in nodes], feeds)
    inits = {t.name: t for t in proto.graph.initializer}
    rows = []
    for n in nodes:
        node = by_name[n["node"]]
        try:
            fid = _one_node(node, inits, seen, mode)
            err = None
        except Exception as exc:  # noqa: BLE001 - a node that cannot be simulated is reported, not fatal
            fid = {"rel_error": np.nan, "cosine": np.nan, "max_abs_diff": np.nan}
            err = one_line(exc, 200, with_type=True)
        rows.append({"node": n["node"], "op_type": n["op_type"], "params": n["numel"], **fid, "error": err})
    df = pd.DataFrame(rows, columns=["node", "op_type", "params", "rel_error", "cosine", "max_abs_diff", "error"])
    df = df.sort_values("rel_error", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.insert(len(df.columns) - 1, "rank", np.arange(1, len(df) + 1))
    return df


def _node_inputs(proto, nodes: list, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The activation input of each node (indices for Gather), from one float run with them as outputs."""
    import onnx
    import onnxruntime as ort

    want = [n.input[1] if n.op_type == "Gather" else n.input[0] for n in nodes]
    graph_in = {i.name for i in proto.graph.input}
    extra = [w for w in dict.fromkeys(want) if w not in graph_in]
    have = {o.name for o in proto.graph.output}
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for name in extra:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, _elem_type(proto, name), None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got: dict[str, list] = {w: [] for w in dict.fromkeys(want)}
    count = 0
    for f in feeds:
        res = dict(zip(names, sess.run(names, f)))
        for w in got:
            got[w].append(f[w] if w in graph_in else res[w])
        count += len(next(iter(f.values())))
        if count >= MAX_EXAMPLES:
            break
    return {w: np.concatenate(v) for w, v in got.items()}


def _elem_type(proto, name: str) -> int:
    from onnx import TensorProto

    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return vi.type.tensor_type.elem_type
    gather_idx = any(n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == name for n in proto.graph.node)
    return TensorProto.INT64 if gather_idx else TensorProto.FLOAT


def _one_node(node, inits: dict, seen: dict, mode: str) -> dict[str, float]:
    """Fidelity of this node's output when its input and weight are fake-quantized to int8."""
    from onnx import numpy_helper

    widx = 0 if node.op_type == "Gather" else 1
    xidx = 1 if node.op_type == "Gather" else 0
    x = seen[node.input[xidx]]
    w = numpy_helper.to_array(inits[node.input[widx]]).astype(np.float32)
    consts = {i: numpy_helper.to_array(inits[name]) for i, name in enumerate(node.input)
              if name and name in inits and i != widx}
    if node.op_type == "Gather":
        wq, xq = _fake_quant_tensor(w), x
    else:
        wq = _fake_quant_channels(w, _channel_axis(node, w.ndim))
        xq = _fake_quant_activations(x, per_example=(mode == "dynamic"))
    run = _single_node_runner(node, widx, xidx, consts, x.dtype)
    ref = run(x, w)
    out = run(xq, wq)
    return fidelity(ref.reshape(len(x), -1) if ref.ndim else ref, out.reshape(len(x), -1) if out.ndim else out)


def _channel_axis(node, ndim: int) -> int:
    """The output-channel axis of the weight, where onnxruntime puts its per-channel scales."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "MatMul":
        return ndim - 1
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if node.op_type == "ConvTranspose":
        return 1
    return 0  # Conv


def _fake_quant_channels(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 with one scale per output channel, back to float."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other, keepdims=True) if other else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)


def _fake_quant_tensor(w: np.ndarray) -> np.ndarray:
    """Asymmetric uint8 with one scale for the whole tensor (onnxruntime's Gather tables), back to float."""
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = np.round(-lo / scale)
    return ((np.clip(np.round(w / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)


def _fake_quant_activations(x: np.ndarray, per_example: bool) -> np.ndarray:
    """uint8 activations with the range including zero: per example (dynamic: each call's own range, batch 1
    as deployed) or over all calibration examples (static minmax)."""
    if not per_example:
        return _fake_quant_tensor(x)
    return np.stack([_fake_quant_tensor(x[i:i + 1])[0] for i in range(len(x))])


def _single_node_runner(node, widx: int, xidx: int, consts: dict, x_dtype):
    """A callable (x, w) -> output running only ``node`` in onnxruntime, its other inputs as constants."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    inits = [numpy_helper.from_array(v, names[i]) for i, v in consts.items()]
    x_type = helper.np_dtype_to_tensor_dtype(np.dtype(x_dtype))
    one = helper.make_node(node.op_type, names, ["y"], domain=node.domain or None)
    one.attribute.extend(node.attribute)
    graph = helper.make_graph([one], "one", [helper.make_tensor_value_info(names[xidx], x_type, None),
                                            helper.make_tensor_value_info(names[widx], onnx.TensorProto.FLOAT,
                                                                          None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return sess.run(["y"], {names[xidx]: x, names[widx]: w})[0]
    return run
