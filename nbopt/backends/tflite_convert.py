"""Converting models to TFLite: quiet converter calls with one readable reason on failure, the Keras
converter and PyTorch through litert-torch.

TensorFlow, Keras, torch and litert-torch are imported inside functions only.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CandidateError, NboptError
from .tflite_runner import _first_line, _tf, _version


@contextlib.contextmanager
def _quiet():
    """Keep the converter's prints (Keras export summary, litert-torch progress) out of the notebook."""
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


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


def _convert(converter, what: str) -> bytes:
    try:
        with _quiet():
            return converter.convert()
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"The TFLite converter could not make the {what} model: "
                             f"{converter_reason(exc)}.") from exc


def _is_keras(model: Any) -> bool:
    return any(c.__module__.startswith(("keras", "tf_keras")) for c in type(model).__mro__)


def _is_torch(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def _keras_converter(model):
    tf = _tf()
    return tf.lite.TFLiteConverter.from_keras_model(model)


def _torch_to_tflite(model, data, workdir: Path) -> tuple[bytes, str]:
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
        with _quiet():
            edge = litert_torch.convert(model.eval(), args)
            edge.export(str(out))
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"litert-torch could not convert this PyTorch model to TFLite "
                         f"({type(exc).__name__}: {_first_line(exc)[:300]}).") from exc
    return out.read_bytes(), f"litert-torch {_version('litert-torch')}"
