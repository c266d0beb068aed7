"""The study engine: rows, sizes, budget cuts, the store, failures, bad input, the front, the report.

Fast tier: the engine on the fake in-memory backend (``fake_backend.py``), whose artifacts are real .npz
files measured like any other. Slow tier (the end of this file): what needs a real converter and runtime.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import nbopt
from fake_backend import FakeBackend, FakeModel, FakeRunner, WideFakeBackend
from nbopt.errors import CandidateError, NboptError
from nbopt.evaluator import LatencySettings
from nbopt.pareto import pareto_mask

QUICK = LatencySettings(warmup=1, min_runs=5, min_seconds=0.0)  # still measured, with fewer runs
FAST = dict(measure_memory=False, progress=False, latency=QUICK)
SWEEP = ["fp16", "int8-dynamic", "int8-static", {"prune-unstructured": {"amount": 0.5}},
         {"int8-static": {"calibration": "entropy"}}]  # the fake cannot do entropy: a skipped row


def brute_front(points, senses):
    signs = np.array([1.0 if s == "min" else -1.0 for s in senses])
    cost = np.asarray(points, float) * signs
    return [not any((q <= p).all() and (q < p).any() for q in cost) for p in cost]


@pytest.fixture(scope="module")
def swept(fake_model, fake_data, tmp_path_factory):
    xtr, ytr, xval, yval = fake_data
    store = tmp_path_factory.mktemp("store")
    events = []
    study = nbopt.optimize(fake_model, calib=(xtr, ytr), eval=(xval, yval), store=store, backends=["fake"],
                           recipes=SWEEP, callbacks=[lambda e, p: events.append((e, p))], progress=False, latency=QUICK)
    return study, store, events


@pytest.fixture
def args(fake_model, fake_data, store):
    """Study keywords for a fresh fake study in this test's own store."""
    xtr, ytr, xval, yval = fake_data
    return dict(model=fake_model, calib=(xtr, ytr), eval=(xval, yval), store=store, backends=["fake"], **FAST)


def started(events):
    return [p for e, p in events if e == "candidate_started"]


# ------------------------------------------------------------------------------------------ rows
def test_rows_statuses_and_columns(swept):
    study, _, events = swept
    df = study.results
    assert list(df["recipe"]) == ["baseline", "fp16", "int8-dynamic", "int8-static", "prune-unstructured",
                                  "int8-static"]
    assert list(df["status"]) == ["ok"] * 5 + ["skipped"], df[["name", "error"]]
    assert df.loc[5, "name"] == "fake:int8-static(calibration=entropy)"
    assert "cannot do calibration='entropy'" in df.loc[5, "error"] and pd_isnull(df.loc[5, "size_bytes"])
    assert df.loc[2, "params"] == {"per_channel": True}  # defaults filled in
    for col in ("name, backend, recipe, params, format, status, error, size_bytes, size_ratio, accuracy, "
                "accuracy_drop, latency_ms, peak_memory_mb, artifact_path").split(", "):
        assert col in df.columns
    ok = df[df["status"] == "ok"]
    assert df.loc[0, "size_ratio"] == 1.0 and df.loc[0, "accuracy_drop"] == 0.0
    assert (ok["latency_ms"] > 0).all() and (ok["latency_p90_ms"] >= ok["latency_ms"]).all()
    assert (ok["threads"] == 1).all() and (ok["batch_size"] == 1).all() and (ok["format"] == "npz").all()
    assert ok["peak_memory_mb"].notna().all() and (ok["peak_memory_mb"] >= 0).all()  # measured in the probe
    kinds = [e for e, _ in events]
    assert kinds[0] == "study_started" and events[0][1] == {"total": 6}
    assert kinds[-1] == "study_finished" and events[-1][1] == {"stopped": False}
    assert kinds.count("candidate_started") == kinds.count("candidate_finished") == 6
    assert "candidate_failed" not in kinds


def test_size_is_bytes_on_disk(swept):
    study, store, _ = swept
    ok = [c for c in study.candidates if c.row["status"] == "ok"]
    assert len(ok) == 5
    for cand in ok:
        files = [Path(f) for f in cand.row["artifact_files"]]
        assert cand.row["size_bytes"] == sum(f.stat().st_size for f in files)
        assert Path(cand.row["artifact_path"]).parent.parent == store / "artifacts"  # moved into the store


