"""``qat`` on the tflite backend: quantization-aware training of a Keras model with
tensorflow-model-optimization (tfmot), converted by the TFLite converter to a full int8 model.

tfmot works on tf-keras (Keras 2) only, and which Keras TensorFlow uses is fixed at its first import, so the
training runs in a fresh process (``qat_worker``, with ``TF_USE_LEGACY_KERAS=1``). This handler writes what
that process needs: the model's Keras 3 config and per-layer weights, a sample of inputs with the model's
outputs (the rebuild must reproduce them), and the train data as an Arrow folder. Progress lines and Stop
reach the study through the same files as any other engine's. A model tf-keras cannot rebuild (a custom
layer, a Keras 3-only layer, a subclassed model) fails with a sentence naming the layer.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ...errors import CandidateError, SkipCandidate
from ...quiet import quiet
from ...store import scratch_dir
from ...training import TrainReport, TrainSettings, TrainingStopped
from ..base import Artifact, Context
from .backend import TFLiteBackend, TFLitePrepared
from .convert import make_artifact
from .train import input_order

# --no-deps: tf-keras requires the `tensorflow` wheel (a second copy beside tensorflow-cpu) and tfmot pins
# absl-py 1.x in its metadata; both run on the installed TensorFlow as they are
INSTALL = "pip install --no-deps tf-keras==2.21.0 tensorflow-model-optimization==0.8.1"
STOP_GRACE_S = 10.0  # after Stop, how long the child may take to stop by itself before it is killed
SETUP_SECONDS = 600.0  # the child's time besides training: TensorFlow import, rebuild, conversion


@TFLiteBackend.recipe("qat", honours={"bits": (8,)})
def _qat(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    model = keras_model(prepared, "qat")
    missing = [m for m in ("tf_keras", "tensorflow_model_optimization") if importlib.util.find_spec(m) is None]
    if missing:
        raise CandidateError(f"qat on tflite needs tensorflow-model-optimization on tf-keras, and "
                             f"{' and '.join(missing)} is not installed ({INSTALL}).")
    settings = TrainSettings.of(params, ctx.seed)
    folder = scratch_dir("qat")
    job = _write_job(model, ctx, settings, folder)
    result = _run_child(job, folder, ctx, settings)
    report = TrainReport(**result["report"])
    data = Path(job["out"]).read_bytes()
    notes = [report.note(f"qat (int8 fake quantization, {result['how']}):"),
             "tensorflow-model-optimization quantize_model on a tf-keras rebuild of the model (int8 weights, "
             "per-channel in convolutions; int8 activations; batch norm folded into the convolution before it), "
             "full integer TFLite from the trained ranges, float I/O"]
    return make_artifact(data, ctx, "qat_int8", "; ".join(notes), **report.info())


def keras_model(prepared: TFLitePrepared, recipe: str):
    if prepared.kind != "keras":
        raise CandidateError(f"{recipe} on tflite trains the Keras model, and this model is a "
                             f"{prepared.kind.replace('_', ' ')}: pass the Keras model itself.")
    return prepared.source


def _check_model(model) -> None:
    """Fail early (before a child process) on what tf-keras cannot rebuild."""
    kind = type(model).__name__
    if kind not in ("Sequential", "Functional"):
        raise CandidateError(f"qat on tflite rebuilds the model in tf-keras from its config, which needs a "
                             f"Functional or Sequential Keras model; this one is a subclassed {kind}.")
    for layer in model.layers:
        module = type(layer).__module__
        if not module.startswith("keras."):
            raise CandidateError(f"qat on tflite cannot rebuild layer '{layer.name}': it is a custom layer "
                                 f"({type(layer).__name__} from {module}) and tensorflow-model-optimization "
                                 "quantizes only tf-keras built-in layers; use int8-static instead.")


def _write_job(model, ctx: Context, settings: TrainSettings, folder: Path) -> dict:
    _check_model(model)
    train = ctx.train
    weights = {f"{layer.name}:{i}": w for layer in model.layers for i, w in enumerate(layer.get_weights())}
    np.savez(folder / "weights.npz", **weights)
    inputs, _ = next(train.batches(8))
    names = input_order(model, train.input_names)
    x = [inputs[n] for n in names]
    with quiet():
        y = np.asarray(model(x[0] if len(x) == 1 else x, training=False))
    np.savez(folder / "sample.npz", y=y, **{f"x{i:03d}": a for i, a in enumerate(x)})
    job = {"model": {"class_name": type(model).__name__, "config": model.get_config()},
           "weights": str(folder / "weights.npz"), "sample": str(folder / "sample.npz"),
           "train": _save_data(train, folder / "train"), "settings": vars(settings),
           "seed": ctx.seed, "workdir": str(folder), "parent_pid": os.getpid(),
           "progress": str(ctx.progress) if ctx.progress else None,
           "stop_flag": str(ctx.stop_flag) if ctx.stop_flag else None,
           "out": str(folder / "qat.tflite"), "result": str(folder / "result.json")}
    (folder / "job.json").write_text(json.dumps(job, default=_jsonable))
    return job


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} in a Keras config")


def _save_data(data, path: Path) -> dict:
    """The Data as an Arrow folder the child memory-maps (streamed data is written out first)."""
    import datasets

    from ...data import _quiet_datasets

    with _quiet_datasets():
        ds = data.ds
        if data.streaming:
            ds = datasets.Dataset.from_generator(lambda: iter(data.ds), features=data.ds.features)
        ds.with_format(None).save_to_disk(str(path))
    return {"path": str(path), "input_names": data.input_names, "label_name": data.label_name,
            "fingerprint": data.fingerprint}


def _run_child(job: dict, folder: Path, ctx: Context, settings: TrainSettings) -> dict:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = folder / "child.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "nbopt.backends.tflite.qat_worker", str(folder / "job.json")],
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + settings.max_train_seconds + SETUP_SECONDS
    stop_seen = None
    try:
        while child.poll() is None:
            time.sleep(0.2)
            if ctx.should_stop() and stop_seen is None:
                stop_seen = time.monotonic()
            if stop_seen is not None and time.monotonic() - stop_seen > STOP_GRACE_S:
                raise TrainingStopped("Stopped by the user during qat (before its training began).")
            if time.monotonic() > deadline:
                raise CandidateError(f"qat's training process did not finish within max_train_seconds + "
                                     f"{SETUP_SECONDS:.0f} s.")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    result_path = Path(job["result"])
    if not result_path.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise CandidateError(f"qat's training process ended with code {child.returncode} without a result "
                             f"({' | '.join(tail)[-300:] or 'no output'}).")
    result = json.loads(result_path.read_text())
    if not result["ok"]:
        _raise(result)
    return result


def _raise(result: dict):
    kind, msg = result["kind"], result["message"]
    if kind == "stopped":
        raise TrainingStopped(msg)
    if kind == "skip":
        raise SkipCandidate(msg)
    if kind == "rebuild":
        raise CandidateError(f"qat on tflite could not rebuild the model in tf-keras (Keras 2, which "
                             f"tensorflow-model-optimization needs): {msg.rstrip('.')}.")
    if kind == "crash":
        raise CandidateError(f"qat's training failed: {msg.rstrip('.')}.")
    raise CandidateError(msg)
