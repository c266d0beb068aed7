"""The ``distill`` recipe on the onnx backend: the student is built and trained in torch against the torch
source model (the torch backend's ``distill.distilled``, through the torch engine), then exported to an
fp32 ONNX graph like the baseline. A model given as an .onnx file has no torch source to train against:
the row fails and says so.
"""
from __future__ import annotations

import numpy as np

from ...errors import CandidateError
from ..base import Artifact, Context
from .backend import OnnxBackend, OnnxPrepared, onnx_artifact
from .convert import export_torch

STUDENTS = ("pruned", "mobilenet", "shallow")  # the torch backend's students


@OnnxBackend.recipe("distill", honours={"student": STUDENTS})
def _distill(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    if prepared.module is None:
        raise CandidateError("distill trains a student against the torch model, and this model was given as an "
                             "ONNX graph: pass the torch.nn.Module to distil it.")
    from ..torch.distill import distilled
    from ..torch.runner import Positional

    ctx.workdir.mkdir(parents=True, exist_ok=True)
    names, single = prepared.input_names, prepared.single_input
    teacher = Positional.wrap(prepared.module, names, single)
    example = _example(ctx.train.example(2), names)
    result = distilled(teacher, {k: v[:1] for k, v in example.items()}, names, params, ctx)
    student = result.student if single else result.student.inner  # the export feeds a multi-input model by name
    path, how = export_torch(student, example, single, ctx.workdir)
    return onnx_artifact(path, "; ".join([f"fp32, {how}", *result.notes]), **result.info)


def _example(inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Train examples keyed by the graph's input names (a single-input model's one array, whatever its name)."""
    if len(names) == 1 and len(inputs) == 1:
        return {names[0]: next(iter(inputs.values()))}
    return {k: inputs[k] for k in names}
