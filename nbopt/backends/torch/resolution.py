"""The ``resolution`` recipe on the torch backend: the model exported for smaller input images.

Images are resized by area interpolation (``nbopt.resize``, the same on every backend); with ``epochs > 0``
the model is first fine-tuned at the new size through the torch engine (``train.fit``): on the train
labels when there are any, else distilled from the original model, which sees the full-size images while
the student sees them resized. The artifact takes the smaller input; the worker measures it on the eval
data resized the same way (the ``input_size`` info key), so its latency is that of the smaller input.

A model that cannot take the smaller size (Flatten + Linear sized for the original resolution), or whose
output changes shape with its input (dense prediction), is a skipped row that says why. The onnx
backend's handler uses ``checked`` and ``finetuned`` from here on the torch source model.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np

from ... import resize
from ...errors import SkipCandidate, one_line
from ...quiet import quiet
from ...training import TrainSettings
from ..base import Artifact, Context
from .backend import TorchBackend, TorchPrepared, build
from .runner import first_output, import_torch, to_tensors
from .train import distillation_loss, fit, supervised, teacher_forward

DISTILL_TEMPERATURE = 1.0  # the student matches the teacher's own output distribution (no labels to add)


@TorchBackend.recipe("resolution")
def _resolution(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    plan = resize.plan(prepared.example, params["scale"], "NCHW")
    small = checked(prepared.module, prepared.example, plan)
    module, notes, info = finetuned(prepared.module, prepared.input_names, plan, params, ctx)
    info.update(plan.info(small), quantized="none (fp32)")
    notes.insert(0, f"input resized {plan.before[0]}x{plan.before[1]} -> {plan.after[0]}x{plan.after[1]} "
                    "(area interpolation)")
    return build(module, dataclasses.replace(prepared, example=small), ctx, notes=notes, info=info)


def checked(module, example: dict[str, np.ndarray], plan: resize.Plan) -> dict[str, np.ndarray]:
    """The example resized, once the model has run on it and kept its output's shape; SkipCandidate (the
    sentence says why) when it cannot take the smaller input."""
    torch = import_torch()
    small = plan(example)
    with torch.no_grad(), quiet():
        full = first_output(module(*to_tensors(example)))
        try:
            out = first_output(module(*to_tensors(small)))
        except Exception as exc:  # noqa: BLE001 - any failure at the new size means: not for this model
            raise SkipCandidate(f"{plan.what}: the model cannot take the smaller input: "
                                f"{one_line(exc, 240, with_type=True)}") from exc
    if tuple(out.shape) != tuple(full.shape):
        raise SkipCandidate(f"{plan.what}: the model's output changes shape with its input ({tuple(full.shape)} -> "
                            f"{tuple(out.shape)}), so it cannot be scored against the same labels; run a dense "
                            "model on large images tile by tile instead (nbopt.tiling).")
    return small


def finetuned(module, input_names: list[str], plan: resize.Plan, params: dict, ctx: Context):
    """(a copy of ``module`` fine-tuned at the new size, notes, info): supervised on the train labels, else
    distilled from ``module`` at full resolution; untouched (and said so) with ``epochs=0``."""
    student = copy.deepcopy(module).eval()
    if int(params["epochs"]) == 0:
        return student, ["not fine-tuned (epochs=0): the model runs the smaller images with its own weights"], {}
    settings = TrainSettings.of(params, ctx.seed)
    data = ctx.train
    at = f"{plan.after[0]}x{plan.after[1]}"
    if data.has_labels:
        report = fit(student, data, input_names, supervised, settings, ctx, what=f"fine-tuning at {at}",
                     transform=plan)
        note = report.note(f"fine-tuned at {at} on the train labels:")
    else:
        report = fit(student, data, input_names, _distill_loss(module, input_names, plan), settings, ctx,
                     what=f"distilling at {at}")
        note = report.note(f"distilled at {at} from the model at full resolution (no train labels):")
    return student, [note], report.info()


def _distill_loss(teacher, input_names: list[str], plan: resize.Plan):
    """Loss for ``fit``: the teacher runs the full-size batch, the student the same batch resized."""
    teach = teacher_forward(teacher)
    torch = import_torch()

    def loss(student, x: tuple, labels):
        small = plan({k: t.numpy() for k, t in zip(input_names, x)})
        out = first_output(student(*to_tensors(small)))
        target = teach(x)
        embedding = out.dim() != 2 or not torch.is_floating_point(out)
        return distillation_loss(out, target, labels, DISTILL_TEMPERATURE, embedding=embedding)
    return loss
