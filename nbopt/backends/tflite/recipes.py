"""The TFLite backend's recipe handlers (registered on TFLiteBackend by their decorators) and pruning.

Imported by the package's ``__init__``; TensorFlow and Keras are imported inside the handlers only.
"""
from __future__ import annotations

import numpy as np

from ...errors import CandidateError
from ...quiet import quiet
from ..base import Artifact, Context, Param
from .backend import TFLiteBackend, TFLitePrepared
from .convert import convert, keras_converter, make_artifact
from .runner import import_tf

PRUNABLE = ("kernel", "depthwise_kernel", "pointwise_kernel")


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


@TFLiteBackend.recipe("fp16")
def _fp16(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    tf = import_tf()
    conv = backend.converter(prepared, "fp16")
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    data = convert(conv, "fp16")
    return make_artifact(data, ctx, "fp16", "fp16 weights (dequantized to fp32 at load on CPU; GPU runs "
                         "fp16), TFLite converter")


# The converter picks per-channel scales for convolution kernels itself in dynamic-range mode.
@TFLiteBackend.recipe("int8-dynamic", honours={"per_channel": (True,)})
def _int8_dynamic(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    tf = import_tf()
    conv = backend.converter(prepared, "int8-dynamic")
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    data = convert(conv, "int8-dynamic")
    return make_artifact(data, ctx, "int8_dynamic", "dynamic range: int8 weights, float activations "
                         "(quantized on the fly), TFLite converter")


# The converter calibrates with min/max ranges only.
@TFLiteBackend.recipe(
    "int8-static", honours={"calibration": ("minmax",), "activations": ("int8", "int16"), "per_channel": (True, False)},
    io=Param("float", choices=("float", "int8"),
             help="float: float model inputs/outputs; int8: integer I/O (int16 with int16 activations)"),
)
def _int8_static(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    tf = import_tf()
    conv = backend.converter(prepared, "int8-static")
    calib = ctx.calib
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = backend.representative(prepared, calib)
    int16 = params["activations"] == "int16"
    if int16:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    else:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io_type = "float32"
    if params["io"] == "int8":
        conv.inference_input_type = conv.inference_output_type = tf.int16 if int16 else tf.int8
        io_type = "int16" if int16 else "int8"
    if not params["per_channel"]:
        conv._experimental_disable_per_channel = True
    data = convert(conv, f"int8-static ({_fmt(params)})")
    stem = f"int8_static_{params['activations']}_{params['io']}" + ("" if params["per_channel"] else "_pt")
    acts = "int16 activations / int8 weights" if int16 else "int8 activations and weights"
    scales = "per-channel" if params["per_channel"] else "per-tensor"
    return make_artifact(data, ctx, stem, f"full integer ({acts}, {scales}), "
                         f"{io_type} I/O, calibrated on {min(calib.num_examples or 1024, 1024)} examples, "
                         "TFLite converter")


# The converter's dynamic-range quantizer has no denylist: mixed precision is full integer (static) here.
@TFLiteBackend.recipe("mixed-precision", honours={"mode": ("static",)}, defaults={"mode": "static"})
def _mixed(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    from .mixed import mixed

    return mixed(backend, prepared, params, ctx)


@TFLiteBackend.recipe("prune-unstructured")
def _prune(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    if prepared.kind != "keras":
        raise CandidateError("prune-unstructured on TFLite needs a Keras model (its weights are pruned before "
                             "conversion); this model is a " + prepared.kind.replace("_", " ") + ".")
    amount = float(params["amount"])
    model = prepared.source
    try:
        with quiet():
            import keras

            target = keras.models.clone_model(model)
            target.set_weights(model.get_weights())
        how, saved = "clone", None
    except Exception:  # noqa: BLE001  (subclassed models without get_config cannot be cloned)
        target, how, saved = model, "the model itself, restored afterwards", model.get_weights()
    try:
        zeroed, total = _magnitude_prune(target, amount)
        data = convert(keras_converter(target), f"prune-unstructured (amount={amount})")
    finally:
        if saved is not None:
            model.set_weights(saved)
    note = (f"one-shot magnitude pruning of the Keras kernels ({how}): {zeroed}/{total} weights zero "
            f"({zeroed / total:.0%}), no fine-tuning; fp32 TFLite; size_compressed_bytes is the "
            "zlib-compressed file (zeros only shrink a compressed file). tensorflow-model-optimization "
            "prunes only tf_keras (Keras 2) models, during training, so it is not used for Keras 3")
    return make_artifact(data, ctx, f"pruned_{int(round(amount * 100))}", note, sparsity=round(zeroed / total, 4))


def _magnitude_prune(model, amount: float) -> tuple[int, int]:
    """Zero the ``amount`` smallest-|w| entries of every Dense/Conv kernel (per layer); (zeros, total)."""
    zeroed = total = 0
    for var in model.weights:
        name = getattr(var, "path", var.name).split("/")[-1].split(":")[0]
        if name not in PRUNABLE:
            continue
        w = np.array(var.numpy())
        k = int(round(amount * w.size))
        if k > 0:
            flat = w.ravel().copy()
            flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
            w = flat.reshape(w.shape)
            var.assign(w)
        zeroed += int((w == 0).sum())
        total += int(w.size)
    if total == 0:
        raise CandidateError("prune-unstructured found no Dense/Conv kernels to prune in this Keras model.")
    return zeroed, total
