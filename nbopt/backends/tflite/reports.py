"""Delegate compatibility of a .tflite file: what a phone's accelerators would take.

A static check of the artifact itself (not a run on a device), op by op:

* **GPU delegate**: TFLite's own analyzer (``tf.lite.experimental.Analyzer.analyze(...,
  gpu_compatibility=True)``) no longer checks anything since TensorFlow 2.19 (its GPU checks were
  removed; it prints "looks compatible" for every model, tensorflow/tensorflow#77042, confirmed here on
  TOPK_V2 and SHAPE). So nbopt applies the GPU delegate's own rules, ported from LiteRT's
  ``tools/versioning/gpu_compatibility.cc``: the supported-op list, tensor types (float16/32 and
  int8/uint8 quantized tensors; no int16/int32/int64/bool activations), rank <= 4, constant shape
  operands (RESHAPE), STRIDED_SLICE without shrink/ellipsis/new-axis masks. Ops that fail fall back to
  the CPU. The analyzer's own verdict is kept in the report (``analyzer_gpu_verdict``).
* **integer-only accelerators** (NNAPI int8 drivers, Hexagon, Edge TPU): every op must run on int8
  tensors and be in a documented int8 op list. We use the Edge TPU compiler's supported-op list
  (https://coral.ai/docs/edgetpu/models-intro/#supported-operations), the strictest of the three.
  Float QUANTIZE / DEQUANTIZE at the model's inputs and outputs are accepted (the CPU converts the
  float I/O, the accelerator runs the rest).

``weight_summary(path)`` says which weights are stored in which type; ``size_breakdown(artifact)`` where the
file's bytes go. ``delegate_report(path) -> dict`` gives the full report; ``summary`` is the short text for the results
table. The file is read with LiteRT's flatbuffer schema; TensorFlow is not needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .runner import interpreter_class


# TFLite builtin op names (as the interpreter reports them) that the Edge TPU compiler maps.
EDGETPU_INT8_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "EXPAND_DIMS", "FULLY_CONNECTED", "GATHER", "HARD_SWISH", "L2_NORMALIZATION", "LOGISTIC",
    "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD",
    "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH",
    "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE",
    "TRANSPOSE_CONV",
})
INT8_OP_LIST = "Edge TPU compiler supported ops (coral.ai/docs/edgetpu/models-intro)"

GPU_OPS = frozenset({
    "ABS", "ADD", "ADD_N", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION", "CONV_2D", "COS",
    "CUMSUM", "DENSIFY", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "ELU", "EQUAL", "EXP",
    "FLOOR", "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GELU", "GREATER", "GREATER_EQUAL",
    "HARD_SWISH", "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND", "LOGISTIC", "LSTM", "MAXIMUM",
    "MAX_POOL_2D", "MEAN", "MINIMUM", "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "ONE_HOT", "PACK", "PAD",
    "PADV2", "POW", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SELECT", "SELECT_V2",
    "SIGN", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE",
    "SQUARED_DIFFERENCE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TILE", "TRANSPOSE", "TRANSPOSE_CONV",
})
GPU_RULES = "nbopt's port of LiteRT's GPU delegate rules (tools/versioning/gpu_compatibility.cc)"
_FLOAT = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}
_GPU_TYPES = {"FLOAT32", "FLOAT16", "INT8", "UINT8"}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def read_model(path: Path) -> dict:
    """Ops and tensors of subgraph 0, straight from the flatbuffer."""
    schema = _schema()
    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sg = model.Subgraphs(0)
    tensors = {}
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        b = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        const = b is not None and (b.DataLength() > 0 or b.Offset() > 1)
        shape = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        shape = [] if isinstance(shape, int) else [int(d) for d in shape]
        tensors[i] = {"name": (t.Name() or b"").decode(errors="replace"), "type": type_names.get(t.Type(), "?"),
                      "shape": shape, "const": const}
    ops = []
    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        oc = model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, f"OP_{code}")
        if name == "CUSTOM":
            name = "CUSTOM:" + (oc.CustomCode() or b"").decode(errors="replace")
        options = {}
        if name == "STRIDED_SLICE" and op.BuiltinOptions() is not None:
            o = schema.StridedSliceOptions()
            o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            options = {"shrink_axis_mask": o.ShrinkAxisMask(), "ellipsis_mask": o.EllipsisMask(),
                       "new_axis_mask": o.NewAxisMask()}
        ins = [int(x) for x in (op.InputsAsNumpy() if op.InputsLength() else [])]
        outs = [int(x) for x in (op.OutputsAsNumpy() if op.OutputsLength() else [])]
        ops.append({"index": j, "op": name, "inputs": ins, "outputs": outs, "options": options})
    graph_in = [int(x) for x in sg.InputsAsNumpy()] if sg.InputsLength() else []
    graph_out = [int(x) for x in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    return {"ops": ops, "tensors": tensors, "inputs": set(graph_in), "outputs": set(graph_out),
            "subgraphs": model.SubgraphsLength()}


def _gpu_check(op: dict, tensors: dict) -> str | None:
    """None if the GPU delegate takes this op, else why not."""
    name = op["op"]
    if name not in GPU_OPS:
        return f"not supported op {name}"
    ins = [tensors[i] for i in op["inputs"] if i >= 0]
    outs = [tensors[i] for i in op["outputs"] if i >= 0]
    runtime = [t for t in ins if not t["const"]]
    if name == "CAST":
        a, b = (runtime[0]["type"] if runtime else "?"), (outs[0]["type"] if outs else "?")
        ok = {("BOOL", "FLOAT32"), ("BOOL", "FLOAT16"), ("FLOAT32", "BOOL"), ("FLOAT16", "BOOL"),
              ("FLOAT32", "INT32"), ("INT32", "FLOAT32"), ("FLOAT32", "FLOAT32"), ("INT32", "INT32")}
        return None if (a, b) in ok else f"not supported Cast case {a} -> {b}"
    if name == "DEQUANTIZE" and ins and ins[0]["type"] == "INT16":
        return "unsupported dequantization type INT16"
    if name == "GATHER":
        return None if len(ins) > 1 and ins[1]["type"] == "INT32" and len(ins[1]["shape"]) == 1 \
            else "GATHER needs 1-D INT32 indices"
    bad = sorted({t["type"] for t in runtime + outs if t["type"] not in _GPU_TYPES})
    if bad and name not in ("ONE_HOT",):
        return f"tensor type {', '.join(bad)} is not supported on the GPU"
    if any(len(t["shape"]) > 4 for t in runtime + outs):
        return "tensors of rank > 4 are not supported"
    if name == "RESHAPE" and len(runtime) != 1:
        return f"RESHAPE needs a constant shape (node has {len(runtime)} runtime inputs)"
    if name == "FULLY_CONNECTED" and ins and ins[0]["const"]:
        return "FullyConnected does not support a constant input"
    if name == "STRIDED_SLICE":
        o = op["options"]
        if o.get("shrink_axis_mask") or o.get("ellipsis_mask") or o.get("new_axis_mask"):
            return "STRIDED_SLICE with shrink/ellipsis/new-axis mask is not supported"
        if ins and len(ins[0]["shape"]) not in (3, 4):
            return "STRIDED_SLICE supports 3 or 4 dimensional tensors only"
    return None


def _int8_check(op: dict, tensors: dict, graph_inputs: set, graph_outputs: set) -> tuple[str | None, bool]:
    """(reason an integer-only accelerator rejects the op or None, is a float I/O boundary op)."""
    name = op["op"]
    ins = [i for i in op["inputs"] if i >= 0]
    outs = [i for i in op["outputs"] if i >= 0]
    types_in = [tensors[i]["type"] for i in ins]
    types_out = [tensors[i]["type"] for i in outs]
    floats = any(t in _FLOAT for t in types_in + types_out)
    if name == "QUANTIZE" and floats and all(i in graph_inputs for i in ins):
        return None, True  # float model input converted to int8 on the CPU
    if name == "DEQUANTIZE" and floats and all(o in graph_outputs for o in outs) \
            and not any(t in _FLOAT for t in types_in):
        return None, True  # int8 result converted to a float model output on the CPU
    if floats:
        return "float tensors (not fully integer)", False
    if "INT16" in types_in + types_out:
        return "int16 activations (16x8): int8 accelerators do not run them", False
    if name not in EDGETPU_INT8_OPS:
        reason = "not in the int8 op list"
        if name == "SHAPE":
            reason += " (a dynamic batch; a fixed-batch conversion folds it away)"
        return reason, False
    return None, False


def _analyzer_verdict(path: Path) -> str:
    """The last lines TFLite's own analyzer prints about GPU compatibility (kept for the record)."""
    try:
        try:
            from ai_edge_litert import _pywrap_analyzer_wrapper as wrapper
        except ImportError:
            from tensorflow.lite.python.analyzer_wrapper import _pywrap_analyzer_wrapper as wrapper
        text = wrapper.ModelAnalyzer(str(path), True, True)
    except Exception as exc:  # noqa: BLE001
        return f"analyzer unavailable ({type(exc).__name__})"
    lines = [l.strip() for l in text.splitlines() if "GPU" in l]
    return " ".join(lines)[:400] or "no GPU verdict"


