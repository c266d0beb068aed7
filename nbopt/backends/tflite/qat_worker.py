"""The tflite backend's quantization-aware training, run as its own process:
``python -m nbopt.backends.tflite.qat_worker JOB.json`` with ``TF_USE_LEGACY_KERAS=1``.

tensorflow-model-optimization (tfmot) inserts its fake-quantization only into tf-keras (Keras 2) models, and
which Keras ``tf.keras`` means is fixed when TensorFlow is first imported, so this cannot run in a worker
that has loaded Keras 3 for the other recipes. The parent (``qat.py``) writes the user's Keras 3 model as its
config and per-layer weights; here it is rebuilt in tf-keras layer by layer, checked to compute the same
outputs, wrapped by ``tfmot.quantization.keras.quantize_model`` (int8 fake quantization of weights and
activations, batch norm folded), fine-tuned through the Keras engine (``train.fit``, the same engine Keras 3
recipes use) and converted by the TFLite converter, which turns the trained fake-quantization ranges into an
int8 model. The outcome is a JSON file: the training report, or the error's class and sentence.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, SkipCandidate, one_line
from ...training import TrainSettings, TrainingStopped
from ..base import Context

# tf-keras Layer keyword arguments every layer takes (through **kwargs)
_BASE_KWARGS = {"name", "dtype", "trainable", "dynamic", "input_dim", "input_shape", "batch_input_shape",
                "batch_size", "activity_regularizer", "autocast"}
ACTIVATIONS: dict = {}  # the activation functions rebuilt models use, by name (``quantize_scope``)
SAME_OUTPUTS_ATOL = 1e-3  # the rebuilt float model must match the original (relative to the output scale)


class Unrebuildable(CandidateError):
    """A layer tf-keras cannot rebuild: the row fails naming it."""


# -- rebuilding a Keras 3 model in tf-keras ------------------------------------------------------------
def rebuild(config: dict, keras2) -> Any:
    """The tf-keras model described by a Keras 3 ``{"class_name", "config"}`` model config."""
    kind, cfg = config["class_name"], config["config"]
    if kind == "Sequential":
        return _sequential(cfg, keras2)
    if kind in ("Functional", "Model"):
        return _functional(cfg, keras2)
    raise Unrebuildable(f"the model is a {kind}, not a Functional or Sequential Keras model")


def _input(entry: dict, keras2):
    cfg = entry["config"]
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    return keras2.Input(batch_shape=tuple(shape), dtype=_dtype(cfg.get("dtype")), name=cfg.get("name"))


def _sequential(cfg: dict, keras2):
    model = keras2.Sequential(name=cfg.get("name"))
    entries = cfg["layers"]
    if entries and entries[0]["class_name"] == "InputLayer":
        model.add(_input(entries[0], keras2))
        entries = entries[1:]
    elif cfg.get("build_input_shape"):
        model.add(keras2.Input(batch_shape=tuple(cfg["build_input_shape"])))
    for entry in entries:
        model.add(make_layer(entry, keras2))
    return model


def _functional(cfg: dict, keras2):
    import tensorflow as tf

    tensors: dict[tuple, Any] = {}
    pending = list(cfg["layers"])
    while pending:
        progressed = False
        for entry in list(pending):
            if entry["class_name"] == "InputLayer":
                tensors[(entry["name"], 0, 0)] = _input(entry, keras2)
            else:
                nodes = entry.get("inbound_nodes", [])
                if not all(_ready(node, tensors) for node in nodes):
                    continue
                layer = make_layer(entry, keras2)
                for n, node in enumerate(nodes):
                    args = _resolve(node.get("args", []), tensors)
                    kwargs = _resolve(node.get("kwargs", {}), tensors)
                    for i, t in enumerate(tf.nest.flatten(layer(*args, **kwargs))):
                        tensors[(entry["name"], n, i)] = t
            pending.remove(entry)
            progressed = True
        if not progressed:
            raise Unrebuildable(f"layers {', '.join(repr(e['name']) for e in pending)} could not be connected "
                                "(an input they take is not made by any layer)")

    def ends(spec):
        spec = spec if spec and isinstance(spec[0], list) else [spec]
        return [tensors[tuple(s)] for s in spec]

    inputs, outputs = ends(cfg["input_layers"]), ends(cfg["output_layers"])
    return keras2.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                        name=cfg.get("name"))


def _history(obj) -> tuple | None:
    if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
        return tuple(obj["config"]["keras_history"])
    return None


def _ready(node, tensors) -> bool:
    found = []

    def walk(o):
        h = _history(o)
        if h is not None:
            found.append(h)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(node)
    return all(h in tensors for h in found)


def _resolve(obj, tensors):
    h = _history(obj)
    if h is not None:
        return tensors[h]
    if isinstance(obj, dict):
        return {k: _resolve(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, tensors) for v in obj]
    return obj


def make_layer(entry: dict, keras2):
    """One tf-keras layer from a Keras 3 layer entry: the same class and settings (weights come later)."""
    name, kind, module = entry["config"].get("name", "?"), entry["class_name"], entry.get("module") or ""
    if kind in ("Functional", "Sequential", "Model"):
        raise Unrebuildable(f"layer '{name}' is a model nested in the model ({kind}); tfmot quantizes only flat "
                            "models (call the inner model's layers directly)")
    if module.startswith("keras.src.ops"):
        return _op(kind, name)
    if not module.startswith("keras"):
        raise Unrebuildable(f"layer '{name}' is a custom layer ({kind} from {module or 'an unknown module'}), "
                            "which tf-keras cannot rebuild")
    cls = getattr(keras2.layers, kind, None)
    if cls is None:
        raise Unrebuildable(f"layer '{name}' is a Keras 3 {kind}, which tf-keras has no counterpart for")
    try:
        return cls.from_config(_config(entry["config"], cls, name))
    except Unrebuildable:
        raise
    except Exception as exc:  # noqa: BLE001
        raise Unrebuildable(f"layer '{name}' ({kind}) could not be rebuilt in tf-keras "
                            f"({one_line(exc, 200, with_type=True)})") from exc


def _op(kind: str, name: str):
    """A Keras 3 op applied to tensors in a functional model (``x + 3.0``) as the same TensorFlow operator,
    which tf-keras records as a TFOpLambda layer."""
    import operator

    table = {"Add": operator.add, "Subtract": operator.sub, "Multiply": operator.mul, "Divide": operator.truediv,
             "TrueDivide": operator.truediv, "Negative": operator.neg}
    if kind not in table:
        raise Unrebuildable(f"'{name}' is the Keras 3 op {kind} applied to tensors, which nbopt cannot rebuild "
                            "in tf-keras")
    fn = table[kind]

    def call(*args, **kwargs):
        return fn(*args, **kwargs)
    return call


def _config(cfg: dict, cls, name: str) -> dict:
    """A Keras 3 layer config as tf-keras takes it: dtype policies as names, serialized objects without
    Keras 3's module keys, initializers dropped (the weights are copied), Keras 3-only settings dropped when
    unset (and refused when set)."""
    allowed = set(_BASE_KWARGS)
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            allowed |= set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs"}
    out = {}
    for key, value in cfg.items():
        if key.endswith("_initializer"):
            continue
        if key == "dtype":
            out[key] = _dtype(value)
        elif key == "activation" and isinstance(value, str):
            out[key] = _activation(value)
        elif key not in allowed:
            if value not in (None, False, {}, [], 0):
                raise Unrebuildable(f"layer '{name}' sets {key}={value!r}, a Keras 3 setting tf-keras does not have")
        else:
            out[key] = _object(value, name, key)
    return out


def _activation(name: str):
    """A Keras 3 activation name as tf-keras computes it: the names tf-keras lacks, or computes differently
    (Keras 3's hard_sigmoid is relu6(x + 3) / 6, tf-keras's 0.2 x + 0.5), as TensorFlow functions."""
    import tensorflow as tf

    def hard_sigmoid(x):
        return tf.nn.relu6(x + 3.0) / 6.0

    def hard_silu(x):
        return x * hard_sigmoid(x)

    def leaky_relu(x):
        return tf.nn.leaky_relu(x, 0.2)

    def relu6(x):
        return tf.nn.relu6(x)

    def log_softmax(x):
        return tf.nn.log_softmax(x)

    table = {"relu6": relu6, "hard_sigmoid": hard_sigmoid, "hard_silu": hard_silu, "hard_swish": hard_silu,
             "silu": "swish", "leaky_relu": leaky_relu, "log_softmax": log_softmax}
    fn = table.get(name, name)
    if callable(fn):
        ACTIVATIONS[fn.__name__] = fn  # tfmot clones the model from its config: it must find them by name
    return fn


def _dtype(value) -> str | None:
    if isinstance(value, dict):  # Keras 3 DTypePolicy {"class_name": "DTypePolicy", "config": {"name": ...}}
        return value.get("config", {}).get("name")
    return value


def _object(value, name: str, key: str):
    """A serialized Keras object (regularizer, constraint, activation) in the form tf-keras reads."""
    if isinstance(value, dict) and "class_name" in value and "config" in value:
        module = value.get("module") or ""
        if module and not module.startswith("keras"):
            raise Unrebuildable(f"layer '{name}' uses a custom {key} ({value['class_name']} from {module})")
        return {"class_name": value["class_name"], "config": value["config"]}
    return value


def copy_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Set each rebuilt layer's weights to the original layer's (matched by name, checked by shape)."""
    for layer in model.layers:
        given = weights.get(layer.name, [])
        have = layer.get_weights()
        if len(given) != len(have) or any(a.shape != b.shape for a, b in zip(given, have)):
            raise Unrebuildable(f"layer '{layer.name}' ({type(layer).__name__}) holds its weights differently in "
                                f"tf-keras ({[w.shape for w in have]} vs {[w.shape for w in given]} in Keras 3)")
        if given:
            layer.set_weights(given)


