"""``distill`` on the tflite backend: a Keras image classifier (the teacher) taught to a built-in mobile
network trained from scratch (``weights=None``: nothing is downloaded), converted to an fp32 .tflite.

Students: ``mobilenet`` is ``keras.applications.MobileNetV3Small`` with ``alpha=width``; ``efficientnet`` is
EfficientNet-B0's blocks with ``width_coefficient=width`` (Keras's ``EfficientNet`` builder). Both take the
teacher's input as it is (their built-in 0-255 rescaling is off) and need at least 32x32 images: smaller
inputs are upsampled inside the student by a bilinear ``Resizing`` layer, which the notes say. The loss is
temperature-scaled KL between teacher and student logits plus cross-entropy on labels when there are any,
trained through the Keras engine (``train.fit``).
"""
from __future__ import annotations

import numpy as np

from ...errors import CandidateError, SkipCandidate
from ...quiet import quiet
from ...training import TrainSettings
from ..base import Artifact, Context
from .backend import TFLiteBackend, TFLitePrepared
from .convert import convert, keras_converter, make_artifact
from .qat import keras_model
from .train import distill_target, distillation_loss, ends_in_softmax, fit, input_order, is_class_labels

MIN_SIDE = 32  # keras.applications' smallest input
BN_MOMENTUM = 0.9


@TFLiteBackend.recipe("distill", honours={"student": ("mobilenet", "efficientnet")}, defaults={"student": "mobilenet"})
def _distill(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    import keras

    teacher = keras_model(prepared, "distill")
    train = ctx.train
    shape, classes, probabilities = _teacher_geometry(teacher, train)
    notes: list[str] = []
    logits_model, deployed, student, student_notes = build_student(keras, params["student"], float(params["width"]),
                                                                   shape, classes, probabilities, ctx.seed)
    notes += student_notes
    names = input_order(teacher, train.input_names)

    def teacher_logits(inputs):
        x = [inputs[n] for n in names]
        out = np.asarray(teacher(x[0] if len(x) == 1 else x, training=False))
        return np.log(np.clip(out, 1e-7, 1.0)) if probabilities else out

    with_labels = train.has_labels and is_class_labels(next(train.batches(2))[1], (None, classes))
    loss = distillation_loss(classes, float(params["temperature"]), with_labels)
    report = fit(logits_model, train, loss, TrainSettings.of(params, ctx.seed), ctx, keras=keras,
                 what="distill", target=distill_target(teacher_logits, with_labels))
    notes.insert(0, report.note(f"distilled into {student} from scratch:"))
    notes.append(f"loss: KL at temperature {params['temperature']:g} on logits"
                 + (" + cross-entropy on the train labels" if with_labels else " (no train labels)"))
    if probabilities:
        notes.append("the teacher ends in softmax: its logits are taken as log(probabilities) (equal up to a "
                     "per-example constant, which softmax ignores); the student ends in softmax too")
    notes.append(f"{teacher.count_params():,} teacher parameters -> {deployed.count_params():,} student parameters")
    data = convert(keras_converter(deployed), f"distill ({student})")
    return make_artifact(data, ctx, f"distill_{params['student']}", "; ".join(notes),
                         student=student, **report.info())


def _teacher_geometry(teacher, train) -> tuple[tuple, int, bool]:
    """(input shape H, W, C; classes; whether the teacher outputs probabilities) of an NHWC image classifier;
    SkipCandidate for any other model."""
    inputs = getattr(teacher, "inputs", None) or []
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise SkipCandidate("distill's mobilenet / efficientnet students are image classifiers: they need a model "
                            "with one image input (N, H, W, C).")
    x = next(train.batches(8))[0]
    x = x[input_order(teacher, train.input_names)[0]]
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise SkipCandidate(f"distill's image students need 4-D float images (N, H, W, C); the train inputs are "
                            f"{x.dtype} of shape {x.shape}.")
    with quiet():
        out = np.asarray(teacher(x, training=False))
    if out.ndim != 2 or out.shape[1] < 2:
        raise SkipCandidate(f"distill's image students are classifiers, and this model's output has shape "
                            f"{out.shape} (not (N, classes)).")
    return tuple(int(s) for s in x.shape[1:]), int(out.shape[1]), ends_in_softmax(teacher, out)


def build_student(keras, kind: str, width: float, shape: tuple, classes: int, probabilities: bool, seed: int):
    """(the logits model to train, the model to deploy (+ softmax when the teacher has one), its description,
    notes). Both share the student's layers."""
    keras.utils.set_random_seed(seed)
    h, w, c = shape
    inp = keras.Input(shape)
    x, notes = inp, []
    if min(h, w) < MIN_SIDE:
        f = MIN_SIDE / min(h, w)
        size = (int(round(h * f)), int(round(w * f)))
        x = keras.layers.Resizing(*size, interpolation="bilinear", name="student_upsample")(inp)
        notes.append(f"the student upsamples the {h}x{w} input to {size[0]}x{size[1]} (bilinear Resizing layer "
                     f"inside the model: keras.applications networks need at least {MIN_SIDE}x{MIN_SIDE})")
    try:
        with quiet():
            if kind == "mobilenet":
                net = keras.applications.MobileNetV3Small(input_tensor=x, alpha=width, weights=None, include_top=True,
                                                          classes=classes, classifier_activation=None,
                                                          include_preprocessing=False)
                student = f"MobileNetV3Small alpha={width:g} (weights=None)"
            else:
                net, student, more = _efficientnet(keras, x, width, classes)
                notes += more
    except (CandidateError, SkipCandidate):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"Keras could not build the {kind} student for input {h}x{w}x{c}: {exc}") from exc
    for layer in net.layers:  # moving statistics that settle within a short fine-tune (Keras's 0.99 needs ~1000 steps)
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = BN_MOMENTUM
    logits = keras.Model(inp, net.output, name=f"student_{kind}")
    deployed = keras.Model(inp, keras.layers.Softmax(name="student_softmax")(net.output)) if probabilities else logits
    if c != 3:
        notes.append(f"the student takes the teacher's {c}-channel input as it is (weights=None needs no RGB)")
    return logits, deployed, student, notes


def _efficientnet(keras, x, width: float, classes: int):
    """EfficientNet-B0 at ``width_coefficient=width`` when Keras's builder is reachable, else B0 itself; its
    built-in Rescaling(1/255) is set to 1 so that it takes the teacher's inputs as they are."""
    notes = []
    try:
        from keras.src.applications.efficientnet import EfficientNet  # the builder behind EfficientNetB0..B7
    except ImportError:
        EfficientNet = None
    if EfficientNet is not None:
        net = EfficientNet(width, 1.0, 224, input_tensor=x, weights=None, include_top=True, classes=classes,
                           classifier_activation=None, name="efficientnet")
        student = f"EfficientNet-B0 width_coefficient={width:g} (weights=None)"
    else:
        net = keras.applications.EfficientNetB0(input_tensor=x, weights=None, include_top=True, classes=classes,
                                                classifier_activation=None)
        student = "EfficientNetB0 (weights=None)"
        notes.append(f"width={width:g} not applied: this Keras has no EfficientNet builder, so B0 at width 1.0")
    for layer in net.layers:
        if type(layer).__name__ == "Rescaling" and abs(float(layer.scale) - 1 / 255) < 1e-9:
            layer.scale = 1.0  # Keras 3 reads it at every call (functional models re-run each layer's call)
            break
    return net, student, notes
