"""The user's objects are untouched: after optimize() returns, the model's mode, weights, buffers and hooks,
and the user's arrays, are exactly as they were (torch through the torch and onnx backends, Keras through
tflite)."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # real converters and runtimes

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nbopt  # noqa: E402
from nbopt.schema import OK  # noqa: E402


def _arrays(n=96, features=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x[:, :classes].argmax(1)).astype(np.int64)
    return x, y


def _same_arrays(x, y, x0, y0):
    assert x.flags.writeable and y.flags.writeable, "nbopt made the user's arrays read-only"
    assert x.dtype == x0.dtype and y.dtype == y0.dtype and x.shape == x0.shape and y.shape == y0.shape
    assert x.tobytes() == x0.tobytes() and y.tobytes() == y0.tobytes()


def test_torch_model_and_arrays_untouched(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Dropout(0.1), torch.nn.Linear(32, 4))
    with torch.no_grad():  # running stats that are not the defaults: an update would show
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    model.train()
    calls = []
    handle = model[0].register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    x, y = _arrays()
    x0, y0 = x.copy(), y.copy()
    state0 = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes0 = {name: m.training for name, m in model.named_modules()}
    hooks0 = {name: dict(m._forward_hooks) for name, m in model.named_modules()}

    study = nbopt.optimize(model, calib=(x, y), eval=(x, y), backends=["torch", "onnx"],
                           recipes=["fp16", "int8-dynamic"], store=tmp_path / "s", progress=False,
                           measure_memory=False)
    ok = study.results[study.results["status"] == OK]
    assert set(ok["backend"]) == {"torch", "onnx"}, study.results[["name", "status", "error"]]

    assert model.training is True
    assert {name: m.training for name, m in model.named_modules()} == modes0
    state = model.state_dict(keep_vars=True)
    assert list(state) == list(state0)
    for key, before in state0.items():
        after = state[key].detach()
        assert after.dtype == before.dtype and after.device == before.device, key
        assert torch.equal(after, before), f"{key} changed"  # bitwise: same dtype, exactly equal values
    assert int(model[1].num_batches_tracked) == int(state0["1.num_batches_tracked"])
    assert {name: dict(m._forward_hooks) for name, m in model.named_modules()} == hooks0
    n = len(calls)
    model(torch.from_numpy(x[:8]))  # the hook is still registered and still fires
    assert len(calls) == n + 1
    handle.remove()
    _same_arrays(x, y, x0, y0)


def test_keras_model_and_arrays_untouched(tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32), keras.layers.BatchNormalization(),
                              keras.layers.ReLU(), keras.layers.Dropout(0.1), keras.layers.Dense(4)])
    bn = model.layers[1]
    bn.moving_mean.assign(np.random.default_rng(1).normal(size=32).astype(np.float32))
    model.layers[0].trainable = False  # a mix of trainable flags, which must stay as set
    x, y = _arrays()
    x0, y0 = x.copy(), y.copy()
    weights0 = [w.copy() for w in model.get_weights()]
    trainable0 = [(model.trainable, *(layer.trainable for layer in model.layers))]
    names0 = [w.name for w in model.weights]

    study = nbopt.optimize(model, calib=(x, y), eval=(x, y), backends=["tflite"],
                           recipes=["fp16", "int8-dynamic"], store=tmp_path / "s", progress=False,
                           measure_memory=False)
    ok = study.results[study.results["status"] == OK]
    assert len(ok) == 3, study.results[["name", "status", "error"]]

    weights = model.get_weights()
    assert len(weights) == len(weights0) and [w.name for w in model.weights] == names0
    for before, after in zip(weights0, weights):
        assert after.dtype == before.dtype and after.tobytes() == before.tobytes()
    assert [(model.trainable, *(layer.trainable for layer in model.layers))] == trainable0
    _same_arrays(x, y, x0, y0)