def test_accuracy_is_measured_on_the_artifact(swept, fake_model, fake_data):
    study, _, _ = swept
    _, _, xval, yval = fake_data
    df = study.results.set_index("name")
    expected = float((fake_model(xval).argmax(1) == yval).mean())
    assert df.loc["fake:baseline", "accuracy"] == pytest.approx(expected) and expected > 0.9
    for name in ("fake:fp16", "fake:int8-dynamic", "fake:int8-static", "fake:prune-unstructured(amount=0.5)"):
        base, row = df.loc["fake:baseline"], df.loc[name]
        assert row["accuracy_drop"] == pytest.approx(base["accuracy"] - row["accuracy"])
        assert row["size_ratio"] == pytest.approx(row["size_bytes"] / base["size_bytes"])
    assert df.loc["fake:fp16", "size_ratio"] < 0.65 and df.loc["fake:int8-dynamic", "size_ratio"] < 0.5
    pruned = df.loc["fake:prune-unstructured(amount=0.5)"]
    assert pruned["size_compressed_bytes"] < pruned["size_bytes"] and pruned["sparsity"] == 0.5
    assert pd_isnull(df.loc["fake:fp16", "size_compressed_bytes"])  # only where pruning zeroes weights


def pd_isnull(value) -> bool:
    return value is None or value != value


def test_pareto_matches_brute_force(swept):
    study, _, _ = swept
    ok = study.results[study.results["status"] == "ok"]
    pts = ok[["size_bytes", "accuracy"]].to_numpy(float)
    expected = {n for n, on in zip(ok["name"], brute_front(pts, ["min", "max"])) if on}
    assert set(study.pareto()["name"]) == expected and "fake:baseline" not in expected  # fp16 is as accurate
    assert pareto_mask(pts, ["min", "max"]).sum() == len(expected)
    lat = ok[["latency_ms", "accuracy"]].to_numpy(float)
    assert set(study.pareto(["latency", "accuracy"])["name"]) == {
        n for n, on in zip(ok["name"], brute_front(lat, ["min", "max"])) if on}


def test_best_respects_budget(swept):
    study, _, _ = swept
    df = study.results
    ok = df[df["status"] == "ok"]
    for budget in (0.0, 0.02, 1.0):
        within = ok[ok["accuracy_drop"] <= budget]
        assert study.best(max_accuracy_drop=budget).row["size_bytes"] == within["size_bytes"].min()
    assert study.best(max_accuracy_drop=-1) is None
    assert study.best(objective="latency", max_accuracy_drop=1.0).row["latency_ms"] == ok["latency_ms"].min()
    assert study.best(backend="fake").row["backend"] == "fake"
    with pytest.raises(NboptError, match="Unknown objective 'speed'"):
        study.best(objective="speed")
    with pytest.raises(NboptError, match="no backend 'torch'"):
        study.best(backend="torch")


# ------------------------------------------------------------------------------------------ the store
def test_rerun_reuses_every_candidate(swept, fake_model, fake_data):
    study, store, _ = swept
    xtr, ytr, xval, yval = fake_data
    events = []
    again = nbopt.optimize(fake_model, calib=(xtr, ytr), eval=(xval, yval), store=store, backends=["fake"],
                           recipes=SWEEP, callbacks=[lambda e, p: events.append((e, p))], progress=False, latency=QUICK)
    flags = {p["name"]: p["cached"] for p in started(events)}
    assert flags.pop("fake:int8-static(calibration=entropy)") is False  # a skipped row is never stored
    assert len(flags) == 5 and all(flags.values())
    cols = ["name", "size_bytes", "accuracy", "latency_ms", "peak_memory_mb", "build_seconds"]
    assert again.results[cols].equals(study.results[cols])  # read back, not measured again


