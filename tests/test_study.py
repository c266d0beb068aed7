"""The study engine on a real trained CNN: rows, sizes, budget cuts, the store, failures, bad input."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import nbopt  # noqa: E402
from nbopt.backends.torch import TorchBackend  # noqa: E402
from nbopt.errors import NboptError  # noqa: E402
from nbopt.pareto import pareto_mask  # noqa: E402

FAST = dict(measure_memory=False, progress=False)


@pytest.fixture(scope="module")
def swept(digits, digits_cnn, tmp_path_factory):
    xtr, ytr, xval, yval = digits
    store = tmp_path_factory.mktemp("store")
    events = []
    study = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store,
                           recipes=["int8-dynamic", "int8-static", {"prune-unstructured": {"amount": 0.5}}],
                           callbacks=[lambda e, p: events.append((e, p))], **FAST)
    return study, store, events


def test_rows_statuses_and_columns(swept):
    study, _, events = swept
    df = study.results
    assert list(df["recipe"]) == ["baseline", "int8-dynamic", "int8-static", "prune-unstructured"]
    assert (df["status"] == "ok").all(), df[["name", "error"]]
    for col in ("name, backend, recipe, params, format, status, error, size_bytes, size_ratio, accuracy, "
                "accuracy_drop, latency_ms, peak_memory_mb, artifact_path").split(", "):
        assert col in df.columns
    assert df.loc[0, "size_ratio"] == 1.0 and df.loc[0, "accuracy_drop"] == 0.0
    assert (df["latency_ms"] > 0).all() and (df["latency_p90_ms"] >= df["latency_ms"]).all()
    assert (df["threads"] >= 1).all() and (df["batch_size"] == 1).all()
    kinds = [e for e, _ in events]
    assert kinds[0] == "study_started" and kinds[-1] == "study_finished"
    assert kinds.count("candidate_finished") == 4


def test_size_is_bytes_on_disk(swept):
    study, _, _ = swept
    for cand in study.candidates:
        files = [Path(f) for f in cand.row["artifact_files"]]
        assert cand.row["size_bytes"] == sum(f.stat().st_size for f in files)


def test_int8_is_smaller_and_keeps_accuracy(swept):
    study, _, _ = swept
    df = study.results.set_index("recipe")
    assert df.loc["baseline", "accuracy"] > 0.9  # a real trained model, not random weights
    assert df.loc["int8-static", "size_ratio"] < 0.5
    assert abs(df.loc["int8-static", "accuracy_drop"]) < 0.05
    assert df.loc["prune-unstructured", "size_compressed_bytes"] < df.loc["prune-unstructured", "size_bytes"]


def test_pareto_matches_brute_force(swept):
    study, _, _ = swept
    ok = study.results[study.results["status"] == "ok"]
    pts = ok[["size_bytes", "accuracy"]].to_numpy(float)
    expected = {name for name, p in zip(ok["name"], pts)
                if not any((q[0] <= p[0] and q[1] >= p[1]) and (q[0] < p[0] or q[1] > p[1]) for q in pts)}
    assert set(study.pareto()["name"]) == expected
    assert pareto_mask(pts, ["min", "max"]).sum() == len(expected)


def test_best_respects_budget(swept):
    study, _, _ = swept
    best = study.best(max_accuracy_drop=0.02)
    df = study.results
    within = df[(df["status"] == "ok") & (df["accuracy_drop"] <= 0.02)]
    assert best.row["size_bytes"] == within["size_bytes"].min()


def test_rerun_reuses_every_candidate(swept, digits, digits_cnn):
    study, store, _ = swept
    xtr, ytr, xval, yval = digits
    events = []
    again = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store,
                           recipes=["int8-dynamic", "int8-static", {"prune-unstructured": {"amount": 0.5}}],
                           callbacks=[lambda e, p: events.append(p)], **FAST)
    started = [p for p in events if "cached" in p]
    assert len(started) == 4 and all(p["cached"] for p in started)
    cols = ["name", "size_bytes", "accuracy", "latency_ms"]
    assert again.results[cols].equals(study.results[cols])


def test_export_writes_artifact_and_card(swept, tmp_path):
    study, _, _ = swept
    cand = next(c for c in study.candidates if c.row["recipe"] == "int8-static")
    out = cand.export(tmp_path / "model_int8")
    assert out.exists() and out.stat().st_size == cand.row["size_bytes"]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["recipe"] == "int8-static" and card["metrics"]["accuracy"] == cand.row["accuracy"]
    assert card["data"]["eval_fingerprint"] and "torch" in card["versions"]


def test_failing_candidate_does_not_stop_the_sweep(digits, digits_cnn, store, monkeypatch):
    xtr, ytr, xval, yval = digits
    spec = TorchBackend.handlers["int8-dynamic"]

    def broken(*args):
        raise RuntimeError("kernel exploded\nwith a long traceback")

    monkeypatch.setitem(TorchBackend.handlers, "int8-dynamic", dataclasses.replace(spec, handler=broken))
    study = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store,
                           recipes=["int8-dynamic", {"prune-unstructured": {"amount": 0.3}}], **FAST)
    df = study.results.set_index("recipe")
    assert df.loc["int8-dynamic", "status"] == "failed"
    assert df.loc["int8-dynamic", "error"] == "RuntimeError: kernel exploded"
    assert df.loc["prune-unstructured", "status"] == "ok"


def test_budget_cuts_the_pruning_grid(digits, digits_cnn, store):
    xtr, ytr, xval, yval = digits
    study = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store, max_accuracy_drop=0.01,
                           recipes=[{"prune-unstructured": {"amount": [0.97, 0.2, 0.99]}}], **FAST)
    rows = study.results.set_index("name")
    assert list(study.results["params"].iloc[1:]) == [{"amount": 0.2}, {"amount": 0.97}, {"amount": 0.99}]
    assert rows.loc["torch:prune-unstructured(amount=0.97)", "accuracy_drop"] > 0.01
    skipped = rows.loc["torch:prune-unstructured(amount=0.99)"]
    assert skipped["status"] == "skipped" and "budget" in skipped["error"]


def test_interrupt_keeps_finished_rows(digits, digits_cnn, store):
    xtr, ytr, xval, yval = digits

    def interrupt(event, payload):
        if event == "candidate_started" and payload["recipe"] == "int8-static":
            raise KeyboardInterrupt

    study = nbopt.Study(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store,
                        recipes=["int8-dynamic", "int8-static"], **FAST)
    study._callbacks.append(interrupt)  # noqa: SLF001  (callbacks swallow exceptions; interrupts pass)
    with pytest.warns(UserWarning, match="interrupted"):
        study.run()
    assert study.stopped and list(study.results["recipe"]) == ["baseline", "int8-dynamic"]
    again = nbopt.Study(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store, recipes=["int8-dynamic"], **FAST)
    seen = []
    again.on(lambda e, p: seen.append(p.get("cached")))
    again.run()
    assert seen.count(True) == 2  # both finished rows came back from the store


def test_stop_ends_after_running_candidate(digits, digits_cnn, store):
    xtr, ytr, xval, yval = digits
    study = nbopt.Study(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store,
                        recipes=["int8-dynamic", "int8-weight-only", "fp16"], **FAST)
    study.on(lambda e, p: study.stop() if e == "candidate_finished" and p["row"]["recipe"] == "int8-dynamic" else None)
    study.run()
    assert study.stopped and list(study.results["recipe"]) == ["baseline", "int8-dynamic"]


def test_peak_memory_is_measured_in_a_fresh_process(digits, digits_cnn, store):
    xtr, ytr, xval, yval = digits
    study = nbopt.optimize(digits_cnn, eval=(xval[:50], yval[:50]), store=store, recipes=[], progress=False)
    mem = study.results.loc[0, "peak_memory_mb"]
    assert mem is not None and 0 < mem < 2000


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="not a model"), "does not exist"),
    (dict(model=object()), "cannot optimize a object"),
    (dict(eval=None), "No eval data"),
    (dict(eval="/no/such/file.csv"), "does not exist"),
    (dict(eval=np.zeros((0, 1, 8, 8), np.float32)), "no examples"),
    (dict(eval=(np.zeros((5, 64), np.float32), np.zeros(5, np.int64))), "input"),
    (dict(eval=(np.zeros((5, 1, 8, 8), np.float32), np.zeros(4, np.int64))), "5 inputs but 4 labels"),
    (dict(metric="acc"), "known metrics: accuracy"),
    (dict(recipes=["int9-magic"]), "Unknown recipe 'int9-magic'; known recipes:.*int8-static"),
    (dict(backends=["coreml"]), "known backends: torch, onnx, tflite"),
    (dict(recipes=[{"prune-structured": {"amount": 1.5}}]), "amount' is 1.5; it must lie between"),
    (dict(recipes=[{"int8-static": {"colour": "red"}}]), "has no parameter 'colour'"),
    (dict(metric="accuracy", eval=np.zeros((5, 1, 8, 8), np.float32)), "needs labels"),
    (dict(calib=np.zeros((5, 64), np.float32)), r"Calibration examples of 'input' have shape \(64,\)"),
])
def test_bad_input_is_one_clear_error(kwargs, message, digits, digits_cnn, store):
    xtr, ytr, xval, yval = digits
    args = dict(model=digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store, recipes=["int8-dynamic"], **FAST)
    args.update(kwargs)
    with pytest.raises(NboptError, match=message) as err:
        nbopt.Study(**args)
    assert "\n" not in str(err.value)


def test_plot_marks_the_front_and_report_is_self_contained(swept, tmp_path):
    study, _, _ = swept
    fig = study.plot()
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert len(front.x) == len(study.pareto()) and front.line.shape == "hv"
    assert any(t.name == "torch baseline" for t in fig.data)
    page = study.to_html(tmp_path / "report.html").read_text()
    assert '<script src="http' not in page and "Plotly.newPlot" in page  # plotly.js inlined: works offline
    assert all(name in page for name in study.results["name"])


def test_import_nbopt_stays_light():
    import subprocess
    import sys

    code = ("import sys, nbopt; nbopt.optimize; nbopt.Study; import nbopt.data; "
            "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'executorch') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_torch_and_onnx_on_one_plot(digits, digits_cnn, store):
    pytest.importorskip("onnxruntime")
    xtr, ytr, xval, yval = digits
    study = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store, backends=["torch", "onnx"],
                           recipes=["int8-dynamic"], **FAST)
    df = study.results
    assert set(df["backend"]) == {"torch", "onnx"} and (df["status"] == "ok").all(), df[["name", "error"]]
    assert set(df["format"]) == {"pte", "onnx"}
    for backend, group in df.groupby("backend"):  # ratios and drops are against the same backend's baseline
        base = group[group["recipe"] == "baseline"].iloc[0]
        cand = group[group["recipe"] == "int8-dynamic"].iloc[0]
        assert cand["size_ratio"] == pytest.approx(cand["size_bytes"] / base["size_bytes"])
    names = {t.name for t in study.plot().data}
    assert {"torch", "onnx", "torch baseline", "onnx baseline"} <= names


def test_backend_that_cannot_take_the_model_is_a_failed_row(digits, digits_cnn, store):
    pytest.importorskip("tensorflow")
    import importlib.util

    if importlib.util.find_spec("litert_torch") is not None:
        pytest.skip("litert-torch is installed: the torch model converts to TFLite")
    xtr, ytr, xval, yval = digits
    study = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store, backends=["torch", "tflite"],
                           recipes=["int8-dynamic"], **FAST)
    rows = study.results.set_index("name")
    assert rows.loc["torch:int8-dynamic", "status"] == "ok"
    assert rows.loc["tflite:baseline", "status"] == "failed" and "litert-torch" in rows.loc["tflite:baseline", "error"]
    assert rows.loc["tflite:int8-dynamic", "status"] == "skipped"
