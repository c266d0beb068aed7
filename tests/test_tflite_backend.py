"""TFLite backend: a Keras CNN trained on sklearn digits inside the test, every recipe on the real .tflite."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # converts real models (the fast tier: pytest -m "not slow")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from nbopt.backends.base import Context  # noqa: E402
from nbopt.backends.tflite.backend import TFLiteBackend, TFLitePrepared
from nbopt.backends.tflite.runner import interpreter_class  # noqa: E402
from nbopt.backends.tflite.reports import delegate_report  # noqa: E402
from nbopt.data import load  # noqa: E402
from nbopt.errors import CandidateError, NboptError  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images / 16.0).astype("float32")[..., None]  # NHWC (N, 8, 8, 1)
    y = d.target.astype("int64")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    return X[idx[:1400]], y[idx[:1400]], X[idx[1400:]], y[idx[1400:]]


def _cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ])


@pytest.fixture(scope="module")
def digits():
    return _digits()


@pytest.fixture(scope="module")
def trained(digits):
    Xtr, ytr, _, _ = digits
    keras.utils.set_random_seed(0)
    model = _cnn()
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(Xtr, ytr, epochs=12, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def data(digits):
    Xtr, _, Xval, yval = digits
    return load(Xtr[:200]), load((Xval, yval))  # calibration from the training split, eval held out


@pytest.fixture(scope="module")
def backend():
    return TFLiteBackend()


@pytest.fixture(scope="module")
def prepared(backend, trained, data):
    return backend.prepare(trained, data[1])


def _ctx(tmp_path, calib=None, name="c"):
    return Context(workdir=tmp_path / name, calib=calib)


def _accuracy(outputs, labels):
    return float((np.asarray(outputs).argmax(1) == labels).mean())


def _runner_accuracy(backend, art, ev):
    runner = backend.load(art)
    outs = np.concatenate([runner(inputs) for inputs, _ in ev.batches(64)])
    return _accuracy(outs, ev.labels())


def _plain_interpreter_accuracy(path, X, y):
    """The artifact in the LiteRT interpreter, with no nbopt code in between (one example at a time)."""
    Interp, _ = interpreter_class()
    it = Interp(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    preds = []
    for x in X:
        x = x[None]
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            x = np.clip(np.round(x / scale) + zp, -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        preds.append(it.get_tensor(out["index"])[0].argmax())
    return float((np.array(preds) == y).mean())


def _direct_int8(model, Xcal, io="float"):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def rep():
        for x in Xcal:
            yield [x[None]]

    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io == "int8":
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


# ------------------------------------------------------------------------------------------------------
def test_int8_static_matches_the_converter_called_directly(backend, prepared, trained, data, digits, tmp_path):
    Xtr, _, Xval, yval = digits
    calib, ev = data
    art = backend.apply(prepared, backend.validate(Recipe("int8-static")), _ctx(tmp_path, calib))
    direct = tmp_path / "direct_int8.tflite"
    direct.write_bytes(_direct_int8(trained, Xtr[:200]))

    assert art.format == "tflite" and art.size_bytes == art.path.stat().st_size
    assert art.size_bytes == direct.stat().st_size
    ours = _plain_interpreter_accuracy(art.path, Xval, yval)
    theirs = _plain_interpreter_accuracy(direct, Xval, yval)
    assert ours == theirs
    # the accuracy nbopt's runner reports (batched) is the artifact's own accuracy
    assert _runner_accuracy(backend, art, ev) == pytest.approx(ours, abs=1e-9)
    assert ours > 0.85
    baseline = backend.baseline(prepared, _ctx(tmp_path, name="b"))
    assert art.size_bytes < baseline.size_bytes / 2.5


def test_int8_io_runner_quantizes_inputs_and_dequantizes_outputs(backend, prepared, trained, data, digits,
                                                                 tmp_path):
    Xtr, _, Xval, yval = digits
    calib, ev = data
    art = backend.apply(prepared, backend.validate(Recipe("int8-static", {"io": "int8"})), _ctx(tmp_path, calib))
    runner = backend.load(art)
    assert runner.inputs[0].dtype == np.int8 and runner.inputs[0].scale > 0
    out = runner({"input": Xval[:5]})
    assert out.dtype == np.float32 and out.shape == (5, 10)
    direct = tmp_path / "direct.tflite"
    direct.write_bytes(_direct_int8(trained, Xtr[:200], io="int8"))
    assert art.size_bytes == direct.stat().st_size
    acc = _runner_accuracy(backend, art, ev)
    assert acc == pytest.approx(_plain_interpreter_accuracy(direct, Xval, yval), abs=1e-9)
    float_acc = _accuracy(trained.predict(Xval, verbose=0), yval)
    assert acc > float_acc - 0.05


def test_other_recipes_shrink_the_file_and_keep_accuracy(backend, prepared, trained, data, tmp_path):
    calib, ev = data
    base = backend.baseline(prepared, _ctx(tmp_path, name="base"))
    base_acc = _runner_accuracy(backend, base, ev)
    assert base_acc == pytest.approx(_accuracy(trained.predict(ev.example(10_000)["input"], verbose=0),
                                               ev.labels()), abs=0.003)
    fp16 = backend.apply(prepared, backend.validate(Recipe("fp16")), _ctx(tmp_path, name="fp16"))
    dyn = backend.apply(prepared, backend.validate(Recipe("int8-dynamic")), _ctx(tmp_path, name="dyn"))
    a16 = backend.apply(prepared, backend.validate(Recipe("int8-static", {"activations": "int16"})),
                        _ctx(tmp_path, calib, name="a16"))
    assert fp16.size_bytes < 0.6 * base.size_bytes
    assert dyn.size_bytes < 0.4 * base.size_bytes
    assert a16.size_bytes < 0.4 * base.size_bytes
    assert "int16" in a16.notes
    for art in (fp16, dyn, a16):
        assert abs(_runner_accuracy(backend, art, ev) - base_acc) < 0.03


def test_prune_zeroes_weights_and_reports_compressed_size(backend, prepared, trained, data, tmp_path):
    _, ev = data
    before = [w.copy() for w in trained.get_weights()]
    base = backend.baseline(prepared, _ctx(tmp_path, name="base"))
    art = backend.apply(prepared, backend.validate(Recipe("prune-unstructured", {"amount": 0.6})),
                        _ctx(tmp_path, name="p"))
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights()))  # user model untouched
    assert art.info["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert art.info["size_compressed_bytes"] < 0.75 * base.info["size_compressed_bytes"]
    assert art.size_bytes == pytest.approx(base.size_bytes, rel=0.01)  # zeros do not shrink the raw file
    assert "no fine-tuning" in art.notes
    assert _runner_accuracy(backend, art, ev) > 0.3


def test_delegate_report(backend, prepared, data, tmp_path):
    calib, _ = data
    base = backend.baseline(prepared, _ctx(tmp_path, name="base"))
    q = backend.apply(prepared, backend.validate(Recipe("int8-static", {"io": "int8"})),
                      _ctx(tmp_path, calib, name="q"))
    for art in (base, q):
        path = art.info["delegate_report"]
        assert os.path.exists(path) and all(str(f) != path for f in art.files)  # not shipped, not counted
        report = delegate_report(art.path)
        assert json.loads(open(path).read())["summary"] == report["summary"] == art.info["delegates"]
        assert report["ops_total"] == len(report["ops"]) > 3
        assert {"CONV_2D", "FULLY_CONNECTED"} <= {r["op"] for r in report["ops"] if r["gpu"]}
        assert art.info["delegates"].startswith("GPU ")
    float_report, int_report = delegate_report(base.path), delegate_report(q.path)
    assert not float_report["int8_only"]["full_integer"] and "float" in base.info["delegates"]
    assert int_report["int8_only"]["full_integer"]
    assert {r["op"] for r in int_report["ops"] if r["op"] in ("CONV_2D", "FULLY_CONNECTED")}
    assert all(r["int8_only"] for r in int_report["ops"] if r["op"] in ("CONV_2D", "FULLY_CONNECTED"))
    # the Flatten's dynamic-batch shape arithmetic is what a GPU / Edge TPU would refuse
    assert "SHAPE" in int_report["int8_only"]["rejected_ops"]
    assert "SHAPE" in float_report["gpu"]["cpu_fallback_ops"]


def test_runner_batches_match_single_examples(backend, prepared, data, tmp_path):
    _, ev = data
    art = backend.baseline(prepared, _ctx(tmp_path))
    runner = backend.load(art)
    assert runner.max_batch is None and runner.threads >= 1
    x = ev.example(16)
    batched = runner(x)
    single = np.concatenate([runner({"input": x["input"][i:i + 1]}) for i in range(16)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


# -- other inputs ---------------------------------------------------------------------------------------
def test_savedmodel_tflite_file_and_subclassed_model(backend, trained, data, digits, tmp_path):
    calib, ev = data
    _, _, Xval, _ = digits
    sm = tmp_path / "saved"
    trained.export(str(sm), verbose=False)
    prep = backend.prepare(str(sm), ev)
    assert prep.kind == "saved_model"
    dyn = backend.apply(prep, backend.validate(Recipe("int8-dynamic")), _ctx(tmp_path, name="sm"))
    assert _runner_accuracy(backend, dyn, ev) > 0.85

    tfl = tmp_path / "given.tflite"
    tfl.write_bytes(prep.fp32)
    prep2 = backend.prepare(str(tfl), ev)
    base = backend.baseline(prep2, _ctx(tmp_path, name="t"))
    assert base.path.read_bytes() == tfl.read_bytes()
    assert backend.default_recipes(prep2) == []
    with pytest.raises(CandidateError, match="as it is"):
        backend.apply(prep2, backend.validate(Recipe("fp16")), _ctx(tmp_path, name="t2"))

    class Sub(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return self.inner(x) * 2.0

    sub = Sub(trained)
    prep3 = backend.prepare(sub, ev)
    art = backend.baseline(prep3, _ctx(tmp_path, name="sub"))
    np.testing.assert_allclose(backend.load(art)({"input": Xval[:8]}), 2.0 * trained.predict(Xval[:8], verbose=0),
                               rtol=1e-4, atol=1e-4)
    prune = backend.apply(prep3, backend.validate(Recipe("prune-unstructured")), _ctx(tmp_path, name="sp"))
    assert prune.info["sparsity"] == pytest.approx(0.5, abs=0.01)


# -- bad input: one clear error --------------------------------------------------------------------------
def test_layer_the_converter_rejects_gives_one_clear_error(backend, data):
    _, ev = data

    class Det(keras.layers.Layer):
        def call(self, x):
            return tf.linalg.det(x[..., 0])[:, None]

    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Dense(10)(Det()(inp)))
    with pytest.raises(NboptError, match="MatrixDeterminant") as err:
        backend.prepare(model, ev)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_calibration_data_of_the_wrong_shape_gives_one_clear_error(backend, prepared, digits, tmp_path):
    Xtr = digits[0]
    bad = load(Xtr[:50, :, :, 0])  # (N, 8, 8): the channel axis is missing
    with pytest.raises(NboptError, match=r"calibration data.*\(8, 8\).*\(8, 8, 1\)"):
        backend.apply(prepared, backend.validate(Recipe("int8-static")), _ctx(tmp_path, bad))
    nchw = load(np.transpose(Xtr[:50], (0, 3, 1, 2)))
    with pytest.raises(NboptError, match="NHWC"):
        backend.prepare(prepared.source, nchw)


def test_bad_recipe_parameters_and_missing_calibration(backend, prepared, tmp_path):
    with pytest.raises(NboptError, match="io"):
        backend.validate(Recipe("int8-static", {"io": "uint4"}))
    with pytest.raises(NboptError, match="calibration"):
        backend.apply(prepared, backend.validate(Recipe("int8-static")), _ctx(tmp_path))


def test_torch_model_goes_through_litert_torch_or_says_why(backend, data):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    nchw = load(np.zeros((4, 1, 8, 8), np.float32))
    try:
        import litert_torch  # noqa: F401
    except ImportError:
        with pytest.raises(CandidateError, match="litert-torch"):  # a failed row in a study, not a crash
            backend.prepare(net, nchw)
        assert TFLiteBackend.accepts(net)
        return
    prep = backend.prepare(net, nchw)
    assert isinstance(prep, TFLitePrepared) and prep.kind == "torch"
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    runner = TFLiteBackend().load(backend.baseline(prep, Context(workdir=__import__("pathlib").Path(
        __import__("tempfile").mkdtemp()))))
    np.testing.assert_allclose(runner({"input": x}), net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
