"""Training recipes for Keras models on the tflite backend, in real studies on digits (8x8x1, NHWC): qat
(tensorflow-model-optimization in a tf-keras process), distill into a MobileNetV3Small student, resolution
(the model cloned onto a smaller input), progress events and Stop."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains and converts real models (the fast tier: pytest -m "not slow")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import nbopt  # noqa: E402
from nbopt.backends.tflite.runner import interpreter_class  # noqa: E402
from nbopt.evaluator import LatencySettings  # noqa: E402

FAST = dict(backends=["tflite"], measure_memory=False, progress=False,
            latency=LatencySettings(warmup=1, min_runs=3, min_seconds=0.0))
needs_tfmot = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("tf_keras", "tensorflow_model_optimization")),
    reason="qat on tflite needs tf-keras and tensorflow-model-optimization")


@pytest.fixture(scope="module")
def split(digits):
    """NHWC digits: train (900), calibration (200, disjoint from train), eval (the held-out split)."""
    xtr, ytr, xval, yval = (a.transpose(0, 2, 3, 1) if a.ndim == 4 else a for a in digits)
    return (xtr[:900], ytr[:900]), xtr[900:1100], (xval, yval)


def _fit(model, split, epochs):
    (x, y), _, _ = split
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def cnn(split):
    """Conv-BN-ReLU, conv, global pooling, dense: quantizable by tfmot and takes any input size."""
    keras.utils.set_random_seed(0)
    return _fit(keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ]), split, 8)


class Doubled(keras.layers.Layer):
    """A custom layer: tf-keras cannot rebuild it."""

    def call(self, x):
        return x * 2.0


def _study(model, split, recipes, events=None, **kw):
    train, calib, ev = split
    cbs = [lambda e, p: events.append((e, p))] if events is not None else []
    return nbopt.Study(model, calib=calib, eval=ev, train=train, recipes=recipes, callbacks=cbs, **FAST, **kw)


def _input_shape(path) -> list[int]:
    interp = interpreter_class()[0](model_path=str(path))
    return list(interp.get_input_details()[0]["shape"])


@needs_tfmot
def test_qat_and_resolution_on_a_keras_cnn(cnn, split, tmp_path):
    events = []
    s = _study(cnn, split, ["int8-static", {"qat": {"epochs": 2, "lr": 1e-4}}, {"resolution": {"scale": 0.5}}],
               events, store=tmp_path).run()
    rows = s.results.set_index("recipe")
    qat, static, res, base = rows.loc["qat"], rows.loc["int8-static"], rows.loc["resolution"], rows.loc["baseline"]
    assert qat["status"] == "ok", qat["error"]
    # a full integer model: int8 weights and int8-only accelerators take every op
    assert qat["quantized"].startswith("weights int8") and "int8-only: ok" in qat["delegates"]
    assert qat["size_bytes"] < 0.5 * base["size_bytes"]
    assert qat["accuracy"] >= static["accuracy"] - 0.03, (qat["accuracy"], static["accuracy"])
    assert qat["train_epochs"] == 2 and qat["train_seconds"] > 0 and "qat (int8 fake quantization" in qat["notes"]
    progress = [p for e, p in events if e == "training_progress" and p["phase"] == "qat" and p["batch"] is None]
    assert [p["epoch"] for p in progress] == [1, 2] and all(np.isfinite(p["loss"]) for p in progress)
    # resolution: the artifact takes 4x4 images and is measured on the eval images resized to 4x4
    assert res["status"] == "ok", res["error"]
    assert res["input_shape"] == "(N,4,4,1)" and "8x8 -> 4x4, area interpolation" in res["preprocessing"]
    assert _input_shape(res["artifact_path"]) == [1, 4, 4, 1]
    assert 0.1 < res["accuracy"] <= base["accuracy"] + 0.05


def test_custom_layer_fails_qat_and_flatten_skips_resolution(split, tmp_path):
    inp = keras.Input((8, 8, 1))
    x = Doubled(name="doubled")(keras.layers.Conv2D(4, 3, padding="same")(inp))
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(keras.layers.Flatten()(x)))
    # inline: a worker process could not unpickle a layer class defined in a test module
    s = _study(model, split, [{"qat": {"epochs": 1}}, {"resolution": {"scale": 0.5}}], store=tmp_path,
               executor="inline").run()
    rows = s.results.set_index("recipe")
    assert rows.loc["qat", "status"] == "failed"
    assert "layer 'doubled'" in rows.loc["qat", "error"] and "custom layer" in rows.loc["qat", "error"]
    assert rows.loc["resolution", "status"] == "skipped"
    assert "layer 'head' (Dense) needs the original 8x8 input" in rows.loc["resolution", "error"]


def test_distill_into_a_mobilenet_student(split, tmp_path):
    keras.utils.set_random_seed(0)
    teacher = _fit(keras.Sequential([  # ~1M parameters: four times the width-0.25 student
        keras.Input((8, 8, 1)), keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10),
    ]), split, 3)
    s = _study(teacher, split, [{"distill": {"epochs": 2, "width": 0.25, "lr": 0.01, "max_train_seconds": 90}}],
               store=tmp_path).run()
    rows = s.results.set_index("recipe")
    row = rows.loc["distill"]
    assert row["status"] == "ok", row["error"]
    assert row["student"] == "MobileNetV3Small alpha=0.25 (weights=None)"
    assert row["size_bytes"] < 0.5 * rows.loc["baseline", "size_bytes"]
    assert row["train_epochs"] == 2 and "upsamples the 8x8 input to 32x32" in row["notes"]
    assert row["accuracy"] > 0.5  # trained from scratch in two short epochs: far above chance (0.1)


@needs_tfmot
def test_stop_reaches_the_qat_training_process(cnn, split, tmp_path):
    s = _study(cnn, split, [{"qat": {"epochs": 200, "lr": 1e-4}}], store=tmp_path)

    def stop_once_training(event, payload):
        if event == "training_progress" and not s.stopped:
            threading.Thread(target=s.stop).start()

    s.on(stop_once_training)
    s.run()
    row = s.results.set_index("recipe").loc["qat"]
    assert s.stopped and row["status"] == "failed"
    assert "Stopped by the user during qat (epoch" in row["error"]
    assert row["build_seconds"] < 60
