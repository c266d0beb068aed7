"""%%optimize and the panel's kernel side, in a real IPython shell (no browser; see test_browser.py).

Fast tier: the magic and the panel follow studies of the fake in-memory backend (``fake_backend.py``).
Slow tier (the end of this file): the layer-sensitivity section, which needs the real ONNX backend.
"""
from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("IPython")
pytest.importorskip("anywidget")

from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

BACKEND = "fake"  # numpy only: the engine and the views without a converter

pytestmark = pytest.mark.usefixtures("quick_latency")


@pytest.fixture
def tiny(fake_model, fake_data):
    xtr, ytr, xval, yval = fake_data
    return fake_model, xtr[:64], (xval, yval)


@pytest.fixture
def ip(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell.instance()
    shell.run_cell("%load_ext nbopt")
    net, calib, val = tiny
    shell.user_ns.update(net=net, calib=calib, val=val)
    yield shell
    from nbopt.sweep import running

    for sweep in running():
        sweep.stop()
        sweep.wait()
    for name in ("net", "calib", "val", "study"):
        shell.user_ns.pop(name, None)


@pytest.fixture
def panels(monkeypatch):
    """Every Panel the magic creates, in order."""
    from nbopt.widget import Panel

    made = []
    original = Panel.follow.__func__

    def follow(cls, study, **kw):
        panel = original(cls, study, **kw)
        made.append(panel)
        return panel

    monkeypatch.setattr(Panel, "follow", classmethod(follow))
    return made


def send(panel, content: dict) -> None:
    """What the front end's ``model.send(content)`` delivers to the kernel-side widget."""
    panel._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


USAGE_CASES = {
    "unknown variable": ("%%optimize --model nett --eval val\n\n", ["nett", "did you mean 'net'"]),
    "missing model": ("%%optimize --eval val\n\n", ["--model"]),
    "bad yaml": ("%%optimize --model net --eval val\nrecipes: [fp16\n  - x: y\n", ["YAML", "line 3"]),
    "unknown recipe": (f"%%optimize --model net --eval val --backends {BACKEND}\n- int9-magic\n",
                       ["int9-magic", "int8-dynamic"]),
    "unknown backend": ("%%optimize --model net --eval val --backends tpu\n\n", ["tpu", "onnx"]),
    "wrong type": ("%%optimize --model net --eval val\nmax_accuracy_drop: lots\n", ["max_accuracy_drop", "number"]),
    "unknown key": ("%%optimize --model net --eval val\nrecipe: [fp16]\n", ["recipe", "did you mean 'recipes'"]),
    "bad option": ("%%optimize --model net --max-drop much\n\n", ["--max-drop"]),
    "not a model": ("%%optimize --model calib --eval val\n\n", ["ndarray"]),
    "bad output name": ("%%optimize --model net -o 2x\n\n", ["-o"]),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_user_mistakes_are_one_usage_error_line(ip, capsys, case):
    cell, needles = USAGE_CASES[case]
    result = ip.run_cell(cell)
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    assert err.startswith("UsageError: ")
    for needle in needles:
        assert needle in err
    # the kernel carries on
    assert ip.run_cell("ok = 1 + 1").success and ip.user_ns["ok"] == 2


def test_magic_runs_sweep_in_background_and_stores_study(ip, panels, capsys):
    cell = (f"%%optimize --model net --calib calib --eval val --backends {BACKEND} --store st -o study\n"
            "recipes:\n  - fp16\n  - int8-dynamic\nmax_accuracy_drop: 0.05\n")
    result = ip.run_cell(cell)
    assert result.success, result.error_in_exec
    (panel,) = panels
    # the cell returned while the sweep runs; the next cell waits for it, so "Run all" sees the study
    assert ip.run_cell("n = len(study.results)").success
    study = ip.user_ns["study"]
    assert panel.study is study and panel.status == "done" and not panel.is_running
    assert ip.user_ns["n"] == len(study.results) == panel.total == panel.done == len(panel.rows) == 3
    assert [r["name"] for r in panel.rows] == list(study.results["name"])
    assert panel.max_drop == 0.05 and panel.result_name == "study"
    json.dumps(panel.rows, allow_nan=False)  # what the front end gets is plain JSON
    assert all(r["id"] == str(i) for i, r in enumerate(panel.rows))
    assert panel.elapsed_s > 0 and len(panel.durations) == 3
    assert "Traceback" not in capsys.readouterr().err
    # the same cell again: every row comes from the store, so no build time is counted for the estimate
    assert ip.run_cell(cell).success and ip.run_cell("pass").success
    again = panels[1]
    assert again.status == "done" and [r["name"] for r in again.rows] == [r["name"] for r in panel.rows]
    assert again.durations == [] and ip.user_ns["study"] is again.study
    assert [r["size_bytes"] for r in again.rows] == [r["size_bytes"] for r in panel.rows]


def test_one_line_form_runs_default_sweep(ip, panels):
    assert ip.run_cell(f"%optimize --model net --calib calib --eval val --backends {BACKEND} --store st -o s2").success
    assert ip.run_cell("rows = len(s2.results)").success
    (panel,) = panels
    assert panel.status == "done"
    assert ip.user_ns["rows"] == len(panel.study.plan) + 1 > 2  # the backend's default recipes + baseline


def test_stop_ends_after_running_candidate_and_keeps_results(ip, panels, monkeypatch):
    from nbopt.study import Study

    first_done = threading.Event()
    proceed = threading.Event()

    def gate(event, payload):  # hold the sweep after its first candidate until we have pressed Stop
        if event == "candidate_finished" and not first_done.is_set():
            first_done.set()
            proceed.wait(30)

    original_run = Study.run

    def run_with_gate(self):
        self.on(gate)
        return original_run(self)

    monkeypatch.setattr(Study, "run", run_with_gate)
    cell = (f"%%optimize --model net --calib calib --eval val --backends {BACKEND} --store st -o study\n"
            "- fp16\n- int8-dynamic\n- int8-static\n")
    assert ip.run_cell(cell).success
    (panel,) = panels
    assert first_done.wait(60)
    send(panel, {"type": "stop"})  # what the Stop button sends
    assert panel.status == "stopping"
    proceed.set()
    panel.wait(60)
    study = ip.user_ns["study"]
    assert panel.status == "stopped" and study.stopped
    assert 1 <= len(study.results) < panel.total
    assert len(panel.rows) == len(study.results)


def test_export_from_panel_writes_artifact_and_says_where(ip, panels, tmp_path):
    cell = f"%%optimize --model net --calib calib --eval val --backends {BACKEND} --store st -o study\n- int8-dynamic\n"
    assert ip.run_cell(cell).success
    (panel,) = panels
    panel.wait()
    row = next(r for r in panel.rows if r["recipe"] == "int8-dynamic")
    panel.set_state({"selected": row["id"]})  # what a click in the front end sends
    assert panel.selected_candidate is panel.study.candidates[int(row["id"])]
    send(panel, {"type": "export", "id": row["id"], "path": str(tmp_path / "out" / "digits")})
    status = panel.export_status
    assert status["id"] == row["id"] and "error" not in status, status
    written = tmp_path / "out" / "digits.npz"
    assert status["path"] == str(written.resolve()) and written.stat().st_size == row["size_bytes"]
    assert (tmp_path / "out" / "digits.json").exists()
    # no path: a default under nbopt_exports/ next to the notebook
    send(panel, {"type": "export", "id": row["id"], "path": ""})
    assert "nbopt_exports" in panel.export_status["path"]
    # a mistake is one line in the panel, not an exception in the kernel
    send(panel, {"type": "export", "id": "99"})
    assert panel.export_status["error"].startswith("Export failed: ")


def test_panel_setup_mode_chooses_recipes_and_runs(tiny, tmp_path):
    import nbopt
    from nbopt.widget import Panel

    net, calib, val = tiny
    panel = Panel(net, calib=calib, eval=val, store=str(tmp_path / "st"), backends=[BACKEND])
    assert panel.mode == "setup" and panel.status == "idle"
    assert panel.backends == [BACKEND]
    assert sorted(panel.available_backends) == ["fake", "fake-mixed", "fake-train", "fake-wide"]  # installed, taking it
    from fake_backend import FakeBackend

    assert panel.available_recipes == sorted(FakeBackend.handlers)
    panel.recipes = ["fp16"]
    panel.backends = ["fake-wide"]  # what the user ticks is what runs
    send(panel, {"type": "run"})  # the Run button
    panel.wait(120)
    assert panel.status == "done", panel.message
    assert [r["name"] for r in panel.rows] == ["fake-wide:baseline", "fake-wide:fp16"]
    assert panel.best() is panel.study.candidates[1]  # smaller, and as accurate
    assert nbopt.Panel is Panel


def test_panel_run_error_is_shown_in_panel(tiny, tmp_path):
    from nbopt.widget import Panel

    net, calib, val = tiny
    panel = Panel(net, calib=calib, eval=val, metric="accuracy", store=str(tmp_path / "st"), backends=[BACKEND])
    panel.recipes = ["int9-magic"]
    panel.backends = [BACKEND]
    panel.start().wait(60)
    assert panel.status == "error"
    assert "int9-magic" in panel.message and "\n" not in panel.message


def test_panel_follows_failed_and_skipped_rows(tiny, tmp_path, monkeypatch):
    import dataclasses

    from fake_backend import FakeBackend
    from nbopt.study import Study
    from nbopt.widget import Panel

    def broken(*args):
        raise RuntimeError("converter crashed")

    monkeypatch.setitem(FakeBackend.handlers, "fp16", dataclasses.replace(FakeBackend.handlers["fp16"], handler=broken))
    net, calib, val = tiny
    study = Study(net, calib=calib, eval=val, backends=[BACKEND], store=tmp_path / "st", progress=False,
                  recipes=["fp16", {"int8-static": {"calibration": "entropy"}}, "int8-dynamic"],
                  executor="inline")  # the patched handler lives in this process
    panel = Panel.follow(study)
    seen = []
    panel.observe(lambda change: seen.append(len(change["new"])), names="rows")
    panel.start().wait(60)
    assert panel.status == "done" and panel.total == panel.done == 4
    assert [r["status"] for r in panel.rows] == ["ok", "failed", "skipped", "ok"]
    assert panel.rows[1]["error"] == "RuntimeError: converter crashed" and "entropy" in panel.rows[2]["error"]
    assert seen[:4] == [1, 2, 3, 4]  # a row appears as each candidate ends, not all at the end
    assert len(panel.durations) == 3  # a skipped row took no time
    assert "artifact_files" not in panel.rows[0]  # internal keys never reach the front end
    json.dumps(panel.rows, allow_nan=False)


# ---------------------------------------------------------------------------------- layer sensitivity
@pytest.fixture
def onnx_tiny(tiny_digits_cnn, digits):
    pytest.importorskip("onnxruntime")
    xtr, _, xval, yval = digits
    return tiny_digits_cnn, xtr[:64], (xval, yval)


def test_fake_backend_has_no_layer_sensitivity(tiny, tmp_path):
    """A backend without the capability: the section stays empty, with no note, and the sweep is done."""
    from nbopt.widget import Panel

    net, calib, val = tiny
    panel = Panel(net, calib=calib, eval=val, store=str(tmp_path / "st"), backends=[BACKEND], recipes=["fp16"])
    panel.start().wait(60)
    assert panel.status == "done", panel.message
    assert panel.study.sensitivity_backends == [] and panel.sensitivity == [] and panel.sensitivity_note == ""


@pytest.mark.slow
def test_panel_fills_layer_sensitivity_after_sweep(onnx_tiny, tmp_path, monkeypatch):
    """After the sweep, in its thread, the panel holds the onnx per-layer sensitivity table, ranked."""
    import nbopt.widget as widget
    from nbopt.widget import Panel

    net, calib, val = onnx_tiny
    panel = Panel(net, calib=calib, eval=val, store=str(tmp_path / "st"))
    panel.recipes, panel.backends = ["int8-dynamic"], ["onnx"]
    threads = []
    original = Panel._fill_sensitivity

    def spy(self):
        threads.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(Panel, "_fill_sensitivity", spy)
    panel.start().wait(120)
    assert panel.status == "done", panel.message
    assert threads == ["nbopt-sweep"]  # computed in the sweep thread, never on the main one
    rows = panel.sensitivity
    assert rows and panel.sensitivity_note == ""
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert set(rows[0]) == {"node", "op_type", "params", "rel_error", "rank"}
    assert {"Conv"} <= {r["op_type"] for r in rows} <= {"Conv", "Gemm", "MatMul"}  # conv, conv, linear, linear
    errs = [r["rel_error"] for r in rows if r["rel_error"] is not None]
    assert errs == sorted(errs, reverse=True) and errs[0] > 0
    json.dumps(rows, allow_nan=False)
    table = panel.study.sensitivity_table("onnx")  # the same table, cached on the study
    assert [r["node"] for r in rows] == list(table["node"])

    # too many weight nodes: skipped with a note, unless a mixed-precision candidate already measured it
    monkeypatch.setattr(Panel, "_fill_sensitivity", original)
    monkeypatch.setattr(widget, "SENSITIVITY_MAX_NODES", 1)
    panel.study.sensitivity.clear()
    panel._fill_sensitivity()
    assert panel.sensitivity == rows  # the backend's cache (as after mixed-precision) makes it cheap
    prep = panel.study.prepared("onnx")
    prep._cache.clear()
    for cached in prep.dir.glob("sensitivity_*.json"):  # the on-disk copy of the table
        cached.unlink()
    panel.study.sensitivity.clear()
    panel.sensitivity = []
    panel._fill_sensitivity()
    assert panel.sensitivity == [] and "more than 1" in panel.sensitivity_note

    # a failure is one line in the section, never an exception
    monkeypatch.setattr(widget, "SENSITIVITY_MAX_NODES", 200)
    monkeypatch.setattr(type(panel.study), "sensitivity_table", lambda self, b="onnx": 1 / 0)
    panel._fill_sensitivity()
    assert panel.sensitivity == []
    assert panel.sensitivity_note == "Layer sensitivity failed: ZeroDivisionError: division by zero"
    assert panel.running == ""


@pytest.mark.slow
def test_panel_has_no_sensitivity_without_calibration_data(onnx_tiny, tmp_path):
    from nbopt.widget import Panel

    net, _calib, val = onnx_tiny
    panel = Panel(net, eval=val, store=str(tmp_path / "st"))
    panel.recipes, panel.backends = ["fp16"], ["onnx"]
    panel.start().wait(120)
    assert panel.status == "done", panel.message
    assert panel.sensitivity == [] and panel.sensitivity_note == ""
