"""Isolated, parallel sweeps: every candidate in a worker process, crashes and hangs as rows, workers=N,
models defined in a notebook or script, and the measurement gate."""
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import nbopt
from nbopt.backends import _PACKAGES, register_backend
from nbopt.errors import NboptError
from nbopt.pool import MeasureGate

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def crashy():
    """The crashing backend (tests/crashy_backend.py), registered for this module only: the panel's setup
    mode lists every registered backend that takes the model."""
    register_backend("crashy", "crashy_backend", "CrashyBackend", probe="numpy")
    yield
    _PACKAGES.pop("crashy", None)


@pytest.fixture
def args(fake_model, fake_data, tmp_path, quick_latency):
    xtr, ytr, xval, yval = fake_data
    return dict(model=fake_model, calib=(xtr, ytr), eval=(xval, yval), store=tmp_path / "store", progress=False)


def test_native_crashes_are_rows_and_the_sweep_goes_on(args):
    study = nbopt.optimize(backends=["crashy"], recipes=["int8-dynamic", "prune-structured", "int8-weight-only",
                                                        "fp16"], **args)
    rows = study.results.set_index("name")
    assert rows.loc["crashy:baseline", "status"] == "ok" and rows.loc["crashy:fp16", "status"] == "ok"
    segv = rows.loc["crashy:int8-dynamic"]
    assert segv["status"] == "failed"
    assert segv["error"] == ("The worker died with signal 11 (SIGSEGV) while building crashy:int8-dynamic; "
                             "the sweep went on.")
    assert "signal 6 (SIGABRT)" in rows.loc["crashy:prune-structured", "error"]
    assert rows.loc["crashy:int8-weight-only", "error"] == "RuntimeError: the converter said no"
    assert "SIGSEGV" in Path(segv["log"]).read_text()  # the row's log says it too
    again = nbopt.optimize(backends=["crashy"], recipes=["fp16"], **args)  # dead workers were replaced
    assert (again.results["status"] == "ok").all()


def test_a_hang_is_a_timed_out_row(args):
    t0 = time.monotonic()
    study = nbopt.optimize(backends=["crashy"], recipes=["int4-weight-only", "fp16"], timeout_s=3, **args)
    rows = study.results.set_index("name")
    assert rows.loc["crashy:int4-weight-only", "error"].startswith(
        "Timed out after 3 s while building crashy:int4-weight-only")
    assert rows.loc["crashy:fp16", "status"] == "ok"
    assert time.monotonic() - t0 < 60


def test_two_workers_give_the_same_rows_as_one(args, tmp_path):
    recipes = ["fp16", "int8-dynamic", {"int8-static": {"per_channel": [True, False]}},
               {"prune-unstructured": {"amount": [0.2, 0.5, 0.8]}}]
    one = nbopt.optimize(backends=["fake"], recipes=recipes, workers=1, **args)
    args["store"] = tmp_path / "other"
    two = nbopt.optimize(backends=["fake"], recipes=recipes, workers=2, **args)
    cols = ["status", "size_bytes", "accuracy", "accuracy_drop", "format"]
    a, b = (s.results.set_index("name")[cols].sort_index() for s in (one, two))
    assert len(a) == 8 and a.equals(b)


def test_workers_auto_and_bad_settings_are_one_sentence(args):
    assert nbopt.Study(backends=["fake"], recipes=["fp16"], workers="auto", **args).workers >= 1
    for bad, message in ((dict(workers=0), "workers must be a positive integer or 'auto', got 0."),
                         (dict(timeout_s=-1), "timeout_s must be a number of seconds > 0, got -1."),
                         (dict(executor="threads"), "Unknown executor 'threads'; known executors: local, ray, "
                                                    "inline.")):
        with pytest.raises(NboptError) as err:
            nbopt.Study(backends=["fake"], recipes=["fp16"], **bad, **args)
        assert str(err.value) == message


def test_a_model_that_cannot_reach_a_worker_names_the_way_out(args):
    class Locked(type(args["model"])):
        pass

    model = Locked(args["model"].weights, args["model"].bias)
    model.lock = threading.Lock()  # cannot be pickled
    args["model"] = model
    with pytest.raises(NboptError, match=r"nbopt cannot send the model \(Locked\) to its worker processes "
                                         r"\(TypeError: cannot pickle '_thread.lock' object\): define its class in a "
                                         r"module .* or pass an exported file"):
        nbopt.Study(backends=["fake"], recipes=["fp16"], **args)


def test_a_script_with_its_own_model_class_and_no_main_guard(tmp_path):
    """A model class (and a lambda) defined in a script's __main__ reaches the workers, and the workers do
    not re-run the script (multiprocessing's spawn would: a sweep without end)."""
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, nbopt, nbopt.backends
        from fake_backend import FakeModel
        nbopt.backends.register_backend("fake", "fake_backend", "FakeBackend", probe="numpy")

        class Scaled(FakeModel):  # defined here, in __main__
            pass

        scale = lambda w: w * 2
        rng = np.random.default_rng(0)
        x = rng.random((40, 8), dtype=np.float32); y = rng.integers(0, 3, 40)
        m = Scaled(scale(rng.random((8, 3)).astype(np.float32)), np.zeros(3, np.float32))
        s = nbopt.optimize(m, calib=(x, y), eval=(x, y), backends=["fake"], recipes=["fp16"], store="st",
                           progress=False, workers=2)
        print("STATUS", list(s.results["status"]))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("STATUS") == 1 and "STATUS ['ok', 'ok']" in proc.stdout


def test_measurements_wait_for_builds_and_builds_wait_for_measurements(tmp_path):
    gate, log = MeasureGate(tmp_path), []

    def build(name, hold):
        with gate.building():
            log.append(f"{name} in")
            time.sleep(hold)
            log.append(f"{name} out")

    def measure():
        with gate.measuring():
            log.append("measure in")
            time.sleep(0.3)
            log.append("measure out")

    first = threading.Thread(target=build, args=("a", 0.5))
    first.start()
    time.sleep(0.1)
    m = threading.Thread(target=measure)
    m.start()
    time.sleep(0.1)
    late = threading.Thread(target=build, args=("b", 0.1))  # arrives while the measurement waits
    late.start()
    for t in (first, m, late):
        t.join(10)
    assert log == ["a in", "a out", "measure in", "measure out", "b in", "b out"]


@pytest.mark.slow
def test_a_notebook_style_torch_model_with_a_lambda_reaches_the_workers(tmp_path):
    torch = pytest.importorskip("torch")
    script = tmp_path / "nb.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, torch, nbopt

        class Net(torch.nn.Module):  # as a notebook cell defines it: in __main__, with a lambda
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(8, 3)
                self.act = lambda t: torch.relu(t)

            def forward(self, x):
                return self.act(self.fc(x))

        x = np.random.default_rng(0).random((32, 8), dtype=np.float32); y = np.arange(32) % 3
        s = nbopt.optimize(Net().eval(), calib=(x, y), eval=(x, y), recipes=["fp16", "int8-dynamic"],
                           backends=["torch", "onnx"], store="st", progress=False, measure_memory=False)
        print("STATUS", list(s.results["status"]))
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STATUS ['ok', 'ok', 'ok', 'ok', 'ok', 'ok']" in proc.stdout, proc.stdout
    assert proc.stderr == ""
