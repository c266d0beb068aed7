"""Per-node quantization sensitivity and the mixed-precision search for the ONNX backend.

Sensitivity of a node = how far the model's first output moves (relative L2 error and cosine against
fp32, on the calibration data) when *only that node* is quantized with onnxruntime.quantization.
The mixed-precision search quantizes everything, then keeps the most sensitive nodes in float
(``nodes_to_exclude``) while the size stays within a budget, and picks per_channel / reduce_range
by the same measurement. Everything is measured by running the real quantized file in onnxruntime.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import one_line

# op types whose constant weight onnxruntime.quantization turns into int8
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather")


def fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Relative L2 error, mean per-example cosine and max abs diff of ``out`` against ``ref``."""
    ref = ref.astype(np.float64).reshape(len(ref), -1)
    out = out.astype(np.float64).reshape(len(out), -1)
    rel = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))
    num = (ref * out).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))
    return {"rel_error": rel, "cosine": cos, "max_abs_diff": float(np.abs(out - ref).max())}


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


def sensitivity_table(nodes: list[dict], quantize_one: Callable[[str, Path], None],
                      run: Callable[[Path], np.ndarray], ref: np.ndarray, workdir: Path):
    """DataFrame (node, op_type, params, rel_error, cosine, rank) with rank 1 = most sensitive."""
    import pandas as pd

    rows = []
    for k, n in enumerate(nodes):
        path = workdir / f"sens_{k}.onnx"
        try:
            quantize_one(n["node"], path)
            fid = fidelity(ref, run(path))
            err = None
        except Exception as exc:  # noqa: BLE001 - one node that cannot be quantized alone is reported
            fid = {"rel_error": np.nan, "cosine": np.nan, "max_abs_diff": np.nan}
            err = one_line(exc, 200, with_type=True)
        finally:
            for f in workdir.glob(f"sens_{k}.onnx*"):
                f.unlink()
        rows.append({"node": n["node"], "op_type": n["op_type"], "params": n["numel"],
                     "rel_error": fid["rel_error"], "cosine": fid["cosine"],
                     "max_abs_diff": fid["max_abs_diff"], "error": err})
    df = pd.DataFrame(rows, columns=["node", "op_type", "params", "rel_error", "cosine", "max_abs_diff", "error"])
    df = df.sort_values("rel_error", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.insert(len(df.columns) - 1, "rank", np.arange(1, len(df) + 1))
    return df


def keep_float_steps(df, budget_params: float, max_trials: int = 5) -> list[int]:
    """How many of the most sensitive nodes to try keeping in float, within the parameter budget."""
    cum = np.cumsum(df["params"].to_numpy()) if len(df) else np.array([])
    allowed = int((cum <= budget_params).sum())
    steps = [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if k <= allowed]
    if allowed and allowed not in steps and allowed < 32:
        steps.append(allowed)
    steps = sorted(set(steps))
    if len(steps) > max_trials:  # keep the spread: small steps first, then the largest allowed
        steps = steps[: max_trials - 1] + [steps[-1]]
    return steps