def test_changed_model_data_or_recipe_is_measured_again(args):
    study = nbopt.Study(recipes=["fp16"], **args).run()
    assert (study.results["status"] == "ok").all()

    def cached(**change):
        events = []
        nbopt.Study(**{**args, "recipes": ["fp16"], **change}, callbacks=[lambda e, p: events.append((e, p))]).run()
        return [p["cached"] for p in started(events)]

    assert cached() == [True, True]
    model = args["model"]
    assert cached(model=FakeModel(model.weights * 1.01, model.bias)) == [False, False]  # other weights
    xval, yval = args["eval"]
    assert cached(eval=(xval[:100], yval[:100])) == [False, False]  # other eval data
    xtr, ytr = args["calib"]
    assert cached(calib=(xtr[:300], ytr[:300])) == [False, False]  # other calibration data
    assert cached(recipes=[{"fp16": {}}, "int8-dynamic"]) == [True, True, False]  # only the new recipe


def test_changed_metric_is_recomputed_from_stored_outputs(args):
    """The metric is not part of what is stored: a re-run with another metric reuses every artifact and
    recomputes the metric from the stored outputs."""
    first = nbopt.Study(recipes=[{"prune-unstructured": {"amount": 0.9}}], **args).run().results
    events = []
    args.update(metric="top5", callbacks=[lambda e, p: events.append((e, p))])
    again = nbopt.Study(recipes=[{"prune-unstructured": {"amount": 0.9}}], **args).run().results
    assert [p["cached"] for p in started(events)] == [True, True]
    xval, yval = args["eval"]
    assert (again["accuracy"] > first["accuracy"]).all()  # top-5 of 10 classes beats top-1 on both rows
    outputs = FakeRunner(again.loc[1, "artifact_path"])({"input": xval})
    top5 = np.argsort(-outputs, axis=1)[:, :5]
    assert again.loc[1, "accuracy"] == pytest.approx(np.mean([y in t for y, t in zip(yval, top5)]))
    assert again.loc[1, "accuracy_drop"] == pytest.approx(again.loc[0, "accuracy"] - again.loc[1, "accuracy"])


def test_failed_candidate_is_retried_on_rerun(args, monkeypatch):
    args["executor"] = "inline"  # the patched handler lives in this process
    spec = FakeBackend.handlers["fp16"]
    with monkeypatch.context() as mp:
        mp.setitem(FakeBackend.handlers, "fp16", dataclasses.replace(spec, handler=_broken))
        first = nbopt.Study(recipes=["fp16"], **args).run()
    assert first.results.loc[1, "status"] == "failed"
    events = []
    again = nbopt.Study(recipes=["fp16"], callbacks=[lambda e, p: events.append((e, p))], **args).run()
    assert again.results.loc[1, "status"] == "ok"
    assert [p["cached"] for p in started(events)] == [True, False]  # the baseline reused, the failure built again


def test_deleted_artifact_is_built_again(args):
    study = nbopt.Study(recipes=["fp16"], **args).run()
    Path(study.candidates[1].row["artifact_path"]).unlink()
    events = []
    again = nbopt.Study(recipes=["fp16"], callbacks=[lambda e, p: events.append((e, p))], **args).run()
    assert [p["cached"] for p in started(events)] == [True, False]
    assert Path(again.candidates[1].row["artifact_path"]).exists()