def delegate_report(path: str | Path) -> dict:
    """Full delegate-compatibility report of a .tflite file (JSON-serializable)."""
    path = Path(path)
    m = read_model(path)
    tensors = m["tensors"]
    rows = []
    for op in m["ops"]:
        greason = _gpu_check(op, tensors)
        ireason, boundary = _int8_check(op, tensors, m["inputs"], m["outputs"])
        rows.append({
            "index": op["index"], "op": op["op"],
            "input_types": [tensors[i]["type"] for i in op["inputs"] if i >= 0],
            "output_types": [tensors[i]["type"] for i in op["outputs"] if i >= 0],
            "gpu": greason is None, "gpu_reason": greason,
            "int8_only": ireason is None, "int8_reason": ireason, "cpu_boundary": boundary,
        })
    n = len(rows)
    gpu_fallback: dict[str, int] = {}
    for r in rows:
        if not r["gpu"]:
            gpu_fallback[r["op"]] = gpu_fallback.get(r["op"], 0) + 1
    rejected: dict[str, str] = {}
    for r in rows:
        if not r["int8_only"]:
            rejected.setdefault(r["op"], r["int8_reason"])
    full_integer = not any((r["int8_reason"] or "").startswith("float") for r in rows)
    report = {
        "model": str(path),
        "subgraph": "0 of %d" % m["subgraphs"],
        "ops_total": n,
        "gpu": {
            "accepted": sum(r["gpu"] for r in rows), "total": n, "cpu_fallback_ops": gpu_fallback,
            "rules": GPU_RULES,
            "analyzer_gpu_verdict": _analyzer_verdict(path),
            "note": ("static check; TFLite's analyzer stopped checking GPU compatibility in TF 2.19 "
                     "(tensorflow/tensorflow#77042), so its verdict above is not evidence"),
        },
        "int8_only": {
            "ok": not rejected, "full_integer": full_integer,
            "accepted": sum(r["int8_only"] for r in rows), "total": n,
            "rejected_ops": rejected,
            "cpu_boundary_ops": [r["op"] for r in rows if r["cpu_boundary"]],
            "op_list": INT8_OP_LIST,
            "note": "static check for NNAPI / Hexagon / Edge TPU style int8-only paths",
        },
        "ops": rows,
    }
    report["summary"] = summary(report)
    return report


