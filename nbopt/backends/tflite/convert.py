"""Converting models to TFLite: quiet converter calls with one readable reason on failure, the Keras
converter and PyTorch through litert-torch.

TensorFlow, Keras, torch and litert-torch are imported inside functions only.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ...quiet import quiet
from ..base import Artifact, Context, exportable
from ..common import versions
from .reports import weight_summary, write_report
from .runner import import_tf


def converter_reason(exc: BaseException) -> str:
    """One readable reason out of a TFLite converter error (which prints pages of MLIR)."""
    text = str(exc)
    m = re.search(r"TF Select ops: ([^\n]+)", text)
    if m:
        return (f"op(s) {m.group(1).strip()} are not TFLite builtin ops (they would need TF Select / Flex "
                "kernels, which a plain LiteRT runtime does not have)")
    m = re.search(r"error: ([^\n]+)", text)
    if m and "failed while converting" not in m.group(1):
        return m.group(1).strip()[:300]
    for line in text.splitlines():
        if line.strip() and not line.startswith(("loc(", "<unknown>", "error: failed while")):
            return line.strip()[:300]
    return type(exc).__name__


def convert(converter, what: str) -> bytes:
    try:
        with quiet():
            return converter.convert()
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"The TFLite converter could not make the {what} model: "
                             f"{converter_reason(exc)}.") from exc


def is_keras(model: Any) -> bool:
    return any(c.__module__.startswith(("keras", "tf_keras")) for c in type(model).__mro__)


def is_torch(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def keras_converter(model):
    tf = import_tf()
    return tf.lite.TFLiteConverter.from_keras_model(model)


def torch_to_tflite(model, data, workdir: Path) -> tuple[bytes, str]:
    try:
        import litert_torch
    except ImportError as exc:
        raise CandidateError("Converting a PyTorch model to TFLite needs litert-torch, which is not installed "
                         "(pip install litert-torch==0.10.0; it accepts torch 2.13 but downgrades "
                         "typing-extensions and pydantic, so nbopt does not install it): use the torch or "
                         "onnx backend, or convert the model yourself and pass the .tflite file.") from exc
    import torch

    if data is None:
        raise NboptError("Converting a PyTorch model to TFLite needs example inputs: pass eval=... data.")
    ex = data.example(1)
    args = tuple(torch.from_numpy(np.ascontiguousarray(ex[n])) for n in data.input_names)
    out = workdir / "torch_fp32.tflite"
    try:
        with exportable(model.eval(), args) as (view, notes), quiet():
            edge = litert_torch.convert(view, args)
            edge.export(str(out))
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"litert-torch could not convert this PyTorch model to TFLite "
                             f"({one_line(exc, 300).rstrip('.')}).") from exc
    return out.read_bytes(), ", ".join([f"litert-torch {versions('litert-torch').get('litert_torch')}", *notes])


def make_artifact(data: bytes, ctx: Context, stem: str, notes: str, **info) -> Artifact:
    """Write the .tflite, add compressed size, weight types and the delegate report (not shipped)."""
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    path = ctx.workdir / f"{stem}.tflite"
    path.write_bytes(data)
    info["size_compressed_bytes"] = len(zlib.compress(data, 6))
    try:
        info["quantized"] = weight_summary(path)
    except Exception as exc:  # noqa: BLE001
        info["quantized"] = f"unknown ({type(exc).__name__})"
    try:
        with quiet():
            summary, report = write_report(path)
        info["delegates"], info["delegate_report"] = summary, str(report)
    except Exception as exc:  # noqa: BLE001  (a report that fails must not fail the candidate)
        info["delegates"] = f"no report ({one_line(exc, 120)})"
    return Artifact(path=path, format="tflite", files=[path], notes=notes, info=info)
