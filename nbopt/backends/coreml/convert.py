"""Converting a model to a Core ML ML Program, writing the .mlpackage folder, and building its Artifact.

An .mlpackage is a folder (Manifest.json, the model spec, a weights blob): the Artifact's ``files`` lists
every file inside it, so ``Artifact.size_bytes`` is the package's real size on disk.
coremltools, torch and TensorFlow are imported inside functions only.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import CandidateError, library_failure, one_line
from ...quiet import quiet
from ..base import Artifact, Context
from .reports import Report, summary
from .runner import import_ct, measurable_info

# The oldest Core ML versions that run each program: iOS16 / macOS13 has fp16, int8, palettes and sparse
# weights; int4 with one scale per block of weights needs iOS18 / macOS15.
BASE_TARGET, BLOCKWISE_TARGET = "iOS16", "iOS18"
PRECISIONS = {"fp32": "FLOAT32", "fp16": "FLOAT16"}


@dataclass(frozen=True)
class InputSpec:
    """One model input, as Core ML sees it: batch 1, float32 or int32 (Core ML has no int64 inputs)."""

    name: str
    shape: tuple
    dtype: type

    @staticmethod
    def of(name: str, array: np.ndarray) -> "InputSpec":
        kind = np.asarray(array).dtype.kind
        return InputSpec(name, tuple(array.shape), np.int32 if kind in "iub" else np.float32)


def convert(source: Any, kind: str, inputs: list[InputSpec], precision: str, target: str):
    """The source as an ML Program (``skip_model_load``: the runner loads the saved package itself)."""
    ct = import_ct()
    kwargs: dict = {"source": "tensorflow"}  # TensorFlow names the inputs after the TensorSpecs
    if kind == "torch":  # name Core ML's inputs after the data's
        kwargs = {"source": "pytorch",
                  "inputs": [ct.TensorType(name=s.name, shape=s.shape, dtype=s.dtype) for s in inputs]}
    with library_failure(f"coremltools conversion ({precision}, {target})"), quiet():
        return ct.convert(source, convert_to="mlprogram", skip_model_load=True,
                          compute_precision=getattr(ct.precision, PRECISIONS[precision]),
                          minimum_deployment_target=getattr(ct.target, target), **kwargs)


# -- what ct.convert is given ------------------------------------------------------------------------
def torch_positional(model, names: list[str], single: bool):
    """The model as a module taking its inputs positionally (data order) and returning one tensor."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(*args) if single else self.inner(**dict(zip(names, args)))
            return _first_tensor(out, torch)

    return Positional(model).eval()


def _first_tensor(out, torch):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        return _first_tensor(next(iter(out.values() if isinstance(out, dict) else out.to_tuple())), torch)
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[0], torch)
    raise CandidateError(f"The model returned a {type(out).__name__}; nbopt needs a tensor (or a tuple/dict "
                         "whose first item is one).")


def torch_exporters() -> list[tuple[str, Callable]]:
    """torch.export first (coremltools' newer front end), TorchScript tracing as the fallback."""
    import torch

    def export(module, args):
        with quiet(), torch.no_grad():
            return torch.export.export(module, args).run_decompositions({})  # coremltools takes ATEN dialect

    def trace(module, args):
        with quiet(), torch.no_grad():
            return torch.jit.trace(module, args)

    return [("torch.export", export), ("TorchScript trace", trace)]


def torch_source(module, example: dict[str, np.ndarray], inputs: list[InputSpec], convert_fp32: Callable):
    """(source, fp32 program, how): the first exporter whose program coremltools converts."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(example[s.name])) for s in inputs)
    failures = []
    for label, export in torch_exporters():
        try:
            with library_failure(label):
                source = export(module, args)
            program = convert_fp32(source)
        except CandidateError as exc:
            failures.append(one_line(exc, 200))
            continue
        how = label if not failures else (f"{label}, which fixes data-dependent branches as the example took "
                                          f"them (used because {failures[0].rstrip('.')})")
        return source, program, how
    raise CandidateError("Core ML conversion failed both ways: " + "; ".join(failures))


def keras_source(model, example: dict[str, np.ndarray], inputs: list[InputSpec], single: bool):
    """A concrete tf.function of the Keras model at batch 1: ct.convert does not take Keras 3 models."""
    import tensorflow as tf

    specs = [tf.TensorSpec(s.shape, tf.as_dtype(example[s.name].dtype), name=s.name) for s in inputs]
    names = [s.name for s in inputs]

    def call(*args):
        out = model(args[0] if single else dict(zip(names, args)), training=False)
        while isinstance(out, (list, tuple, dict)):  # first output, as the runners return
            out = next(iter(out.values())) if isinstance(out, dict) else out[0]
        return out

    with library_failure("Tracing the Keras model with tf.function"), quiet():
        return [tf.function(call, input_signature=specs).get_concrete_function()]


# -- the package on disk -------------------------------------------------------------------------------
def package_files(path: Path) -> list[Path]:
    """Every file inside the .mlpackage folder (what its size is the sum of)."""
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


def save(mlmodel, ctx: Context, stem: str) -> Path:
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    path = ctx.workdir / f"{stem}.mlpackage"
    if path.exists():  # a leftover in this candidate's own scratch folder; MLModel.save would merge into it
        shutil.rmtree(path)
    with library_failure("Saving the .mlpackage"), quiet():
        mlmodel.save(str(path))
    return path


def write_package(mlmodel, ctx: Context, stem: str) -> tuple[Path, Report | None]:
    """Save the package and read back what its weights are (None if that read fails)."""
    path = save(mlmodel, ctx, stem)
    try:
        return path, summary(path)
    except Exception:  # noqa: BLE001  (a report that fails must not fail the candidate)
        return path, None


def artifact(path: Path, notes: str, report: Report | None, **info) -> Artifact:
    """The Artifact of a saved package: every file in it, what its weights are, whether it can run here."""
    info.setdefault("quantized", report.text if report else "unknown (the package's spec could not be read)")
    info.update(measurable_info())
    return Artifact(path=path, format="mlpackage", files=package_files(path), notes=notes, info=info)
