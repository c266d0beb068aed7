"""TFLite mixed precision and per-layer sensitivity on a Keras model with one planted sensitive layer.

A digits MLP is trained in the test on 64 flat features, one of which (a live pixel) comes in units
1000x larger, with the first layer's weights for it 1000x smaller: the float function is the same as on
the plain data, but the model's int8 input scale must cover that feature, which crushes the other 63.
Only the first layer reads the input, so keeping that one layer float repairs int8: sensitivity must
rank it first and mixed precision must keep it in float.

(An outlier in a *hidden* activation is different on TFLite: full-integer int8 quantizes that tensor
both as the producer's output and as the consumer's input, so both layers must stay float.)
"""
from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # converts and runs real models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import nbopt  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.backends.tflite.backend import TFLiteBackend  # noqa: E402
from nbopt.data import load  # noqa: E402
from nbopt.errors import NboptError  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

COLUMNS = ["node", "op_type", "params", "rel_error", "cosine", "max_abs_diff", "rank", "error"]
SCALE = 1000.0


@pytest.fixture(scope="module")
def digits():
    """Flat digits features (N, 64), one live pixel x SCALE; (train X, y, held-out X, y)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype("float32")
    y = d.target.astype("int64")
    idx = np.random.default_rng(0).permutation(len(X))
    X = X[idx]
    X[:, int(X[:1400].std(0).argmax())] *= SCALE  # the widest-spread pixel: an outlier that matters
    return X[:1400], y[idx[:1400]], X[1400:], y[idx[1400:]]


@pytest.fixture(scope="module")
def outlier(digits):
    """(model, name of the planted sensitive layer): trained on plain features, then the first layer's
    weights for the scaled pixel divided by SCALE, so the function on the scaled data is the same."""
    Xtr, ytr, _, _ = digits
    pixel = int(Xtr.std(0).argmax())
    plain = Xtr.copy()
    plain[:, pixel] /= SCALE
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu", name="first"),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(plain, ytr, epochs=15, batch_size=32, verbose=0)
    first = model.get_layer("first")
    w, b = first.get_weights()
    w[pixel] /= SCALE
    first.set_weights([w, b])
    return model, "first"


@pytest.fixture(scope="module")
def data(digits):
    Xtr, ytr, Xval, yval = digits
    return load((Xtr[:300], ytr[:300])), load((Xval, yval))


@pytest.fixture(scope="module")
def backend():
    return TFLiteBackend()


@pytest.fixture(scope="module")
def prepared(backend, outlier, data):
    return backend.prepare(outlier[0], data[1])


def _names(text: str, layer: str) -> bool:
    """True if ``text`` names the Keras layer ``layer`` (the converter's names: 'sequential_1/first_1/MatMul')."""
    return re.search(rf"/{layer}(_\d+)?/", text) is not None


def _accuracy(backend, art, ev) -> float:
    runner = backend.load(art)
    inputs, labels = next(ev.batches(len(ev)))
    return float((runner(inputs).argmax(1) == labels).mean())


def test_sensitivity_ranks_the_planted_layer_first_and_is_cached(backend, prepared, data):
    calib, _ = data
    assert backend.supports_sensitivity
    assert backend.sensitivity_cost(prepared, calib) == (False, 3)  # 3 Dense
    t0 = time.perf_counter()
    df = backend.sensitivity(prepared, calib)
    first = time.perf_counter() - t0
    assert list(df.columns) == COLUMNS and len(df) == 3
    assert list(df["rank"]) == [1, 2, 3] and df["error"].isna().all()
    assert _names(df.loc[0, "node"], "first"), df[["node", "rel_error"]]
    assert df.loc[0, "rel_error"] > 2 * df.loc[1, "rel_error"]
    assert df.loc[0, "cosine"] < df.loc[1, "cosine"]
    assert set(df["op_type"]) == {"FULLY_CONNECTED"}
    assert df.loc[0, "params"] == 64 * 64 + 64
    # cached: in memory (same object) and on disk (a fresh prepared copy, as in a worker process)
    assert backend.sensitivity_cost(prepared, calib)[0]
    t0 = time.perf_counter()
    again = backend.sensitivity(prepared, calib)
    assert again.equals(df) and time.perf_counter() - t0 < first / 5
    prepared._cache.clear()
    assert backend.sensitivity_cost(prepared, calib)[0]  # the file under prepared.dir
    from_disk = backend.sensitivity(prepared, calib)
    assert list(from_disk["node"]) == list(df["node"])
    assert np.allclose(from_disk["rel_error"], df["rel_error"])
    with pytest.raises(NboptError, match="static"):
        backend.sensitivity(prepared, calib, mode="dynamic")


def test_dynamic_mode_is_a_skipped_row_and_static_is_the_default(backend):
    full, reason = backend.resolve(Recipe("mixed-precision", {"mode": "dynamic"}))
    assert "cannot do mode='dynamic'" in reason
    full, reason = backend.resolve(Recipe("mixed-precision"))
    assert reason == "" and full.params["mode"] == "static"


def test_keep_one_float_beats_int8_static_and_costs_little_more(backend, outlier, data, tmp_path):
    calib, ev = data
    fresh = backend.prepare(outlier[0], ev)  # nothing cached: the recipe calibrates and measures sensitivity
    t0 = time.perf_counter()
    static = backend.apply(fresh, backend.validate(Recipe("int8-static")), Context(tmp_path / "s", calib=calib))
    t_static = time.perf_counter() - t0
    t0 = time.perf_counter()
    mixed = backend.apply(fresh, backend.validate(Recipe("mixed-precision", {"keep_float": 1})),
                          Context(tmp_path / "m", calib=calib, metric="accuracy"))
    t_mixed = time.perf_counter() - t0
    print(f"\nint8-static {t_static:.2f} s, mixed-precision(keep_float=1) {t_mixed:.2f} s, "
          f"ratio {t_mixed / t_static:.2f}")
    assert mixed.info["kept_float"] == 1 and _names(mixed.notes, "first") and "kept 1" in mixed.notes
    assert "float32 1/3" in mixed.info["quantized"] and "int8 2/3" in mixed.info["quantized"]
    assert "the study's metric (accuracy)" in mixed.notes  # labelled calibration data: scored by accuracy
    base = backend.baseline(fresh, Context(tmp_path / "f"))
    acc_static, acc_mixed, acc_float = (_accuracy(backend, a, ev) for a in (static, mixed, base))
    print(f"accuracy float {acc_float:.3f}, int8-static {acc_static:.3f}, mixed {acc_mixed:.3f}")
    assert acc_mixed >= acc_static and acc_static < acc_float - 0.05  # the outlier does hurt plain int8
    assert acc_mixed > acc_float - 0.02
    assert static.size_bytes < mixed.size_bytes < base.size_bytes
    assert t_mixed < 3 * t_static


def test_keep_zero_is_plain_int8(backend, prepared, data, tmp_path):
    """keep_float=0 is the converter's own full-integer model: the same outputs as int8-static."""
    calib, ev = data
    inputs, _ = next(ev.batches(len(ev)))
    for pc in (True, False):
        art = backend.apply(prepared, backend.validate(Recipe("mixed-precision", {"keep_float": 0, "per_channel": pc})),
                            Context(tmp_path / f"z{pc}", calib=calib))
        assert art.info["kept_float"] == 0 and "kept no layer" in art.notes and "int8 3/3" in art.info["quantized"]
        assert f"per_channel={pc}" in art.notes and "tried both" not in art.notes
        static = backend.apply(prepared, backend.validate(Recipe("int8-static", {"per_channel": pc})),
                               Context(tmp_path / f"s{pc}", calib=calib))
        np.testing.assert_array_equal(backend.load(art)(inputs), backend.load(static)(inputs))
    with pytest.raises(NboptError, match="keep_float"):
        backend.apply(prepared, backend.validate(Recipe("mixed-precision", {"keep_float": -1})),
                      Context(tmp_path / "bad", calib=calib))


def test_auto_through_optimize(outlier, data, tmp_path):
    calib, ev = data
    study = nbopt.optimize(outlier[0], calib=calib, eval=ev, backends=["tflite"], executor="inline", progress=False,
                           measure_memory=False, store=tmp_path / "store",
                           recipes=["int8-static", {"mixed-precision": {"max_size_growth": 2.0}}])
    df = study.results.set_index("recipe")
    assert df.loc["mixed-precision", "status"] == "ok", df[["status", "error"]]
    row = df.loc["mixed-precision"]
    assert row["kept_float"] >= 1 and _names(row["notes"], "first")  # the planted layer is the first one kept
    assert "searched" in row["notes"] and "trial(s)" in row["notes"] and "accuracy" in row["notes"]
    assert row["accuracy"] >= df.loc["int8-static", "accuracy"]
    assert str(row["artifact_path"]).endswith(".tflite")
    print(f"\nbuild_seconds int8-static {df.loc['int8-static', 'build_seconds']:.2f}, mixed-precision(auto) "
          f"{row['build_seconds']:.2f}, ratio {row['build_seconds'] / df.loc['int8-static', 'build_seconds']:.2f}; "
          f"kept {row['kept_float']}; notes: {row['notes']}")
    assert study.sensitivity_table("tflite").loc[0, "node"].split(";")[0] in row["notes"]


def test_hidden_outlier_needs_both_ends_in_float(backend, digits, tmp_path):
    """A hidden activation outlier: full int8 quantizes that tensor as the producer's output and as the
    consumer's input, so both layers rank on top and 'auto' keeps both in float."""
    Xtr, ytr, Xval, yval = digits
    pixel = int(Xtr.std(0).argmax())
    plain_tr, plain_val = Xtr.copy(), Xval.copy()
    plain_tr[:, pixel] /= SCALE
    plain_val[:, pixel] /= SCALE
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu", name="wide"),
                              keras.layers.Dense(32, activation="relu", name="after"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(plain_tr, ytr, epochs=10, batch_size=32, verbose=0)
    wide, after = model.get_layer("wide"), model.get_layer("after")
    ch = int(keras.Model(model.inputs, wide.output).predict(plain_tr[:200], verbose=0).mean(0).argmax())
    (w, b), (w2, b2) = wide.get_weights(), after.get_weights()
    w[:, ch] *= SCALE
    b[ch] *= SCALE
    w2[ch] /= SCALE
    wide.set_weights([w, b])
    after.set_weights([w2, b2])
    calib, ev = load((plain_tr[:300], ytr[:300])), load((plain_val, yval))
    prep = backend.prepare(model, ev)
    top2 = list(backend.sensitivity(prep, calib)["node"][:2])
    assert sorted(n for n in ("wide", "after") if any(_names(t, n) for t in top2)) == ["after", "wide"], top2
    art = backend.apply(prep, backend.validate(Recipe("mixed-precision", {"max_size_growth": 2.0})),
                        Context(tmp_path / "auto", calib=calib, metric="accuracy"))
    assert art.info["kept_float"] >= 2 and _names(art.notes, "wide") and _names(art.notes, "after")
    static = backend.apply(prep, backend.validate(Recipe("int8-static")), Context(tmp_path / "s", calib=calib))
    acc_float = _accuracy(backend, backend.baseline(prep, Context(tmp_path / "f")), ev)
    acc_static, acc_mixed = _accuracy(backend, static, ev), _accuracy(backend, art, ev)
    print(f"\nhidden outlier: accuracy float {acc_float:.3f}, int8-static {acc_static:.3f}, mixed(auto, kept "
          f"{art.info['kept_float']}) {acc_mixed:.3f}")
    assert acc_static < acc_float - 0.05 and acc_mixed > acc_float - 0.02