def load_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """``{layer name: [weights]}`` from the parent's npz (keys 'name:index')."""
    out: dict[str, list] = {}
    with np.load(path) as npz:
        for key in sorted(npz.files, key=lambda k: (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1]))):
            out.setdefault(key.rsplit(":", 1)[0], []).append(npz[key])
    return out


# -- the job ------------------------------------------------------------------------------------------
class _ChildContext(Context):
    """Stop also when the worker that started this process has gone (killed by a timeout)."""

    parent: int = 0

    def should_stop(self) -> bool:
        return super().should_stop() or (self.parent != 0 and os.getppid() != self.parent)


def _data(spec: dict | None):
    if spec is None:
        return None
    import datasets

    from ...data import Data

    ds = datasets.load_from_disk(spec["path"]).with_format("numpy")
    return Data(ds, spec["input_names"], spec["label_name"], spec["fingerprint"])


def run(job: dict) -> dict:
    import tensorflow as tf
    import tf_keras as keras2

    from ...quiet import quiet
    from .train import fit, input_order, objective

    with quiet():
        import tensorflow_model_optimization as tfmot
    ctx = _ChildContext(Path(job["workdir"]), seed=job["seed"], progress=_path(job["progress"]),
                        stop_flag=_path(job["stop_flag"]))
    ctx.parent = job["parent_pid"]
    floats = rebuild(job["model"], keras2)
    copy_weights(floats, load_weights(Path(job["weights"])))
    _check_same(floats, np.load(job["sample"]))
    try:
        with quiet(), tfmot.quantization.keras.quantize_scope(ACTIVATIONS):
            model = tfmot.quantization.keras.quantize_model(floats)
    except Exception as exc:  # noqa: BLE001  (tfmot names the layer it cannot quantize)
        hint = (" (an op applied to tensors, e.g. x + 3.0; tfmot quantizes Keras layers only: use "
                "keras.layers.Add and the like)" if "TFOpLambda" in str(exc) else _activation_hint(floats, exc))
        raise CandidateError(f"tensorflow-model-optimization cannot quantize this model: "
                             f"{one_line(exc, 300, with_type=False).rstrip('.')}{hint}.") from exc
    data = _data(job["train"])
    settings = TrainSettings(**job["settings"])
    loss, target, how = objective(floats, data, input_order(floats, data.input_names))
    report = fit(model, data, loss, settings, ctx, keras=keras2, what="qat", target=target)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    from .convert import convert

    Path(job["out"]).write_bytes(convert(conv, "qat int8"))
    return {"report": vars(report), "how": how.replace("the original model", "the float model")}


