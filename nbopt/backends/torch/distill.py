"""The ``distill`` recipe on the torch backend: a smaller student trained to match the user's model (the
teacher) on the train= data, then lowered like any other candidate.

Students (``student``; ``width`` sizes each):
- ``pruned``: the model with ``1 - width`` of each layer's channels removed (Torch-Pruning, the same
  ``prune.structured`` as prune-structured), fine-tuned with the distillation loss instead of cross-entropy;
- ``mobilenet``: a MobileNetV3-style network sized from the teacher's input and classes (``students.py``),
  trained from scratch; image classifiers only;
- ``shallow``: the teacher with every k-th transformer layer (``round(L * width)`` of L), for encoders.
A student that does not fit the model is a skipped row that says why.

The loss (``train.distillation_loss``): temperature-scaled KL between the student's and the teacher's
class scores, plus cross-entropy where the train data has class labels (unlabelled data is enough); for a
model whose output is not class scores (hidden states, embeddings, regression values): cosine + MSE to the
teacher's outputs. Training runs through the torch engine (``train.fit``). The onnx backend's handler
calls ``distilled`` on the torch source model and exports the student.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import SkipCandidate, library_failure
from ...quiet import quiet
from ...training import TrainSettings
from ..base import Artifact, Context
from .students import mobilenet, shallow
from .backend import TorchBackend, TorchPrepared, build
from .prune import count_params, structured
from .runner import first_output, import_torch, to_tensors
from .train import distillation_loss, fit, teacher_forward

STUDENTS = ("pruned", "mobilenet", "shallow")  # efficientnet is a Keras student (the tflite backend)


@dataclass
class Distilled:
    """A trained student with what the row says about it."""

    student: object  # torch.nn.Module, eval mode, same positional inputs as the teacher
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


@TorchBackend.recipe("distill", honours={"student": STUDENTS})
def _distill(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    result = distilled(prepared.module, prepared.example, prepared.input_names, params, ctx)
    return build(result.student, prepared, ctx, notes=result.notes, info=result.info)


def distilled(teacher, example: dict[str, np.ndarray], input_names: list[str], params: dict,
              ctx: Context) -> Distilled:
    """The student ``params`` asks for, trained on ``ctx.train`` against ``teacher`` (a module taking the
    inputs positionally, in ``input_names`` order; left untouched)."""
    torch = import_torch()
    with torch.no_grad(), quiet():
        out = first_output(teacher(*to_tensors(example)))
    student, what, extra = make_student(teacher, example, out, params, ctx.seed)
    before, after = count_params(teacher), count_params(student)
    embedding, loss_note = choose_loss(out, ctx.train, float(params["temperature"]))
    settings = TrainSettings.of(params, ctx.seed)
    report = fit(student, ctx.train, input_names, _loss(teacher, float(params["temperature"]), embedding),
                 settings, ctx, what="distilling")
    notes = [f"student: {what}", *extra, f"loss: {loss_note}", report.note("distilled")]
    if after >= before:
        notes.append(f"the student has more parameters than the teacher ({after:,} vs {before:,}): try a "
                     "smaller width")
    info = {"student": what, "params_before": before, "params_after": after, "quantized": "none (fp32)",
            **report.info()}
    return Distilled(student.eval(), notes, info)


def make_student(teacher, example: dict[str, np.ndarray], out, params: dict, seed: int):
    """(untrained student, its description, extra notes); SkipCandidate when the student does not fit."""
    kind, width = params["student"], float(params["width"])
    if kind == "pruned":
        if width >= 1:
            raise SkipCandidate(f"student='pruned' keeps a fraction width of each layer's channels; width={width:g} "
                                "keeps them all: use a width below 1.")
        amount = 1.0 - width
        with library_failure("Torch-Pruning on this model"):
            student = structured(teacher, to_tensors(example), amount)
        return student, (f"structured-pruned copy of the model, width {width:g} ({amount:.0%} of the channels "
                         f"removed by Torch-Pruning), {count_params(student):,} parameters"), []
    if kind == "mobilenet":
        student, plan = mobilenet(example, out, width, seed)
        strides = plan.strides()
        return student, plan.describe(count_params(student)), [
            f"MobileNetV3-Small blocks for {plan.channels}x{plan.size[0]}x{plan.size[1]} inputs and {plan.classes} "
            f"classes ({strides.count(2)} stride-2 layers of 6), trained from scratch"]
    if kind == "shallow":
        student, keep, total, name = shallow(teacher, width)
        if len(keep) == total:
            raise SkipCandidate(f"student='shallow' with width={width:g} keeps all {total} layers of this "
                                "encoder: use a smaller width.")
        return student, (f"{name} with {len(keep)} of {total} layers (teacher layers {', '.join(map(str, keep))}), "
                         f"{count_params(student):,} parameters"), ["initialised from the teacher's weights"]
    raise SkipCandidate(f"the torch backend has no student '{kind}' (it offers {', '.join(STUDENTS)}).")


def choose_loss(out, data, temperature: float) -> tuple[bool, str]:
    """(embedding?, the sentence for the notes). Class scores: a 2-D float output with at least two columns,
    unless the train labels are float targets (regression); anything else is matched as an embedding."""
    labels = next(data.batches(2))[1] if data.has_labels else None
    float_targets = labels is not None and np.issubdtype(np.asarray(labels).dtype, np.floating)
    shape = "(" + ",".join(["N", *map(str, tuple(out.shape)[1:])]) + ")"
    if out.dim() == 2 and out.is_floating_point() and out.shape[1] >= 2 and not float_targets:
        if labels is not None:
            return False, (f"KL divergence to the teacher's softmax at temperature {temperature:g} + cross-entropy "
                           "on the train labels")
        return False, (f"KL divergence to the teacher's softmax at temperature {temperature:g} (train data without "
                       "labels)")
    return True, f"cosine + MSE to the teacher's outputs {shape} (not class scores; temperature unused)"


def _loss(teacher, temperature: float, embedding: bool):
    """Loss for ``fit``: the student's outputs against the teacher's on the same batch."""
    teach = teacher_forward(teacher)

    def loss(student, x: tuple, labels):
        return distillation_loss(first_output(student(*x)), teach(x), labels, temperature, embedding=embedding)
    return loss
