"""Reopen after a restart: the studies table of the store, ``nbopt.open``, ``StoredStudy``, ``Panel.open`` and
``nbopt report`` on stored studies. Fast tier: fake-backend studies, recorded the way ``Study.run`` records
them (``record``: record_study at the start, update_study_rows after each candidate and at the end)."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import run_cli  # noqa: E402

import nbopt
from nbopt.errors import NboptError
from nbopt.evaluator import LatencySettings
from nbopt.reopen import StoredStudy, load_study, study_record
from nbopt.store import Store, StoreWriteError

FAST = dict(measure_memory=False, progress=False, latency=LatencySettings(warmup=1, min_runs=5, min_seconds=0.0))
SWEEP = ["fp16", "int8-dynamic", "int8-static", {"prune-unstructured": {"amount": 0.5}},
         {"int8-static": {"calibration": "entropy"}}]  # the fake cannot do entropy: a skipped row
MODEL = "fake FakeModel (650 parameters)"


def record(study, model: str = MODEL):
    """What ``Study.run`` does for reopening: record the study when it starts, its rows after each candidate
    (finished False), and at the end finished = not stopped. Once study.py does it itself (``study.study_id``
    is set when ``study_started`` is emitted), this only notes the id."""
    state = {}

    def on(event, payload):
        if event == "study_started":
            own = getattr(study, "study_id", None)
            state["self"] = own is not None
            if own is None:
                sid, meta = study_record(study, model)
                study.store.record_study(sid, meta)
            study.reopen_id = own or sid
        if state.get("self"):
            return
        if event in ("candidate_finished", "candidate_failed"):
            study.store.update_study_rows(study.reopen_id, [c.row for c in study.candidates], finished=False)
        elif event == "study_finished":
            study.store.update_study_rows(study.reopen_id, [c.row for c in study.candidates],
                                          finished=not payload["stopped"])

    study.on(on)
    return study


def run_recorded(fake_model, fake_data, store, **kwargs):
    xtr, ytr, xval, yval = fake_data
    kwargs = {"calib": (xtr, ytr), "eval": (xval, yval), "backends": ["fake"], **FAST, **kwargs}
    return record(nbopt.Study(fake_model, store=store, **kwargs)).run()


def one_sentence(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.rstrip(")").endswith("."), text
    return text





@pytest.fixture(scope="module")
def two(fake_model, fake_data, tmp_path_factory):
    """One store, two studies: the full sweep on accuracy, then two recipes on agreement (newer)."""
    store = tmp_path_factory.mktemp("two") / "store"
    first = run_recorded(fake_model, fake_data, store, recipes=SWEEP, max_accuracy_drop=0.02)
    time.sleep(0.01)
    second = run_recorded(fake_model, fake_data, store, recipes=["fp16", "int8-dynamic"], metric="agreement")
    return SimpleNamespace(store=store, first=first, second=second)


# ------------------------------------------------------------------------------------------ the store
def test_store_records_a_study_and_its_rows(tmp_path):
    store = Store(tmp_path / "s")
    assert store.studies() == [] and store.study("nope") is None
    store.record_study("s1", {"model": "m", "metric": "accuracy"})
    (only,) = store.studies()
    assert only["id"] == "s1" and only["rows"] == 0 and only["ok"] == 0 and not only["finished"]
    assert only["meta"] == {"model": "m", "metric": "accuracy"} and only["created"] == only["updated"]
    import numpy as np

    rows = [{"name": "a", "status": "ok", "accuracy": np.float32(0.5), "per_class": np.arange(2)},
            {"name": "b", "status": "failed", "error": "boom", "accuracy": None}]
    store.update_study_rows("s1", rows, finished=True)
    got = Store(tmp_path / "s").study("s1")  # survives a re-open
    assert got["rows"] == [{"name": "a", "status": "ok", "accuracy": 0.5, "per_class": [0, 1]},
                           {"name": "b", "status": "failed", "error": "boom", "accuracy": None}]
    assert got["finished"] and got["meta"]["model"] == "m" and got["updated"] > got["created"]
    # the same study run again: new meta, rows kept until the run replaces them
    store.record_study("s1", {"model": "m2", "metric": "accuracy"})
    again = store.study("s1")
    assert again["meta"]["model"] == "m2" and len(again["rows"]) == 2 and again["created"] == got["created"]
    assert store.studies()[0]["rows"] == 2 and store.studies()[0]["ok"] == 1
    # newest first
    store.record_study("s2", {"model": "other"})
    assert [s["id"] for s in store.studies()] == ["s2", "s1"]
    store.update_study_rows("s1", rows[:1], finished=False)
    assert [s["id"] for s in store.studies()] == ["s1", "s2"] and not store.study("s1")["finished"]


def test_study_writes_fail_as_store_write_errors(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    with pytest.raises(StoreWriteError, match="never recorded"):
        store.update_study_rows("ghost", [], finished=True)
    with pytest.raises(StoreWriteError, match="JSON"):
        store.record_study("s1", {"model": object.__new__(type("X", (), {"__str__": None}))})
    store.record_study("s1", {"model": "m"})
    monkeypatch.setattr(store, "_connect", lambda: sqlite3.connect(f"file:{store.db}?mode=ro", uri=True))
    with pytest.raises(StoreWriteError) as info:
        store.update_study_rows("s1", [{"name": "a", "status": "ok"}], finished=True)
    assert "s1" in one_sentence(info.value) and "readonly" in str(info.value)
    monkeypatch.undo()
    assert store.study("s1")["rows"] == []  # nothing half-written


def test_unreadable_study_records(tmp_path):
    store = Store(tmp_path / "s")
    store.record_study("good", {"model": "m"})
    store.record_study("bad", {"model": "m"})
    with sqlite3.connect(store.db) as con:
        con.execute("UPDATE studies SET meta = '{oops', rows = 'nope' WHERE id = 'bad'")
    with pytest.warns(UserWarning, match="bad"):
        assert [s["id"] for s in store.studies()] == ["good"]
    with pytest.raises(NboptError) as info:
        store.study("bad")
    assert "run the study again" in one_sentence(info.value)


def test_a_studies_table_without_its_columns_moves_the_database_aside(tmp_path):
    folder = tmp_path / "s"
    Store(folder)
    with sqlite3.connect(folder / "nbopt.sqlite") as con:
        con.execute("DROP TABLE studies")
        con.execute("CREATE TABLE studies (id TEXT PRIMARY KEY, blob TEXT)")
    with pytest.warns(UserWarning, match="studies table"):
        store = Store(folder)
    assert list(folder.glob("nbopt.sqlite.corrupt-*"))
    store.record_study("s1", {"model": "m"})
    assert store.study("s1")["meta"] == {"model": "m"}


# ------------------------------------------------------------------------------------------ nbopt.open
def test_open_lists_the_studies_newest_first(two):
    df = nbopt.open(two.store)
    assert list(df.columns) == ["study", "model", "data", "metric", "backends", "rows", "ok", "finished", "created",
                                "updated"]
    assert list(df["metric"]) == ["agreement", "accuracy"]  # newest first
    assert list(df["rows"]) == [3, 6] and list(df["ok"]) == [3, 5] and df["finished"].all()
    assert all(isinstance(m, str) and m for m in df["model"]) and set(df["backends"]) == {"fake"}
    assert "eval 540 examples" in df.loc[0, "data"] and "calib" in df.loc[0, "data"]
    assert df["updated"].iloc[0] >= df["updated"].iloc[1]
    assert str(df["updated"].dtype).startswith("datetime64")
    ids = {two.first.reopen_id[:8], two.second.reopen_id[:8]}
    assert set(df["study"]) == ids and two.first.reopen_id != two.second.reopen_id
    assert nbopt.open(Store(two.store)).equals(df)  # a Store works too


def test_open_of_a_missing_store_is_one_sentence(tmp_path):
    with pytest.raises(NboptError) as info:
        nbopt.open(tmp_path / "nope")
    assert "no store folder" in one_sentence(info.value)
    with pytest.raises(NboptError) as info:
        nbopt.open(tmp_path)
    assert "no nbopt.sqlite" in one_sentence(info.value)
    (tmp_path / "nbopt.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(NboptError) as info:
        nbopt.open(tmp_path)
    assert "Cannot read" in one_sentence(info.value)


def test_import_nbopt_stays_light_with_open():
    code = "import sys, nbopt; nbopt.open; assert 'pandas' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "open" not in nbopt.__all__  # `from nbopt import *` must not shadow the builtin


# ------------------------------------------------------------------------------------------ one study
def test_a_prefix_selects_and_a_bad_one_is_one_sentence(two, tmp_path):
    sid = two.first.reopen_id
    assert load_study(two.store, sid).id == sid
    assert load_study(two.store, sid[:5]).id == sid
    assert load_study(two.store).id == two.second.reopen_id  # None: the newest
    with pytest.raises(NboptError) as info:
        load_study(two.store, "zzzz")
    text = one_sentence(info.value)
    assert "no study 'zzzz'" in text and sid[:8] in text and two.second.reopen_id[:8] in text
    with pytest.raises(NboptError, match="study id"):
        load_study(two.store, "")
    # two ids that start alike
    store = Store(tmp_path / "s")
    for sid in ("abc123", "abc456"):
        store.record_study(sid, {"model": "m", "metric": "accuracy"})
        store.update_study_rows(sid, [], finished=True)
    with pytest.raises(NboptError) as info:
        load_study(tmp_path / "s", "abc")
    assert "'abc' is the start of 2 studies" in one_sentence(info.value) and "abc123" in str(info.value)
    assert load_study(tmp_path / "s", "abc4").id == "abc456"
    with pytest.raises(NboptError, match="no recorded study"):
        load_study(Store(tmp_path / "empty"))


def test_stored_results_pareto_and_best_match_the_study(two):
    for study in (two.first, two.second):
        stored = load_study(two.store, study.reopen_id)
        assert isinstance(stored, StoredStudy) and stored.finished and not stored.stopped
        pd.testing.assert_frame_equal(stored.results, study.results)
        pd.testing.assert_frame_equal(stored.pareto(), study.pareto())
        pd.testing.assert_frame_equal(stored.pareto(["latency", "accuracy"]), study.pareto(["latency", "accuracy"]))
        assert stored.metric.name == study.metric.name and stored.objectives == study.objectives
        for budget in (None, 0.0, 0.01, 0.5):
            for objective in ("size", "latency"):
                a, b = stored.best(budget, objective), study.best(budget, objective)
                assert (a and a.name) == (b and b.name), (budget, objective)
        assert stored.best(budget_on="upper").name == study.best(budget_on="upper").name
        assert stored.max_accuracy_drop == study.max_accuracy_drop
    with pytest.raises(NboptError, match="no backend 'onnx'"):
        stored.best(backend="onnx")
    assert "fake:fp16" in repr(stored.results) and "StoredStudy" in repr(stored)


def test_stored_plot_report_and_size_table(two, tmp_path):
    stored = load_study(two.store, two.first.reopen_id[:6])
    fig = stored.plot()
    assert {t.name for t in fig.data} >= {"fake", "fake baseline", "Pareto front"}
    assert fig.layout.yaxis.title.text == "accuracy"
    page = stored.to_html(tmp_path / "r.html").read_text()
    assert "fake:int8-dynamic" in page and "plotly" in page and "Metric: <b>accuracy</b>" in page
    for study in (stored, two.first):  # the fake backend has no breakdown; the stored row keeps one if it had
        with pytest.raises(NboptError, match="fake backend cannot read"):
            study.size_table("fake:fp16")
    stored.candidates[1].row["size_breakdown"] = {"by_dtype": {"float16": 1280}}
    assert stored.size_table("fake:fp16") == {"by_dtype": {"float16": 1280}}
    with pytest.raises(NboptError, match="no candidate 'nope'"):
        stored.size_table("nope")


def test_export_from_a_reopened_study(two, tmp_path):
    stored = load_study(two.store, two.first.reopen_id)
    cand = next(c for c in stored.candidates if c.name == "fake:int8-dynamic")
    written = cand.export(tmp_path / "out" / "model")
    assert written == tmp_path / "out" / "model.npz"
    assert written.read_bytes() == Path(cand.row["artifact_path"]).read_bytes()
    card = json.loads(written.with_suffix(".json").read_text())
    assert card["metric"] == "accuracy" and card["versions"]["fake"] == "1"
    assert card["data"]["eval_fingerprint"] == two.first.eval_data.fingerprint
    assert card["data"]["eval_examples"] == two.first.eval_data.num_examples
    assert card["metrics"]["size_bytes"] == cand.row["size_bytes"]
    with pytest.raises(NboptError, match="already exists"):
        cand.export(written)
    skipped = next(c for c in stored.candidates if c.row["status"] == "skipped")
    with pytest.raises(NboptError, match="no artifact"):
        skipped.export(tmp_path / "x")


def test_rows_recorded_without_their_files_get_them_from_the_store(two, tmp_path):
    from nbopt.schema import public

    folder = tmp_path / "copy"
    shutil.copytree(two.store, folder)
    store = Store(folder)
    store.record_study("feed", {"model": "m", "metric": "accuracy"})
    store.update_study_rows("feed", [public(c.row) for c in two.first.candidates], finished=True)
    stored = load_study(folder, "feed")
    fp16 = stored.candidates[1].row
    assert fp16["artifact_files"] == [str(folder / Path(f).relative_to(two.store))
                                      for f in two.first.candidates[1].row["artifact_files"]]
    assert "artifact_files" not in stored.results.columns and stored.candidates[1].export(tmp_path / "x").exists()


def test_a_moved_store_still_reopens_and_exports(two, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(two.store, moved)
    stored = load_study(moved, two.first.reopen_id)
    assert all(str(moved) in c.row["artifact_path"] for c in stored.candidates if c.row["status"] == "ok")
    assert stored.candidates[1].export(tmp_path / "fp16").exists()


# ------------------------------------------------------------------------------------------ a stopped study
def test_a_stopped_study_reopens_as_partial_and_a_rerun_finishes_it(fake_model, fake_data, tmp_path):
    store = tmp_path / "store"
    xtr, ytr, xval, yval = fake_data
    kwargs = dict(calib=(xtr, ytr), eval=(xval, yval), backends=["fake"], recipes=["fp16", "int8-dynamic",
                                                                                  "int8-static"], **FAST)
    study = record(nbopt.Study(fake_model, store=store, **kwargs))
    study.on(lambda e, p: study.stop() if e == "candidate_finished" and len(study.candidates) == 2 else None)
    study.run()
    assert study.stopped and len(study.candidates) == 2
    (row,) = nbopt.open(store).to_dict("records")
    assert row["rows"] == 2 and not row["finished"]
    stored = load_study(store)
    assert stored.stopped and stored.total == 4 and "stopped after 2 of 4" in stored.describe()
    pd.testing.assert_frame_equal(stored.results, study.results)
    panel = nbopt.Panel.open(store)
    assert panel.status == "stopped" and panel.done == 2 and panel.total == 4 and len(panel.rows) == 2
    # the same optimize() again: the same record, finished now
    again = run_recorded(fake_model, fake_data, store, recipes=["fp16", "int8-dynamic", "int8-static"])
    assert again.reopen_id == study.reopen_id
    (row,) = nbopt.open(store).to_dict("records")
    assert row["rows"] == 4 and row["finished"]


def test_rows_are_recorded_while_the_study_runs(fake_model, fake_data, tmp_path):
    seen = []
    study = record(nbopt.Study(fake_model, eval=fake_data[2:], store=tmp_path / "s", backends=["fake"],
                               recipes=["fp16", "int8-dynamic"], **FAST))
    study.on(lambda e, p: seen.append(len(load_study(tmp_path / "s").candidates))
             if e == "candidate_finished" else None)
    study.run()
    assert seen == [1, 2, 3]


# ------------------------------------------------------------------------------------------ the panel
def send(panel, content: dict) -> None:
    """What the front end's ``model.send(content)`` delivers to the kernel-side widget."""
    panel._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def test_panel_open_shows_the_stored_rows_and_exports(two, tmp_path):
    panel = nbopt.Panel.open(two.store, study=two.first.reopen_id[:7])
    assert panel.mode == "view" and panel.status == "done" and panel.comm is not None
    assert len(panel.rows) == panel.done == panel.total == 6 and panel.metric == "accuracy"
    assert panel.higher_is_better and panel.max_drop == 0.02 and panel.x_axis == "size"
    assert [r["name"] for r in panel.rows] == list(two.first.results["name"])
    assert [r["id"] for r in panel.rows] == [str(i) for i in range(6)]
    assert "Reopened" in panel.message and two.first.reopen_id[:8] in panel.message
    assert panel.best().name == two.first.best().name
    row = next(r for r in panel.rows if r["recipe"] == "int8-dynamic")
    send(panel, {"type": "export", "id": row["id"], "path": str(tmp_path / "out" / "digits")})
    assert "error" not in panel.export_status, panel.export_status
    assert (tmp_path / "out" / "digits.npz").stat().st_size == row["size_bytes"]
    assert (tmp_path / "out" / "digits.json").exists()
    send(panel, {"type": "stop"})  # nothing runs: no effect
    send(panel, {"type": "run"})
    assert panel.status == "done" and not panel.is_running
    newest = nbopt.Panel.open(two.store)
    assert newest.metric == "agreement" and len(newest.rows) == 3
    with pytest.raises(NboptError, match="no study"):
        nbopt.Panel.open(two.store, study="zzz")