def _activation_hint(model, exc) -> str:
    """tfmot refuses an activation without naming the layer: name it."""
    if "activations" not in str(exc):
        return ""
    known = {"softmax", "sigmoid", "tanh", "gelu", "linear", "relu", "swish"}
    for layer in model.layers:
        act = getattr(getattr(layer, "activation", None), "__name__", None)
        if act is not None and act not in known:
            return (f" (layer '{layer.name}' uses activation '{act}'; tfmot's default int8 scheme takes "
                    f"{', '.join(sorted(known))})")
    return ""


def _check_same(model, sample) -> None:
    x = [sample[k] for k in sorted(k for k in sample.files if k.startswith("x"))]
    want = sample["y"]
    got = np.asarray(model(x[0] if len(x) == 1 else x, training=False))
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got.reshape(want.shape) - want).max()) if got.size == want.size else float("inf")
    if not diff <= SAME_OUTPUTS_ATOL * scale:
        raise Unrebuildable(f"the tf-keras rebuild does not compute what the Keras 3 model computes (largest "
                            f"output difference {diff:.3g})")


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None


def main(argv: list[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    try:
        result = {"ok": True, **run(job)}
    except Exception as exc:  # noqa: BLE001  (the parent re-raises it as the same kind of error)
        kind = ("stopped" if isinstance(exc, TrainingStopped) else "skip" if isinstance(exc, SkipCandidate)
                else "rebuild" if isinstance(exc, Unrebuildable) else
                "candidate" if isinstance(exc, CandidateError) else "crash")
        result = {"ok": False, "kind": kind, "message": one_line(exc, 600, with_type=kind == "crash")}
    Path(job["result"]).write_text(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
