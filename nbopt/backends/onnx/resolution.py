"""The ``resolution`` recipe on the onnx backend: the model as an ONNX graph for smaller input images.

A model given as a torch module is checked, optionally fine-tuned at the new size (the torch backend's
``resolution.finetuned``, through the torch engine) and exported again at that size. A graph given as an
.onnx file (or ModelProto) with dynamic height and width runs the smaller images as it is (the row says
so); one with a fixed height and width cannot take them: a skipped row. Either way the worker measures the
artifact on the eval data resized by area interpolation (``nbopt.resize``).
"""
from __future__ import annotations

import numpy as np

from ... import resize
from ...errors import CandidateError, SkipCandidate, one_line
from ..base import Artifact, Context
from .backend import OnnxBackend, OnnxPrepared, onnx_artifact
from .convert import export_torch
from .runner import OrtRunner


@OnnxBackend.recipe("resolution")
def _resolution(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    if prepared.module is None:
        return _same_graph(backend, prepared, params, ctx)
    from ..torch.resolution import checked, finetuned
    from ..torch.runner import Positional

    example = _example(prepared, ctx)
    plan = resize.plan(example, params["scale"], "NCHW")
    module = Positional.wrap(prepared.module, prepared.input_names, prepared.single_input)
    small = checked(module, example, plan)
    module, notes, info = finetuned(module, prepared.input_names, plan, params, ctx)
    path, how = export_torch(module, small, prepared.single_input, ctx.workdir)
    info.update(plan.info(small))
    notes = [f"fp32, input resized {_sizes(plan)} (area interpolation), {how}", *notes]
    return onnx_artifact(path, "; ".join(notes), **info)


def _same_graph(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    """A graph without its torch source: usable as it is when its height and width are dynamic."""
    image = [g for g in prepared.inputs if len(g.shape) == 4 and np.issubdtype(g.dtype, np.floating)]
    if not image:
        shown = ", ".join(f"{g.name} {_dims(g.shape)} {g.dtype}" for g in prepared.inputs)
        raise SkipCandidate(f"resolution needs image inputs (4-D float: N,C,H,W or N,H,W,C); the ONNX graph takes "
                            f"{shown}.")
    layout = resize.guess_layout(image[0].shape, "NCHW")
    fixed = [g for g in image if None not in resize.spatial(g.shape, layout)]
    if fixed:
        g = fixed[0]
        h, w = resize.spatial(g.shape, layout)
        raise SkipCandidate(f"resolution scale={params['scale']:g}: the ONNX graph has a fixed {h}x{w} input "
                            f"({g.name} {_dims(g.shape)}); resizing needs the torch source model or a graph "
                            "exported with dynamic height and width.")
    if int(params["epochs"]) > 0:
        raise CandidateError("resolution's fine-tune (epochs > 0) trains the torch source model, and this model "
                             "was given as an ONNX graph: pass the torch.nn.Module, or epochs=0.")
    data = ctx.calib_or_train
    if data is None:
        raise SkipCandidate("resolution on an ONNX graph with dynamic height and width needs calib= or train= "
                            "images to know the input size.")
    example = _named(prepared, data.example(1))
    plan = resize.plan(example, params["scale"], layout)
    small = plan(example)
    try:
        OrtRunner(prepared.path, threads=1)(small)
    except Exception as exc:  # noqa: BLE001 - the graph's own limits (a reshape to the old size, ...)
        raise SkipCandidate(f"{plan.what}: the model cannot take the smaller input: "
                            f"{one_line(exc, 240)}") from exc
    art = backend.baseline(prepared, ctx)
    art.notes = (f"the fp32 graph as given (dynamic height and width), fed images resized {_sizes(plan)} "
                 f"(area interpolation); {prepared.note}")
    art.info.update(plan.info(small))
    return art


def _example(prepared: OnnxPrepared, ctx: Context) -> dict[str, np.ndarray]:
    """One batched example in the graph's input names: zeros of the exported (static) shapes, or the
    calibration / train data's first example where a shape is dynamic beyond the batch."""
    if all(None not in g.shape[1:] for g in prepared.inputs):
        return {g.name: np.zeros((1, *g.shape[1:]), dtype=g.dtype) for g in prepared.inputs}
    data = ctx.calib_or_train
    if data is None:
        raise SkipCandidate("resolution needs calib= or train= images to know the input size of this model.")
    return _named(prepared, data.example(1))


def _named(prepared: OnnxPrepared, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if len(inputs) == 1 and len(prepared.inputs) == 1:
        return {prepared.inputs[0].name: next(iter(inputs.values()))}
    return {g.name: inputs[g.name] for g in prepared.inputs}


def _sizes(plan: resize.Plan) -> str:
    return f"{plan.before[0]}x{plan.before[1]} -> {plan.after[0]}x{plan.after[1]}"


def _dims(shape: tuple) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"
