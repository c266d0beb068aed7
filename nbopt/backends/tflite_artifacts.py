"""TFLite artifacts: write the .tflite with its compressed size, weight types and delegate report."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from .base import Artifact, Context
from .tflite_convert import _quiet
from .tflite_runner import _first_line, interpreter_class

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


def make_artifact(data: bytes, ctx: Context, stem: str, notes: str, **info) -> Artifact:
    """Write the .tflite, add compressed size, weight types and the delegate report (not shipped)."""
    from .tflite_delegates import write_report

    ctx.workdir.mkdir(parents=True, exist_ok=True)
    path = ctx.workdir / f"{stem}.tflite"
    path.write_bytes(data)
    info["size_compressed_bytes"] = len(zlib.compress(data, 6))
    try:
        info["quantized"] = weight_summary(path)
    except Exception as exc:  # noqa: BLE001
        info["quantized"] = f"unknown ({type(exc).__name__})"
    try:
        with _quiet():
            summary, report = write_report(path)
        info["delegates"], info["delegate_report"] = summary, str(report)
    except Exception as exc:  # noqa: BLE001  (a report that fails must not fail the candidate)
        info["delegates"] = f"no report ({type(exc).__name__}: {_first_line(exc)[:120]})"
    return Artifact(path=path, format="tflite", files=[path], notes=notes, info=info)