def test_export_writes_artifact_and_card(swept, tmp_path):
    study, _, _ = swept
    cand = next(c for c in study.candidates if c.row["recipe"] == "int8-static")
    out = cand.export(tmp_path / "model_int8")
    assert out == tmp_path / "model_int8.npz"
    assert out.read_bytes() == Path(cand.row["artifact_path"]).read_bytes()
    assert out.stat().st_size == cand.row["size_bytes"]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["recipe"] == "int8-static" and card["model_file"] == "model_int8.npz"
    assert card["metrics"]["accuracy"] == cand.row["accuracy"]
    assert card["metrics"]["size_bytes"] == cand.row["size_bytes"]
    assert card["data"]["eval_fingerprint"] == study.eval_data.fingerprint and card["data"]["calib_fingerprint"]
    assert card["versions"]["fake"] == "1" and card["versions"]["nbopt"] == nbopt.__version__
    skipped = next(c for c in study.candidates if c.row["status"] == "skipped")
    with pytest.raises(NboptError, match="has no artifact to export"):
        skipped.export(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------ failures
def _broken(*args):
    raise RuntimeError("kernel exploded\nwith a long traceback")


def test_failing_candidate_does_not_stop_the_sweep(args, monkeypatch):
    args["executor"] = "inline"  # the patched handler lives in this process (tests/test_workers.py: in a worker)
    spec = FakeBackend.handlers["int8-dynamic"]
    monkeypatch.setitem(FakeBackend.handlers, "int8-dynamic", dataclasses.replace(spec, handler=_broken))
    events = []
    study = nbopt.optimize(**args, recipes=["int8-dynamic", {"prune-unstructured": {"amount": 0.3}}],
                           callbacks=[lambda e, p: events.append(e)])
    df = study.results.set_index("recipe")
    assert df.loc["int8-dynamic", "status"] == "failed"
    assert df.loc["int8-dynamic", "error"] == "RuntimeError: kernel exploded"
    assert pd_isnull(df.loc["int8-dynamic", "size_bytes"]) and pd_isnull(df.loc["int8-dynamic", "accuracy"])
    assert "with a long traceback" in Path(df.loc["int8-dynamic", "log"]).read_text()  # the full text is kept
    assert df.loc["prune-unstructured", "status"] == "ok"
    assert events.count("candidate_failed") == 1
    assert not list((args["store"] / "tmp").rglob("*.npz"))  # the failed candidate's scratch files are gone


def test_budget_cuts_the_pruning_grid(args):
    study = nbopt.optimize(**args, max_accuracy_drop=0.01,
                           recipes=[{"prune-unstructured": {"amount": [0.9, 0.2, 0.97]}}])
    rows = study.results.set_index("name")
    assert list(study.results["params"].iloc[1:]) == [{"amount": 0.2}, {"amount": 0.9}, {"amount": 0.97}]
    assert rows.loc["fake:prune-unstructured(amount=0.2)", "accuracy_drop"] <= 0.01
    assert rows.loc["fake:prune-unstructured(amount=0.9)", "accuracy_drop"] > 0.01
    skipped = rows.loc["fake:prune-unstructured(amount=0.97)"]
    assert skipped["status"] == "skipped" and "budget" in skipped["error"] and "amount=0.97" in skipped["error"]
    assert study.best().row["accuracy_drop"] <= 0.01  # the study's own budget


def test_no_budget_tries_the_whole_grid(args):
    study = nbopt.optimize(**args, recipes=[{"prune-unstructured": {"amount": [0.9, 0.97]}}])
    assert (study.results["status"] == "ok").all()


def test_interrupt_keeps_finished_rows(args):
    def interrupt(event, payload):
        if event == "candidate_started" and payload["recipe"] == "int8-static":
            raise KeyboardInterrupt

    study = nbopt.Study(**args, recipes=["int8-dynamic", "int8-static"])
    study._callbacks.append(interrupt)  # noqa: SLF001  (callbacks swallow exceptions; interrupts pass)
    with pytest.warns(UserWarning, match="interrupted"), pytest.raises(KeyboardInterrupt):
        study.run()  # the interrupt goes on (so that "Run all" stops) once the finished rows are kept
    assert study.stopped and list(study.results["recipe"]) == ["baseline", "int8-dynamic"]
    assert nbopt.last_study() is study
    again = nbopt.Study(**args, recipes=["int8-dynamic"])
    seen = []
    again.on(lambda e, p: seen.append(p.get("cached")))
    again.run()
    assert seen.count(True) == 2  # both finished rows came back from the store


def test_stop_ends_after_running_candidate(args):
    study = nbopt.Study(**args, recipes=["int8-dynamic", "fp16", "int8-static"])
    stops = []

    def stop_once(event, payload):
        if event == "candidate_finished" and payload["row"]["recipe"] == "int8-dynamic" and not stops:
            stops.append(study.stop())

    study.on(stop_once)
    study.run()
    assert study.stopped and list(study.results["recipe"]) == ["baseline", "int8-dynamic"]
    study.run()  # a second run starts clean and finishes
    assert not study.stopped and len(study.results) == 4


def test_background_sweep_can_be_stopped(args):
    study = nbopt.Study(**args, recipes=["int8-dynamic", "fp16", "int8-static"])
    study.on(lambda e, p: study.stop() if e == "candidate_finished" else None)
    sweep = study.start()
    sweep.wait(60)
    assert not sweep.is_running and sweep.error is None
    assert study.stopped and list(study.results["recipe"]) == ["baseline"]


def test_calibration_data_reaches_the_recipe(args):
    """int8-static calibrates on calib, never on eval: calibration data of zeros ruins it."""
    xtr, ytr = args["calib"]
    good = nbopt.optimize(**args, recipes=["int8-static"]).results
    args.update(calib=(np.zeros_like(xtr), ytr), store=args["store"].with_name("other"))
    bad = nbopt.optimize(**args, recipes=["int8-static"]).results
    assert good.loc[1, "accuracy_drop"] < 0.02 and bad.loc[1, "accuracy_drop"] > 0.5


def test_default_sweep_without_calibration_skips_what_needs_it(args):
    args.pop("calib")
    study = nbopt.optimize(**args)
    df = study.results.set_index("recipe")
    assert df.loc["int8-static", "status"] == "skipped" and "calib" in df.loc["int8-static", "error"]
    assert (df.drop(index="int8-static")["status"] == "ok").all()
    assert list(df.index) == ["baseline", *[r.name for r in FakeBackend().default_recipes(None)]]


def test_metric_where_lower_is_better(fake_data, store):
    """mse: the drop is a rise, the front minimises it, best() stays within the budget."""
    _, _, xval, _ = fake_data
    target = xval.mean(axis=1)
    model = FakeModel(np.full((64, 1), 1 / 64, np.float32), np.zeros(1, np.float32))  # predicts the mean exactly
    study = nbopt.optimize(model, eval=(xval, target), metric="mse", store=store, backends=["fake"],
                           recipes=["fp16", {"prune-unstructured": {"amount": [0.3, 0.9]}}], **FAST)
    df = study.results.set_index("name")
    assert df.loc["fake:baseline", "accuracy"] < 1e-10
    heavy = df.loc["fake:prune-unstructured(amount=0.9)"]
    assert heavy["accuracy"] > 0.01
    assert heavy["accuracy_drop"] == pytest.approx(heavy["accuracy"] - df.loc["fake:baseline", "accuracy"])
    ok = study.results[study.results["status"] == "ok"]
    pts = ok[["size_bytes", "accuracy"]].to_numpy(float)
    assert set(study.pareto()["name"]) == {n for n, on in zip(ok["name"], brute_front(pts, ["min", "min"])) if on}
    assert study.best(max_accuracy_drop=1e-4).name == "fake:fp16"


def test_agreement_compares_with_the_stored_baseline_outputs(args):
    """A metric against the baseline needs no labels; a re-run restores the baseline's outputs from the store."""
    xval, _ = args["eval"]
    args.update(eval=xval, metric="agreement")
    args.pop("calib")
    first = nbopt.optimize(**args, recipes=["fp16"]).results
    assert first.loc[0, "accuracy"] == 1.0 and first.loc[1, "accuracy"] > 0.99
    again = nbopt.optimize(**args, recipes=["fp16", {"prune-unstructured": {"amount": 0.9}}]).results
    assert again.loc[2, "accuracy"] < 0.8
    assert again.loc[2, "accuracy_drop"] == pytest.approx(1.0 - again.loc[2, "accuracy"])


def test_peak_memory_is_measured_in_a_fresh_process(args):
    args.update(measure_memory=True)
    study = nbopt.optimize(**args, recipes=[])
    mem = study.results.loc[0, "peak_memory_mb"]
    assert mem is not None and 0 <= mem < 100  # None: the probe process did not answer


@pytest.mark.parametrize("change, message", [
    (dict(model="not a model", backends=None), "does not exist"),
    (dict(model=object(), backends=None), "cannot optimize a object"),
    (dict(model=object()), "cannot optimize a object"),
    (dict(eval=None), "No eval data"),
    (dict(eval="/no/such/file.csv"), "does not exist"),
    (dict(eval=np.zeros((0, 64), np.float32)), "no examples"),
    (dict(eval=(np.zeros((5, 32), np.float32), np.zeros(5, np.int64)), calib=None),
     r"takes 64 input values per example, but the eval data's input has shape \(32,\)"),
    (dict(eval=(np.zeros((5, 64), np.float32), np.zeros(4, np.int64))), "5 inputs but 4 labels"),
    (dict(metric="acc"), "known metrics: accuracy"),
    (dict(recipes=["int9-magic"]), "Unknown recipe 'int9-magic'; known recipes:.*int8-static"),
    (dict(recipes=["prune-structured"]), r"not implemented by backends \['fake'\]"),
    (dict(backends=["tpu"]), "known backends: torch, onnx, tflite"),
    (dict(recipes=[{"prune-unstructured": {"amount": 1.5}}]), "amount' is 1.5; it must lie between"),
    (dict(recipes=[{"int8-static": {"colour": "red"}}]), "has no parameter 'colour'"),
    (dict(recipes=["int8-static"], calib=None), "needs calibration data"),
    (dict(metric="accuracy", eval=np.zeros((5, 64), np.float32)), "needs labels"),
    (dict(calib=np.zeros((5, 32), np.float32)), r"Calibration examples of 'input' have shape \(32,\)"),
    (dict(max_accuracy_drop=-0.1), "max_accuracy_drop must be a number >= 0"),
    (dict(objectives=["size", "speed"]), "Unknown objective 'speed'"),
])
def test_bad_input_is_one_clear_error(change, message, args):
    args.update(recipes=["int8-dynamic"])
    args.update(change)
    with pytest.raises(NboptError, match=message) as err:
        nbopt.Study(**args)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ views
def test_plot_marks_the_front_and_report_is_self_contained(swept, tmp_path):
    study, _, _ = swept
    fig = study.plot()
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert len(front.x) == len(study.pareto()) and front.line.shape == "hv"
    assert list(front.x) == sorted(front.x)
    baseline = next(t for t in fig.data if t.name == "fake baseline")
    assert len(baseline.x) == 1 and baseline.marker.symbol == "star"
    assert sum(len(t.x) for t in fig.data if t.name in ("fake", "fake baseline")) == 5  # every ok row, no skipped
    page = study.to_html(tmp_path / "report.html").read_text()
    assert '<script src="http' not in page and "Plotly.newPlot" in page  # plotly.js inlined: works offline
    assert all(name in page for name in study.results["name"])
    assert f"Best within the budget: <b>{study.best().name}</b>" in page


def test_two_backends_on_one_plot(args):
    args.update(backends=["fake", "fake-wide"])
    study = nbopt.optimize(**args, recipes=["int8-dynamic"])
    df = study.results
    assert list(df["name"]) == ["fake:baseline", "fake-wide:baseline", "fake:int8-dynamic", "fake-wide:int8-dynamic"]
    assert (df["status"] == "ok").all(), df[["name", "error"]]
    for backend, group in df.groupby("backend"):  # ratios and drops are against the same backend's baseline
        base = group[group["recipe"] == "baseline"].iloc[0]
        cand = group[group["recipe"] == "int8-dynamic"].iloc[0]
        assert cand["size_ratio"] == pytest.approx(cand["size_bytes"] / base["size_bytes"])
        assert cand["accuracy_drop"] == pytest.approx(base["accuracy"] - cand["accuracy"])
    wide, narrow = (df[df["recipe"] == "baseline"].set_index("backend")["size_bytes"][k] for k in ("fake-wide", "fake"))
    assert wide > 1.5 * narrow  # float64 against float32: the ratios above really differ
    names = {t.name for t in study.plot().data}
    assert {"fake", "fake-wide", "fake baseline", "fake-wide baseline"} <= names


def test_backend_that_cannot_take_the_model_is_a_failed_row(args, monkeypatch):
    def refuse(self, model, example):
        raise CandidateError("the wide runtime needs a converter that is not installed")

    monkeypatch.setattr(WideFakeBackend, "prepare", refuse)
    args.update(backends=["fake", "fake-wide"], executor="inline")
    study = nbopt.optimize(**args, recipes=["int8-dynamic"])
    rows = study.results.set_index("name")
    assert rows.loc["fake:int8-dynamic", "status"] == "ok"
    assert rows.loc["fake-wide:baseline", "status"] == "failed"
    assert rows.loc["fake-wide:baseline", "error"] == "the wide runtime needs a converter that is not installed"
    assert rows.loc["fake-wide:int8-dynamic", "status"] == "skipped"


def test_import_nbopt_stays_light():
    import subprocess
    import sys

    code = ("import sys, nbopt; nbopt.optimize; nbopt.Study; import nbopt.data; "
            "heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'executorch') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ slow tier
# What needs the semantics of a real converter and runtime: the CNN really shrinks under int8, the torch
# runtime's memory is measured, real backends side by side.
@pytest.fixture(scope="module")
def torch_swept(digits, digits_cnn, tmp_path_factory):
    xtr, ytr, xval, yval = digits
    return nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=tmp_path_factory.mktemp("store"),
                          recipes=["int8-dynamic", "int8-static", {"prune-unstructured": {"amount": 0.5}}],
                          measure_memory=False, progress=False)


@pytest.mark.slow
def test_torch_int8_is_smaller_and_keeps_accuracy(torch_swept):
    df = torch_swept.results.set_index("recipe")
    assert (df["status"] == "ok").all(), df[["name", "error"]]
    assert df.loc["baseline", "accuracy"] > 0.9  # a real trained model, not random weights
    assert df.loc["int8-static", "size_ratio"] < 0.5
    assert abs(df.loc["int8-static", "accuracy_drop"]) < 0.05
    assert df.loc["prune-unstructured", "size_compressed_bytes"] < df.loc["prune-unstructured", "size_bytes"]
    for row in torch_swept.candidates:
        assert row.row["size_bytes"] == sum(Path(f).stat().st_size for f in row.row["artifact_files"])


@pytest.mark.slow
def test_torch_peak_memory_is_measured_in_a_fresh_process(digits, digits_cnn, store):
    _, _, xval, yval = digits
    study = nbopt.optimize(digits_cnn, eval=(xval[:50], yval[:50]), store=store, recipes=[], progress=False)
    mem = study.results.loc[0, "peak_memory_mb"]
    assert mem is not None and 0 < mem < 2000


@pytest.mark.slow
def test_torch_and_onnx_on_one_plot(digits, digits_cnn, store):
    pytest.importorskip("onnxruntime")
    xtr, ytr, xval, yval = digits
    study = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store, backends=["torch", "onnx"],
                           recipes=["int8-dynamic"], measure_memory=False, progress=False)
    df = study.results
    assert set(df["backend"]) == {"torch", "onnx"} and (df["status"] == "ok").all(), df[["name", "error"]]
    assert set(df["format"]) == {"pte", "onnx"}
    for backend, group in df.groupby("backend"):
        base = group[group["recipe"] == "baseline"].iloc[0]
        cand = group[group["recipe"] == "int8-dynamic"].iloc[0]
        assert cand["size_ratio"] == pytest.approx(cand["size_bytes"] / base["size_bytes"])
    names = {t.name for t in study.plot().data}
    assert {"torch", "onnx", "torch baseline", "onnx baseline"} <= names


@pytest.mark.slow
def test_torch_model_without_litert_torch_is_a_failed_tflite_row(digits, digits_cnn, store):
    pytest.importorskip("tensorflow")
    import importlib.util

    if importlib.util.find_spec("litert_torch") is not None:
        pytest.skip("litert-torch is installed: the torch model converts to TFLite")
    xtr, ytr, xval, yval = digits
    study = nbopt.optimize(digits_cnn, calib=(xtr, ytr), eval=(xval, yval), store=store, backends=["torch", "tflite"],
                           recipes=["int8-dynamic"], measure_memory=False, progress=False)
    rows = study.results.set_index("name")
    assert rows.loc["torch:int8-dynamic", "status"] == "ok"
    assert rows.loc["tflite:baseline", "status"] == "failed" and "litert-torch" in rows.loc["tflite:baseline", "error"]
    assert rows.loc["tflite:int8-dynamic", "status"] == "skipped"