def summary(report: dict) -> str:
    """'GPU 7/9 ops; int8-only: ok' or 'GPU 9/9 ops; int8-only: no (FULLY_CONNECTED: float tensors)'."""
    g = report["gpu"]
    s = f"GPU {g['accepted']}/{g['total']} ops"
    if g["cpu_fallback_ops"]:
        s += " (CPU: " + ", ".join(sorted(g["cpu_fallback_ops"])) + ")"
    q = report["int8_only"]
    if q["ok"]:
        s += "; int8-only: ok"
    elif not q["full_integer"]:
        s += "; int8-only: no (float ops)"
    else:
        bad = ", ".join(sorted(q["rejected_ops"]))
        s += f"; int8-only: {q['accepted']}/{q['total']} ops (rejects {bad})"
    return s


def write_report(tflite_path: Path, out_path: Path | None = None) -> tuple[str, Path]:
    """Write the report as JSON beside the artifact; return (summary, json path)."""
    report = delegate_report(tflite_path)
    out_path = out_path or tflite_path.with_name(tflite_path.stem + ".delegates.json")
    out_path.write_text(json.dumps(report, indent=1))
    return report["summary"], out_path


# -- weight types ------------------------------------------------------------------------------------
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL")


def weight_summary(path: Path) -> str:
    """'weights int8: 4/4 CONV_2D, FULLY_CONNECTED; io float32 -> float32' from the file's own ops."""
    Interp, _ = interpreter_class()
    it = Interp(model_path=str(path))
    types = {int(t["index"]): np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    producers = {}
    ops = it._get_ops_details()
    for op in ops:
        for o in op["outputs"]:
            producers[int(o)] = op["op_name"]
    counts: dict[str, list[int]] = {}
    kinds: dict[str, int] = {}
    for op in ops:
        if op["op_name"] not in WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        w = int(op["inputs"][1])
        wtype = types.get(w, "?")
        if producers.get(w) == "DEQUANTIZE":  # fp16 weights are dequantized at load
            src = [int(p["inputs"][0]) for p in ops if w in [int(x) for x in p["outputs"]]]
            wtype = types.get(src[0], wtype) if src else wtype
        kinds[wtype] = kinds.get(wtype, 0) + 1
        counts.setdefault(op["op_name"], [0])[0] += 1
    total = sum(kinds.values())
    parts = ", ".join(f"{k} {v}/{total}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    ins = ",".join(np.dtype(d["dtype"]).name for d in it.get_input_details())
    outs = ",".join(np.dtype(d["dtype"]).name for d in it.get_output_details())
    return f"weights {parts or 'none'} ({', '.join(sorted(counts))}); io {ins}->{outs}"


# -- where the bytes go ------------------------------------------------------------------------------
_TFL_NAMES = {"FLOAT32": "fp32", "FLOAT16": "fp16", "BFLOAT16": "bf16", "FLOAT64": "fp64", "INT8": "int8",
              "UINT8": "uint8", "INT4": "int4", "UINT4": "uint4", "INT2": "int2"}


def size_breakdown(artifact) -> dict:
    """Bytes of a .tflite artifact by tensor type, its largest tensors, and buffers versus the rest of the
    flatbuffer; read with LiteRT's flatbuffer schema (every subgraph; a buffer shared by several tensors
    counts once)."""
    from ...speed import SizeTally

    path = Path(artifact.path)
    tally = SizeTally(int(artifact.size_bytes))
    schema = _schema()
    buf = path.read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    metadata = {model.Metadata(m).Buffer() for m in range(model.MetadataLength())}
    sizes = {}
    for b in range(model.BuffersLength()):
        buffer = model.Buffers(b)
        size = buffer.DataLength() or (buffer.Size() if buffer.Offset() > 1 else 0)
        if size:
            sizes[b] = size
            tally.segment("metadata" if b in metadata else "buffers", size)
    seen: set[int] = set()
    dequantized_fp16 = 0
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        readers: dict[int, set] = {}
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            oc = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?")
            for i in (op.InputsAsNumpy() if op.InputsLength() else []):
                readers.setdefault(int(i), set()).add(name)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            b = t.Buffer()
            if b not in sizes or b in seen:
                continue
            seen.add(b)
            kind = type_names.get(t.Type(), "?")
            shape = t.ShapeAsNumpy() if t.ShapeLength() else []
            tally.tensor((t.Name() or b"").decode(errors="replace") or f"tensor {i}",
                         _TFL_NAMES.get(kind, kind.lower()), list(shape), sizes[b])
            if kind == "FLOAT16" and readers.get(i) == {"DEQUANTIZE"}:
                dequantized_fp16 += 1
    if dequantized_fp16:
        tally.note(f"{dequantized_fp16} fp16 weight tensors feed DEQUANTIZE ops: the CPU interpreter expands them "
                   "to fp32 when the model loads (GPU delegates use them as fp16)")
    return tally.result("other")
