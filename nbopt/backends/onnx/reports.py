"""ONNX backend: what a quantized graph holds, read from the file (shown as ``quantized``)."""
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
