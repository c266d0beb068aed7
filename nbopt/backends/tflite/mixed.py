"""Per-layer sensitivity and ``mixed-precision`` for the TFLite backend: full-integer int8 with the most
sensitive layers kept in float.

The TFLite converter can calibrate only (``_experimental_calibrate_only``: the float model with the
recorded activation ranges) and then quantize that calibrated model with a list of nodes kept in float
(``mlir_quantize(..., denylisted_nodes=...)``, the same call ``tf.lite.experimental.QuantizationDebugger``
makes; the converter inserts QUANTIZE / DEQUANTIZE around the float nodes). So the model is calibrated
once (cached on ``prepared`` and on disk by the calibration data's fingerprint) and every sensitivity
probe and every trial is one fast quantization of that calibrated model, never a new conversion.

Sensitivity of a layer = how far the model's output moves against float (relative error, cosine) on
calibration examples when *only that layer* is quantized (every other node denylisted). The real
.tflite files are run in the LiteRT interpreter. Dynamic-range quantization has no denylist in the
converter, so the recipe is static only on this backend.

``backend`` / ``prepared`` below are the TFLiteBackend and its TFLitePrepared (not imported: backend.py
imports this module for its ``sensitivity``).
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ...mixed import CalibScore, choose, fidelity, keep_float_steps
from ...quiet import quiet
from ..base import Artifact, Context
from .convert import converter_reason, make_artifact
from .reports import WEIGHT_OPS, read_model
from .runner import TFLiteRunner, import_tf

SENS_EXAMPLES = 64  # calibration examples the sensitivity and the trials' scores are measured on
COLUMNS = ["node", "op_type", "params", "rel_error", "cosine", "max_abs_diff", "rank", "error"]


# ----------------------------------------------------------------------------------- calibrated model
def _fp(calib) -> str | None:
    return getattr(calib, "fingerprint", None)


def _key(kind: str, calib) -> tuple:
    return (kind, _fp(calib) or id(calib))


def _disk(prepared, name: str, calib) -> Path | None:
    """A cache file under the prepared model's folder (shared by the worker processes), or None."""
    fp = _fp(calib)
    if prepared.dir is None or not fp:
        return None
    return Path(prepared.dir) / f"{name}_{fp}"


def _write(path: Path, data: bytes) -> None:
    """Atomic: worker processes building at the same time may write the same cache file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def calibrated(backend, prepared, calib) -> bytes:
    """The float model with activation ranges recorded on ``calib`` (the converter's own calibration,
    the same representative dataset as int8-static), computed once per calibration set."""
    key = _key("calibrated", calib)
    if key in prepared._cache:
        return prepared._cache[key]
    path = _disk(prepared, "calibrated", calib)
    if path is not None and path.with_suffix(".tflite").exists():
        data = path.with_suffix(".tflite").read_bytes()
    else:
        tf = import_tf()
        conv = backend.converter(prepared, "mixed-precision (and layer sensitivity)")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = backend.representative(prepared, calib)
        conv._experimental_calibrate_only = True  # noqa: SLF001  (what QuantizationDebugger sets)
        try:
            with quiet():
                data = conv.convert()
        except (NboptError, CandidateError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise CandidateError(f"The TFLite converter could not calibrate the model: {converter_reason(exc)}.") \
                from exc
        if path is not None:
            _write(path.with_suffix(".tflite"), data)
    prepared._cache[key] = data
    return data


def quantize(cal: bytes, per_channel: bool = True, keep_float: list[str] | None = None) -> bytes:
    """Full int8 (float I/O) from the calibrated model, the ``keep_float`` nodes left in float."""
    import_tf()
    try:
        # what tf.lite.experimental.QuantizationDebugger calls for its denylists, without its debug model
        from tensorflow.lite.python.convert import mlir_quantize

        with quiet():
            return mlir_quantize(cal, disable_per_channel=not per_channel, denylisted_nodes=keep_float or None)
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"The TFLite quantizer could not quantize the calibrated model: "
                             f"{converter_reason(exc)}.") from exc


def _folder(prepared) -> Path:
    import tempfile

    return Path(prepared.dir) if prepared.dir else Path(tempfile.gettempdir())


def _read(data: bytes, prepared) -> dict:
    """Ops and tensors of a .tflite given as bytes (reports.read_model reads a file)."""
    path = _folder(prepared) / f".read-{os.getpid()}-{uuid.uuid4().hex[:6]}.tflite"
    path.write_bytes(data)
    try:
        return read_model(path)
    finally:
        path.unlink(missing_ok=True)


def layers(model: dict) -> list[dict]:
    """The layers with constant weights (what int8 shrinks): node = the op's output tensor name, which is
    what the quantizer's denylist takes; params = its weights' count."""
    tensors, out = model["tensors"], []
    for op in model["ops"]:
        consts = [tensors[i] for i in op["inputs"] if i >= 0 and tensors[i]["const"]]
        if op["op"] not in WEIGHT_OPS or not consts or not op["outputs"]:
            continue
        params = sum(int(np.prod(t["shape"])) if t["shape"] else 1 for t in consts)
        out.append({"node": tensors[op["outputs"][0]]["name"], "op_type": op["op"], "params": params})
    return out


def all_nodes(model: dict) -> list[str]:
    """Every op's output tensor name (to denylist all nodes but one)."""
    return [model["tensors"][op["outputs"][0]]["name"] for op in model["ops"] if op["outputs"]]


