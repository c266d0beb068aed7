"""ONNX graph inspection and rewrites: weight nodes, old-opset upgrades,
Gemm -> MatMul for MatMulNBits, external-data locations after a rename.

onnx is imported inside functions only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import one_line
from ...quiet import quiet
from .convert import model_files, save_model


def weight_nodes_meta(model) -> list[tuple[str, str, int, str]]:
    """(name, op_type, weight input index, weight name) of nodes with a constant weight."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather"):
            idx = 0 if node.op_type == "Gather" else 1
            if len(node.input) > idx and node.input[idx] in inits:
                out.append((node.name, node.op_type, idx, node.input[idx]))
    return out


def normalize(path: Path, out: Path, opset: int = 13, force: bool = False) -> tuple[Path, str]:
    """Old-style models: drop initializers from the graph inputs (IR < 4) and upgrade opsets below
    ``opset`` with onnx.version_converter, which onnxruntime.quantization needs (QDQ per-channel: 13).
    Returns (path, what was done); (path, "") when nothing needed doing or the upgrade failed."""
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(path))
    done = []
    old = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if old < opset:
        try:
            with quiet():
                proto = version_converter.convert_version(proto, opset)
            done.append(f"upgraded opset {old} to {opset} with onnx.version_converter")
        except Exception as exc:  # noqa: BLE001
            done.append(f"kept opset {old} (onnx.version_converter failed: {one_line(exc, 80, with_type=False)})")
    inits = {t.name for t in proto.graph.initializer}
    real = [i for i in proto.graph.input if i.name not in inits]
    if len(real) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(real)
        done.append("moved initializers out of the graph inputs")
    if proto.ir_version < 7:
        proto.ir_version = 7
    if force and not done and len(model_files(path)) > 1:
        done.append("re-saved with small tensors inline (onnxruntime cannot infer shapes from external data)")
    if not done:
        return path, ""
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(proto, out)
    return out, ", ".join(done)


def fix_external_location(path: Path, old_name: str) -> None:
    """After renaming a model with external data, point its tensors at the renamed data file."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    changed = False
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            for entry in t.external_data:
                if entry.key == "location" and entry.value.startswith(old_name):
                    entry.value = path.name + entry.value[len(old_name):]
                    changed = True
    if changed:
        onnx.save_model(proto, str(path))


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, const B, C) with alpha=beta=1, transA=0 as MatMul(A, B') + Add(C), in place,
    so that MatMulNBits can take Linear layers exported as Gemm. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        wname = node.input[1] + "_nbopt_kn"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
        name = node.name or f"gemm_{count}"
        has_c = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_nbopt_mm" if has_c else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=name + "_matmul"))
        if has_c:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=name + "_add"))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return count
