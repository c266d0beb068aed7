"""The backend registry. Each backend is a package (``nbopt/backends/<name>/``) imported only when used.

Every backend package has the same modules for the same roles: ``backend`` (the ``Backend`` subclass),
``recipes`` (one registered handler per recipe), ``runner`` (runs the deployable file), ``convert``
(gets the model into the format) and ``reports`` (what an artifact holds). Adding a backend is one line
in ``_PACKAGES`` plus its folder.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from ..errors import NboptError
from .base import Artifact, Backend, Context, Param, Runner  # noqa: F401

# name -> (package, backend class, the module whose absence means the extra is not installed)
_PACKAGES = {
    "torch": ("nbopt.backends.torch", "TorchBackend", "executorch"),
    "onnx": ("nbopt.backends.onnx", "OnnxBackend", "onnxruntime"),
    "tflite": ("nbopt.backends.tflite", "TFLiteBackend", "tensorflow"),
    "coreml": ("nbopt.backends.coreml", "CoreMLBackend", "coremltools"),
    # only when asked (backends=["gguf"]): default_backends() gives torch models the torch backend alone
    "gguf": ("nbopt.backends.gguf", "GGUFBackend", "gguf"),
    # only when asked (backends=["genai"]), like gguf: onnxruntime-genai's model builder and runtime
    "genai": ("nbopt.backends.genai", "GenAIBackend", "onnxruntime_genai"),
}
BACKEND_NAMES = tuple(_PACKAGES)  # the built-in backends


def register_backend(name: str, package: str, cls: str, probe: str | None = None) -> None:
    """Make a backend defined outside nbopt (a plug-in, or a test's fake) available by ``name``.
    ``probe`` is the module whose absence means the backend's runtime is not installed."""
    _PACKAGES[name] = (package, cls, probe or package.split(".")[0])


def backend_spec(name: str) -> tuple[str, str]:
    """(package, class) of a registered backend: what another process needs to load it."""
    package, cls, _ = _PACKAGES[name]
    return package, cls


def get_backend(name: str) -> Backend:
    if name not in _PACKAGES:
        raise NboptError(f"Unknown backend '{name}'; known backends: {', '.join(_PACKAGES)}.")
    package, cls, _ = _PACKAGES[name]
    try:
        mod = importlib.import_module(package)
    except ImportError as exc:
        raise NboptError(f"Backend '{name}' needs packages that are not installed ({exc.name or exc}): "
                         f"pip install 'nbopt[{name}]'.") from exc
    return getattr(mod, cls)()


def installed_backends() -> list[str]:
    """Backends whose runtime is installed, found without importing it (for the panel's setup mode)."""
    return [name for name, (_, _, probe) in _PACKAGES.items() if importlib.util.find_spec(probe) is not None]


def recipes_of(names: list[str]) -> list[str]:
    """Every recipe name the given backends implement, sorted (imports those backends)."""
    found: set[str] = set()
    for name in names:
        try:
            found.update(get_backend(name).handlers)
        except NboptError:
            continue
    return sorted(found)


def default_backends(model: Any) -> list[str]:
    """The backends that take this kind of model natively (no heavy imports to decide)."""
    kind = model_kind(model)
    if kind == "plugin":
        return _plugins_for(model)
    return {"torch": ["torch"], "onnx": ["onnx"], "keras": ["tflite"], "tflite": ["tflite"]}[kind]


def _plugins_for(model: Any) -> list[str]:
    """Registered (non built-in) backends that accept ``model``."""
    out = []
    for name in _PACKAGES:
        if name in BACKEND_NAMES:
            continue
        try:
            if get_backend(name).accepts(model):
                out.append(name)
        except NboptError:
            continue
    return out


def model_kind(model: Any) -> str:
    """'torch', 'onnx', 'keras' or 'tflite', decided from the type's module or the file suffix; 'plugin'
    for a model only a registered plug-in backend takes."""
    if isinstance(model, (str, Path)):
        return _file_kind(Path(model))
    mods = [c.__module__ for c in type(model).__mro__]
    if any(m.startswith("torch.nn") for m in mods):
        return "torch"
    if any(m.startswith("onnx") for m in mods):
        return "onnx"
    if any(m.startswith(("keras", "tf_keras", "tensorflow")) for m in mods):
        return "keras"
    if _plugins_for(model):
        return "plugin"
    raise NboptError(f"nbopt cannot optimize a {type(model).__name__}: pass a torch.nn.Module, a Keras "
                     "model, an onnx.ModelProto, or a path to an .onnx / .tflite / .keras / .pt2 file.")


def _file_kind(path: Path) -> str:
    if not path.exists():
        raise NboptError(f"Model file '{path}' does not exist: check the path.")
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".tflite":
        return "tflite"
    if path.suffix == ".pt2":
        return "torch"
    if path.suffix == ".keras" or (path.is_dir() and (path / "saved_model.pb").exists()):
        return "keras"
    raise NboptError(f"Cannot tell what model '{path}' is: give an .onnx, .tflite, .keras or .pt2 file, "
                     "a SavedModel folder, or a model object.")


def sensitivity_capable() -> list[str]:
    """Installed backends that declare the per-layer sensitivity capability."""
    out = []
    for name in installed_backends():
        try:
            if get_backend(name).supports_sensitivity:
                out.append(name)
        except NboptError:
            continue
    return out