# ------------------------------------------------------------------------------------------ nbopt report
def test_cli_report_of_a_store_with_two_studies(two, tmp_path):
    res = run_cli("report", two.store, "--out", tmp_path / "new.html")
    assert res.rc == 0, res.err
    assert "holds 2 studies; showing the most recently run one" in res.out
    assert two.second.reopen_id[:8] in res.out and "Metric: agreement (higher is better)" in res.out
    assert (tmp_path / "new.html").is_file() and "fake:int8-dynamic" in (tmp_path / "new.html").read_text()
    res = run_cli("report", two.store, "--study", two.first.reopen_id[:6], "--out", tmp_path / "first.html")
    assert res.rc == 0 and "holds 2 studies" not in res.out and "Metric: accuracy" in res.out
    lines = [ln for ln in res.out.splitlines() if ln.startswith("fake:")]
    assert [ln.split()[0] for ln in lines] == list(two.first.results["name"])
    assert "Metric: <b>accuracy</b>" in (tmp_path / "first.html").read_text()
    res = run_cli("report", two.store, "--study", "zzz")
    assert res.rc == 2 and res.err.startswith("nbopt: error: The store") and len(res.err.splitlines()) == 1


def test_cli_report_of_a_store_without_study_records(two, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(two.store, old)
    with sqlite3.connect(old / "nbopt.sqlite") as con:
        con.execute("DROP TABLE studies")
    with pytest.warns(UserWarning, match="no study record"):
        assert len(nbopt.open(old)) == 0
    res = run_cli("report", old, "--metric", "accuracy", "--out", tmp_path / "old.html")
    assert res.rc == 0 and "no study record" in res.out and (tmp_path / "old.html").is_file()
    with pytest.raises(NboptError, match="no recorded study"):
        load_study(old)
