"""Backend registry. Each backend lives in its own module and is imported only when used."""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import NboptError
from .base import Artifact, Backend, Context, Param, Runner  # noqa: F401

_MODULES = {
    "torch": ("nbopt.backends.torch_backend", "TorchBackend"),
    "onnx": ("nbopt.backends.onnx_backend", "OnnxBackend"),
    "tflite": ("nbopt.backends.tflite_backend", "TFLiteBackend"),
}
BACKEND_NAMES = tuple(_MODULES)


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise NboptError(f"Unknown backend '{name}'; known backends: {', '.join(BACKEND_NAMES)}.")
    module, cls = _MODULES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise NboptError(f"Backend '{name}' needs packages that are not installed ({exc.name or exc}): "
                         f"pip install 'nbopt[{name}]'.") from exc
    return getattr(mod, cls)()


def default_backends(model: Any) -> list[str]:
    """The backends that take this kind of model natively (no heavy imports to decide)."""
    kind = model_kind(model)
    return {"torch": ["torch"], "onnx": ["onnx"], "keras": ["tflite"], "tflite": ["tflite"]}[kind]


def model_kind(model: Any) -> str:
    """'torch', 'onnx', 'keras' or 'tflite', decided from the type's module or the file suffix."""
    from pathlib import Path

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise NboptError(f"Model file '{path}' does not exist: check the path.")
        if path.suffix == ".onnx":
            return "onnx"
        if path.suffix == ".tflite":
            return "tflite"
        if path.is_dir() and (path / "saved_model.pb").exists():
            return "keras"
        if path.suffix == ".keras":
            return "keras"
        raise NboptError(f"Cannot tell what model '{path}' is: give an .onnx, .tflite or .keras file, "
                         "a SavedModel folder, or a model object.")
    mods = [c.__module__ for c in type(model).__mro__]
    if any(m.startswith("torch.nn") for m in mods):
        return "torch"
    if any(m.startswith("onnx") for m in mods):
        return "onnx"
    if any(m.startswith(("keras", "tf_keras", "tensorflow")) for m in mods):
        return "keras"
    raise NboptError(f"nbopt cannot optimize a {type(model).__name__}: pass a torch.nn.Module, a Keras "
                     "model, an onnx.ModelProto, or a path to an .onnx / .tflite file.")
