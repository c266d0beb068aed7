"""``resolution`` on the tflite backend: the Keras model rebuilt for smaller input images (NHWC), converted
to an fp32 .tflite that takes them.

Images are resized by area interpolation (``nbopt.resize``, the same on every backend). The model is cloned
onto a new ``keras.Input`` of the smaller size and given the original weights; that works for a fully
convolutional model with global pooling, and a layer whose weights are sized for the original resolution
(Flatten + Dense) makes the row skipped, naming the layer. With ``epochs > 0`` the clone is fine-tuned at
the new size through the Keras engine (``train.fit``): on the train labels, else distilled from the model
at full resolution. The worker measures the artifact on the eval data resized the same way (the
``input_size`` info key that ``plan.info`` sets).
"""
from __future__ import annotations

import numpy as np

from ... import resize
from ...errors import CandidateError, SkipCandidate, one_line
from ...quiet import quiet
from ...training import TrainSettings
from ..base import Artifact, Context
from .backend import TFLiteBackend, TFLitePrepared
from .convert import convert, keras_converter, make_artifact
from .qat import keras_model
from .train import feed, fit, input_order, objective


@TFLiteBackend.recipe("resolution")
def _resolution(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    import keras

    model = keras_model(prepared, "resolution")
    example, names = _example(model, ctx)
    plan = resize.plan(example, params["scale"], "NHWC")
    small_model = resized(keras, model, plan)
    small = plan(example)
    _check_output(model, small_model, example, small, names, plan)
    (h, w), (h2, w2) = plan.before, plan.after
    notes = [f"input resized {h}x{w} -> {h2}x{w2} (area interpolation); the Keras model cloned onto a {h2}x{w2} "
             "input with its own weights"]
    info = dict(quantized="none (fp32)")
    if int(params["epochs"]) > 0:
        train = ctx.train
        loss, target, how = objective(model, train, names)
        report = fit(small_model, train, loss, TrainSettings.of(params, ctx.seed), ctx, keras=keras,
                     what=f"fine-tuning at {h2}x{w2}", target=target, transform=plan)
        notes.append(report.note(f"fine-tuned at {h2}x{w2} ({how}):"))
        info.update(report.info())
    else:
        notes.append("not fine-tuned (epochs=0): the model runs the smaller images with its own weights")
    data = convert(keras_converter(small_model), plan.what)
    info.update(plan.info(small))
    return make_artifact(data, ctx, f"resolution_{h2}x{w2}", "; ".join(notes), **info)


def _example(model, ctx: Context) -> tuple[dict[str, np.ndarray], list[str]]:
    """A batched example under the data's input names (train or calibration data), else zeros shaped like the
    model's input; and the names in the model's input order."""
    data = ctx.calib_or_train
    if data is not None:
        ex = data.example(2)
        return ex, input_order(model, list(ex))
    shape = tuple(model.inputs[0].shape[1:]) if len(getattr(model, "inputs", None) or []) == 1 else ()
    if len(shape) != 3 or None in shape:
        raise CandidateError("resolution needs the image size: pass calib=... or train=... images (the model's "
                             "input shape does not fix it).")
    return {"input": np.zeros((2, *shape), np.float32)}, ["input"]


def resized(keras, model, plan: resize.Plan):
    """A clone of ``model`` on a ``plan.after``-sized input, with the original weights; SkipCandidate when a
    layer cannot take that size or holds weights sized for the original one."""
    kind = type(model).__name__
    if kind not in ("Sequential", "Functional") or len(model.inputs) != 1:
        raise CandidateError(f"resolution on tflite clones the Keras model onto a smaller input, which needs a "
                             f"Functional or Sequential model with one input; this one is a {kind}.")
    h, w = plan.after
    channels = model.inputs[0].shape[-1]
    try:
        with quiet():
            clone = keras.models.clone_model(model, input_tensors=keras.Input((h, w, channels),
                                                                              dtype=model.inputs[0].dtype))
    except Exception as exc:  # noqa: BLE001  (a layer that cannot take the smaller size)
        raise SkipCandidate(f"{plan.what}: the model cannot be built for the smaller input: "
                            f"{one_line(exc, 240, with_type=True)}") from exc
    clones = {layer.name: layer for layer in clone.layers}
    for layer in model.layers:
        given = layer.get_weights()
        if not given:  # the input layer (a new one) and layers without weights
            continue
        twin = clones.get(layer.name)
        if twin is None:
            raise CandidateError(f"{plan.what}: the clone lost layer '{layer.name}'.")
        have = [tuple(v.shape) for v in twin.weights]
        if have != [a.shape for a in given]:
            (h0, w0), i = plan.before, next((i for i, (a, b) in enumerate(zip(given, have)) if a.shape != b), 0)
            what = twin.weights[i].name.split("/")[-1] if i < len(twin.weights) else "weights"
            raise SkipCandidate(f"{plan.what}: layer '{layer.name}' ({type(layer).__name__}) needs the original "
                                f"{h0}x{w0} input: its {what} is {_shape(given[i].shape)} at {h0}x{w0} but would be "
                                f"{_shape(have[i]) if i < len(have) else 'absent'} at {h}x{w} (a model that takes "
                                "any size ends in global pooling, not Flatten).")
        twin.set_weights(given)
    return clone


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def _check_output(model, small_model, example, small, names, plan: resize.Plan) -> None:
    """The smaller model's output must have the original's shape (labels are compared with it)."""
    with quiet():
        full = np.asarray(model(feed(example, names), training=False))
        out = np.asarray(small_model(feed(small, names), training=False))
    if out.shape != full.shape:
        raise SkipCandidate(f"{plan.what}: the model's output changes shape with its input ({full.shape} -> "
                            f"{out.shape}), so it cannot be scored against the same labels.")
