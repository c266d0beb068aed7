"""Mixed precision and per-layer sensitivity on the torch backend (PT2E, XNNPACKQuantizer, ExecuTorch .pte).

The model: a digits MLP whose first Linear reads an input with one feature scaled up 400x (the weight column
scaled down to match, so the float function is unchanged). One per-tensor int8 scale for that input wipes
out every other feature, so the first layer is the one layer int8 breaks, and keeping it float repairs it.
"""
import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # converts real models (the fast tier: pytest -m "not slow")

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")
pytest.importorskip("torchao")

import nbopt  # noqa: E402
from nbopt import data as nbdata  # noqa: E402
from nbopt.backends import get_backend  # noqa: E402
from nbopt.backends.base import Artifact  # noqa: E402
from nbopt.evaluator import LatencySettings  # noqa: E402

FAST = dict(measure_memory=False, progress=False, executor="inline",
            latency=LatencySettings(warmup=1, min_runs=3, min_seconds=0.0))
SENSITIVE = "0"  # the first Linear of the Sequential: the one reading the outlier feature


@pytest.fixture(scope="module")
def outlier():
    """(model, xtr, ytr, xval, yval): a digits MLP trained in-test, its first layer fed an outlier feature."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    xtr, xval, ytr, yval = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(20):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    k, scale = int(np.argmax(xtr.mean(0))), 400.0  # the busiest pixel, so the outlier is there in most examples
    with torch.no_grad():
        model[0].weight[:, k] /= scale
    boost = np.ones(64, np.float32)
    boost[k] = scale
    return model.eval(), xtr * boost, ytr, xval * boost, yval


@pytest.fixture(scope="module")
def prepared(outlier):
    model, xtr, ytr, xval, yval = outlier
    backend = get_backend("torch")
    calib = nbdata.load((xtr[:256], ytr[:256]), role="calib")
    return backend, backend.prepare(model, nbdata.load((xval, yval), role="eval")), calib


def test_sensitivity_ranks_the_outlier_layer_first_and_is_cached(prepared):
    from nbopt.backends.torch.mixed import cache_of, session

    backend, prep, calib = prepared
    assert backend.supports_sensitivity
    assert backend.sensitivity_cost(prep, calib, mode="static") == (False, 3)
    df = backend.sensitivity(prep, calib, mode="static")
    assert len(list(prep.dir.glob("torch_sensitivity_static_*.json"))) == 1  # the prepared model's own folder
    assert list(df.columns) == ["node", "op_type", "params", "rel_error", "cosine", "max_abs_diff", "rank", "error"]
    assert list(df["node"])[0] == SENSITIVE and list(df["rank"]) == [1, 2, 3]
    assert df["error"].isna().all() and set(df["op_type"]) == {"Linear"}
    # quantizing that layer alone moves the output far more than any other layer does
    assert df["rel_error"].iloc[0] > 10 * df["rel_error"].iloc[1:].max()
    assert df["cosine"].iloc[0] < df["cosine"].iloc[1:].min()
    sess = session(prep, calib)
    built = dict(sess.stats)
    assert built["calibrated"] == 0 and built["filled"] == 3  # every layer's observers came from the one pass
    # cached in memory: the second call builds nothing
    assert backend.sensitivity_cost(prep, calib, mode="static") == (True, 3)
    again = backend.sensitivity(prep, calib, mode="static")
    assert sess.stats == built and again.equals(df)
    # cached on disk: a copy in another process (no in-memory cache) reads the file, measures nothing
    copy = pickle.loads(pickle.dumps(prep))
    cache_of(copy).clear()
    assert backend.sensitivity_cost(copy, calib, mode="static") == (True, 3)
    from_disk = backend.sensitivity(copy, calib, mode="static")
    assert not any(k[0] == "session" for k in cache_of(copy))
    assert list(from_disk["node"]) == list(df["node"])
    assert np.allclose(from_disk["rel_error"], df["rel_error"])
    # another calibration set is another measurement
    other = nbdata.load(calib.example(128)["input"], role="calib")
    assert backend.sensitivity_cost(prep, other, mode="static")[0] is False


def test_filled_observers_equal_a_real_calibration(prepared):
    """The shortcut (observers loaded from the one calibration pass) gives the module int8-static builds."""
    from nbopt.backends.torch.mixed import session
    from nbopt.backends.torch.quant import module_quantizer, pt2e_static, xnnpack_config

    backend, prep, calib = prepared
    sess = session(prep, calib)
    before = sess.stats["filled"]
    for per_channel in (True, False):
        filled = sess.quantize(module_quantizer(xnnpack_config(per_channel, "histogram")), dynamic=False)
        real, _ = pt2e_static(prep.module, prep.args, calib, prep.input_names, per_channel, "histogram")
        np.testing.assert_allclose(sess.run(filled), sess.run(real), rtol=0, atol=1e-6)
    assert sess.stats["filled"] == before + 2


def _resnet_ish():
    """Conv+BatchNorm+ReLU, residual adds, a pool and a Linear (random weights): folded batch norms, fused
    ReLUs and observers PT2E shares between tensors (the pool's input and output)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), Block(16), Block(16),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_convolutions_with_batch_norm_are_measured_and_filled_exactly(digits):
    from nbopt.backends.torch.mixed import session
    from nbopt.backends.torch.quant import module_quantizer, pt2e_static, xnnpack_config

    xtr, ytr, xval, yval = digits
    backend = get_backend("torch")
    calib = nbdata.load((xtr[:128], ytr[:128]), role="calib")
    prep = backend.prepare(_resnet_ish(), nbdata.load((xval[:32], yval[:32]), role="eval"))
    df = backend.sensitivity(prep, calib, mode="static")
    # every conv (its ReLU a sibling module, its batch norm folded in) and the Linear measured alone
    assert set(df["node"]) == {"0", "3.conv", "4.conv", "7"} and df["error"].isna().all()
    assert (df["rel_error"] > 0).all()
    sess = session(prep, calib)
    assert sess.stats["calibrated"] == 0
    filled = sess.quantize(module_quantizer(xnnpack_config(True, "histogram")), dynamic=False)
    real, _ = pt2e_static(prep.module, prep.args, calib, prep.input_names, True, "histogram")
    np.testing.assert_allclose(sess.run(filled), sess.run(real), rtol=0, atol=1e-6)
    assert sess.stats["calibrated"] == 0


def _rows(study, recipe: str, key: str) -> dict:
    """{params[key]: row} of the torch rows of ``recipe`` (every row's params are complete)."""
    res = study.results
    res = res[(res["backend"] == "torch") & (res["recipe"] == recipe)]
    return {r["params"][key]: r for r in res.to_dict("records")}


def test_mixed_precision_keeps_the_sensitive_layer_and_beats_int8_static(outlier, tmp_path):
    model, xtr, ytr, xval, yval = outlier
    recipes = ["int8-static", {"int8-static": {"calibration": "minmax"}},
               {"mixed-precision": {"mode": "static", "keep_float": 1}},
               {"mixed-precision": {"mode": "static", "max_size_growth": 2.0}}]
    study = nbopt.optimize(model, calib=(xtr[:256], ytr[:256]), eval=(xval, yval), recipes=recipes,
                           backends=["torch"], store=tmp_path / "store", **FAST)
    statics, mixed = _rows(study, "int8-static", "calibration"), _rows(study, "mixed-precision", "keep_float")
    for row in [*statics.values(), *mixed.values()]:
        assert row["status"] == "ok", (row["recipe"], row["params"], row["error"])
    # int8-static's default calibration on torch is the XNNPACK quantizer's own (histogram observers); the
    # row asked for minmax gets minmax
    assert set(statics) == {"histogram", "minmax"}
    static, minmax = statics["histogram"], statics["minmax"]
    assert "histogram observers" in static["notes"] and "minmax observers" in minmax["notes"]
    fixed, auto = mixed[1], mixed["auto"]
    # keep_float=1 keeps exactly the outlier layer float, and that repairs what int8 broke
    assert fixed["kept_float"] == 1 and f"in float ({SENSITIVE})" in fixed["notes"]
    assert "2/3 Linear (int8, rest fp32)" in fixed["quantized"]
    assert fixed["accuracy"] >= static["accuracy"]
    assert "scored by the study's metric (accuracy) on calibration data" in fixed["notes"]
    assert fixed["format"] == "pte" and fixed["size_bytes"] > static["size_bytes"]  # float weights cost bytes
    # 'auto' searched: the .pte loads and runs, and the notes say what it kept and how many trials
    assert auto["format"] == "pte" and auto["artifact_path"].endswith(".pte")
    runner = get_backend("torch").load(Artifact(auto["artifact_path"], "pte"))
    out = runner({"input": xval[:1]})
    assert out.shape == (1, 10) and np.isfinite(out).all()
    assert "mixed precision (static, searched)" in auto["notes"] and "trials" in auto["notes"]
    # the budget allows keeping the outlier layer, and keeping it helps: the search keeps it (first named)
    assert auto["kept_float"] >= 1 and f"in float ({SENSITIVE}" in auto["notes"]
    assert auto["accuracy"] >= static["accuracy"]


def test_dynamic_mixed_precision_needs_per_channel_weights(outlier, tmp_path):
    """XNNPACK's dynamic int8 takes per-channel weights only: per_channel=False is a skipped row saying so."""
    model, xtr, ytr, xval, yval = outlier
    recipes = [{"mixed-precision": {"mode": "dynamic", "per_channel": False}}]
    study = nbopt.optimize(model, calib=(xtr[:128], ytr[:128]), eval=(xval[:64], yval[:64]), recipes=recipes,
                           backends=["torch"], store=tmp_path / "store", **FAST)
    row = _rows(study, "mixed-precision", "mode")["dynamic"]
    assert row["status"] == "skipped" and "per-channel weights only" in row["error"]