# ----------------------------------------------------------------------------------- reference and runs
def reference(backend, prepared, calib) -> tuple[dict, np.ndarray | None, np.ndarray]:
    """(inputs, labels or None, float outputs) on the first SENS_EXAMPLES calibration examples."""
    key = _key("reference", calib)
    if key not in prepared._cache:
        inputs, labels = next(calib.batches(SENS_EXAMPLES))
        ref = run_bytes(prepared.fp32, inputs, _folder(prepared))
        prepared._cache[key] = (inputs, labels, ref)
    return prepared._cache[key]


def run_bytes(data: bytes, inputs: dict, folder: Path) -> np.ndarray:
    """The first output of this .tflite (bytes) on ``inputs``, in the LiteRT interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".trial-{os.getpid()}-{uuid.uuid4().hex[:6]}.tflite"
    path.write_bytes(data)
    try:
        with quiet():
            return TFLiteRunner(path, threads=1)(inputs)
    finally:
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- sensitivity
def sensitivity(backend, prepared, calib) -> Any:
    """The sensitivity DataFrame (``COLUMNS``), rank 1 = most sensitive; cached in memory and on disk."""
    import pandas as pd

    if calib is None:
        raise NboptError("Sensitivity analysis needs calibration data: pass calib=....")
    key = _key("sensitivity", calib)
    if key in prepared._cache:
        return prepared._cache[key].copy()
    path = _disk(prepared, "sensitivity", calib)
    if path is not None and path.with_suffix(".json").exists():
        df = pd.DataFrame(json.loads(path.with_suffix(".json").read_text()), columns=COLUMNS)
    else:
        df = _measure(backend, prepared, calib)
        if path is not None:
            _write(path.with_suffix(".json"), json.dumps(df.to_dict("records")).encode())
    prepared._cache[key] = df
    return df.copy()


def _measure(backend, prepared, calib) -> Any:
    import pandas as pd

    cal = calibrated(backend, prepared, calib)
    inputs, _, ref = reference(backend, prepared, calib)
    model = _read(cal, prepared)  # names from the calibrated model: the ones its denylist matches
    nodes, folder = all_nodes(model), _folder(prepared)
    rows = []
    for layer in layers(model):
        try:  # only this layer quantized: every other node stays float
            out = run_bytes(quantize(cal, True, [n for n in nodes if n != layer["node"]]), inputs, folder)
            fid, err = fidelity(ref, out), None
        except Exception as exc:  # noqa: BLE001 - a layer that cannot be quantized alone is reported
            fid = {"rel_error": np.nan, "cosine": np.nan, "max_abs_diff": np.nan}
            err = one_line(exc, 200, with_type=True)
        rows.append({**layer, **fid, "error": err})
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    df = df.sort_values("rel_error", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.insert(COLUMNS.index("rank"), "rank", np.arange(1, len(df) + 1))
    return df


def sensitivity_cost(backend, prepared, calib) -> tuple[bool, int]:
    """(already measured, how many layers are quantized one at a time: one fast quantization of the
    calibrated model and one run on 64 calibration examples each)."""
    cached = _key("sensitivity", calib) in prepared._cache
    path = _disk(prepared, "sensitivity", calib)
    cached = cached or (path is not None and path.with_suffix(".json").exists())
    return cached, len(layers(_read(prepared.fp32, prepared)))


# ----------------------------------------------------------------------------------- the recipe
def mixed(backend, prepared, params: dict, ctx: Context) -> Artifact:
    keep = params["keep_float"]
    if keep != "auto" and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise NboptError(f"Recipe 'mixed-precision' parameter 'keep_float' is {keep!r}; give 'auto' or a "
                         "whole number of layers (0 or more).")
    calib = ctx.calib
    cal = calibrated(backend, prepared, calib)
    inputs, labels, ref = reference(backend, prepared, calib)
    ranked = sensitivity(backend, prepared, calib).dropna(subset=["rel_error"]).reset_index(drop=True)
    score = CalibScore(ref, labels, ctx.metric)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    trials: list[dict] = []

    def build(per_channel: bool, k: int) -> dict:
        data = quantize(cal, per_channel, list(ranked["node"][:k]))
        out = run_bytes(data, inputs, ctx.workdir)
        row = {"per_channel": per_channel, "k": k, "loss": score.loss(out), "size": len(data), "data": data,
               **fidelity(ref, out)}
        trials.append(row)
        return row

    # 1) the quantizer's own option, everything quantized
    pcs = (True, False) if params["per_channel"] == "auto" else (params["per_channel"],)
    full = min((build(pc, 0) for pc in pcs), key=lambda t: (t["loss"], t["size"]))
    pc = full["per_channel"]
    # 2) the most sensitive layers kept in float, within the size budget (a float weight: 3 bytes more)
    if keep == "auto":
        budget = params["max_size_growth"] * full["size"] / 3.0
        for k in keep_float_steps(list(ranked["params"]), budget):
            build(pc, k)
        chosen = choose([t for t in trials if t["per_channel"] == pc], noise=score.noise)
    else:
        chosen = build(pc, min(keep, len(ranked)))
    kept = list(ranked["node"][: chosen["k"]])
    return make_artifact(chosen["data"], ctx, f"mixed_int8_k{chosen['k']}", _notes(params, chosen, kept, trials,
                         score, full), kept_float=len(kept), calib_rel_error=round(chosen["rel_error"], 6))


def _notes(params: dict, chosen: dict, kept: list[str], trials: list[dict], score: CalibScore, full: dict) -> str:
    searched = params["keep_float"] == "auto"
    kept_txt = (f"kept {len(kept)} most sensitive layer(s) in float ({', '.join(_short(n) for n in kept[:4])}"
                f"{', ...' if len(kept) > 4 else ''})" if kept else "kept no layer in float")
    pc_why = " (tried both, scored)" if params["per_channel"] == "auto" else ""
    vs = f" vs {full['rel_error']:.2%} all int8" if chosen is not full else ""
    return (f"mixed precision (static: full int8, float I/O, {'searched' if searched else 'fixed'}): "
            f"per_channel={chosen['per_channel']}{pc_why}, {kept_txt}; chosen by {score.by}; relative output "
            f"error on {SENS_EXAMPLES} calibration examples {chosen['rel_error']:.2%}{vs}; {len(trials)} "
            "trial(s), all from one calibration; TFLite converter (calibrate once, mlir_quantize with "
            "denylisted nodes)")


def _short(node: str) -> str:
    """The first name of a fused op's output ('seq/dense_1/MatMul;seq/dense_1/Relu' -> 'seq/dense_1/MatMul')."""
    return node.split(";")[0]
