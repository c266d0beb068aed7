"""Running a .tflite file in the LiteRT interpreter: the interpreter class, the model's inputs and
outputs (TensorSpec), mapping data onto them, TFLiteRunner.

TensorFlow and ai_edge_litert are imported inside functions only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ..common import default_threads, versions


# --------------------------------------------------------------------------------------------------
# lazy imports
# --------------------------------------------------------------------------------------------------
def import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ INFO lines out
    import tensorflow as tf

    return tf


def interpreter_class():
    """(Interpreter class, description): LiteRT's ``ai_edge_litert`` if installed, else ``tf.lite``."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {versions('ai-edge-litert').get('ai_edge_litert')}"
    except ImportError:
        tf = import_tf()
        return tf.lite.Interpreter, f"tf.lite.Interpreter (TensorFlow {tf.__version__})"


# --------------------------------------------------------------------------------------------------
# inputs and the runner
# --------------------------------------------------------------------------------------------------
@dataclass
class TensorSpec:
    name: str  # signature input name (what the data's names are matched against)
    index: int
    shape: tuple  # shape_signature: -1 where dynamic
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0


def _signature_io(it) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs in signature order (names from the signature when the file has one)."""
    details = {int(d["index"]): d for d in it.get_input_details() + it.get_output_details()}
    sigs = {}
    try:
        sigs = it._get_full_signature_list() or {}
    except Exception:  # noqa: BLE001  (old runtimes)
        sigs = {}
    if sigs:
        key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
        ins = list(sigs[key]["inputs"].items())
        outs = sorted(sigs[key]["outputs"].items(), key=lambda kv: _natural(kv[0]))
    else:
        ins = [(d["name"], int(d["index"])) for d in it.get_input_details()]
        outs = [(d["name"], int(d["index"])) for d in it.get_output_details()]

    def spec(name, idx):
        d = details[int(idx)]
        scale, zp = d.get("quantization", (0.0, 0))
        return TensorSpec(name, int(idx), tuple(int(s) for s in d.get("shape_signature", d["shape"])),
                          np.dtype(d["dtype"]), float(scale), int(zp))

    return [spec(n, i) for n, i in ins], [spec(n, i) for n, i in outs]


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def clean_name(name: str) -> str:
    name = name.split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


def map_inputs(inputs: dict[str, np.ndarray], specs: list[TensorSpec]) -> list[tuple[TensorSpec, np.ndarray]]:
    """Pair the data's named arrays with the model's inputs (by name; positionally for one input)."""
    if len(specs) == 1 and len(inputs) == 1:
        return [(specs[0], next(iter(inputs.values())))]
    pairs, missing = [], []
    for s in specs:
        key = s.name if s.name in inputs else clean_name(s.name) if clean_name(s.name) in inputs else None
        if key is None:
            missing.append(s.name)
        else:
            pairs.append((s, inputs[key]))
    if missing:
        have = ", ".join(map(repr, inputs)) or "none"
        raise NboptError(f"The TFLite model needs input(s) {', '.join(map(repr, missing))}, but the data has "
                         f"{have}: name the data's columns after the model's inputs.")
    return pairs


def _to_model_dtype(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    """Quantize floats for an integer-I/O model with the tensor's scale / zero-point; else cast."""
    arr = np.asarray(arr)
    if spec.dtype.kind in "iu" and spec.scale > 0 and arr.dtype.kind == "f":
        info = np.iinfo(spec.dtype)
        q = np.round(arr / spec.scale) + spec.zero_point
        return np.clip(q, info.min, info.max).astype(spec.dtype)
    return np.ascontiguousarray(arr, dtype=spec.dtype)


def _from_model_dtype(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    if spec.dtype.kind in "iu" and spec.scale > 0:
        return ((arr.astype(np.float32) - spec.zero_point) * spec.scale).astype(np.float32)
    return arr


class TFLiteRunner:
    """Runs a .tflite file in the LiteRT interpreter (XNNPACK CPU delegate, ``threads`` threads).

    Float data in, float outputs out: for an integer-I/O model the inputs are quantized and the first
    output dequantized with the tensors' own scale / zero-point. Batches are fed by resizing the input
    tensors when the model has a dynamic batch dimension; otherwise ``max_batch == 1``.
    """

    delegate = "XNNPACK"

    def __init__(self, path: Path, threads: int | None = None):
        Interp, self.runtime = interpreter_class()
        self.threads = int(threads or default_threads())
        try:
            # The default op resolver applies the XNNPACK delegate to the float and int8 ops it supports.
            self.it = Interp(model_path=str(path), num_threads=self.threads)
            self.inputs, self.outputs = _signature_io(self.it)
            self.it.allocate_tensors()
        except (NboptError, CandidateError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise CandidateError(f"The LiteRT interpreter cannot load this model "
                                 f"({one_line(exc, 300)}).") from exc
        dynamic = all(len(s.shape) > 0 and s.shape[0] == -1 for s in self.inputs)
        self.max_batch = None if dynamic else 1
        self._shapes = {s.index: None for s in self.inputs}
        self.output = self.outputs[0]

    def _run(self, pairs: list[tuple[TensorSpec, np.ndarray]]) -> np.ndarray:
        feeds = [(s, _to_model_dtype(s, a)) for s, a in pairs]
        if any(self._shapes[s.index] != a.shape for s, a in feeds):
            for s, a in feeds:
                self.it.resize_tensor_input(s.index, list(a.shape), strict=False)
                self._shapes[s.index] = a.shape
            self.it.allocate_tensors()
        for s, a in feeds:
            self.it.set_tensor(s.index, a)
        self.it.invoke()
        return _from_model_dtype(self.output, self.it.get_tensor(self.output.index))

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        pairs = map_inputs(inputs, self.inputs)
        n = len(pairs[0][1])
        if self.max_batch is None or n <= self.max_batch:
            return self._run(pairs)
        return np.concatenate([self._run([(s, a[i:i + 1]) for s, a in pairs]) for i in range(n)])


def check_data(data, specs: list[TensorSpec], what: str) -> dict[str, np.ndarray]:
    """Raise one NboptError if the data's examples do not fit the model's inputs; return one example."""
    ex = data.example(1)
    for spec, arr in map_inputs(ex, specs):
        got, want = tuple(arr.shape[1:]), spec.shape[1:]
        fits = len(got) == len(want) and all(w in (-1, g) for g, w in zip(got, want))
        if not fits:
            shown = tuple(None if w == -1 else w for w in want)
            raise NboptError(f"The {what} input '{spec.name}' has examples of shape {got} but the model expects "
                             f"{shown} (Keras/TFLite models take channels-last NHWC images): give the data in "
                             "the model's own layout.")
    return ex
