"""executor="ray": the same sweep as Ray tasks on a local Ray of two CPUs (one Ray for the module).

The three ways a job travels are tested: as a local worker gets it (one node on this machine), and as a
cluster gets it with the store seen by the node or not (files and data as bytes); the last two are forced
with ``RayExecutor.single_machine = False`` and ``RayExecutor.share_paths = False``.
"""
import _thread
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import nbopt  # noqa: E402
from nbopt.backends import register_backend  # noqa: E402
from nbopt.errors import NboptError  # noqa: E402
from nbopt.ray_executor import RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow

RECIPES = ["fp16", "int8-dynamic", {"int8-static": {"per_channel": [True, False]}},
           {"prune-unstructured": {"amount": [0.2, 0.5, 0.8]}}]
COLS = ["status", "size_bytes", "accuracy", "accuracy_drop", "format", "size_breakdown"]


@pytest.fixture(scope="module", autouse=True)
def crashy():
    """The crashing backend of tests/crashy_backend.py, registered for this module only (the panel lists the
    registered backends: other modules must not see it)."""
    from nbopt.backends import _PACKAGES

    before = _PACKAGES.get("crashy")
    register_backend("crashy", "crashy_backend", "CrashyBackend", probe="numpy")
    yield
    if before is None:
        _PACKAGES.pop("crashy", None)
    else:
        _PACKAGES["crashy"] = before


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def args(fake_model, fake_data, tmp_path, quick_latency):
    xtr, ytr, xval, yval = fake_data
    return dict(model=fake_model, calib=(xtr, ytr), eval=(xval, yval), store=tmp_path / "store", progress=False)


@pytest.fixture(params=["local", "cluster-shared", "cluster-bytes"])
def transfer(request, monkeypatch):
    """local: jobs as a local worker gets them; cluster-shared: what a cluster sends, the store seen by the node;
    cluster-bytes: what a cluster sends, files and data travelling as bytes."""
    if request.param != "local":
        monkeypatch.setattr(RayExecutor, "single_machine", False)
    monkeypatch.setattr(RayExecutor, "share_paths", request.param != "cluster-bytes")
    return request.param


def _rows(study):
    return study.results.set_index("name")[COLS].sort_index()


def test_ray_gives_the_rows_of_local_workers_and_streams_events(args, tmp_path, transfer):
    local = nbopt.optimize(backends=["fake"], recipes=RECIPES, workers=1, **args)
    events = []
    args["store"] = tmp_path / "ray"
    study = nbopt.optimize(backends=["fake"], recipes=RECIPES, executor="ray", workers=2,
                           callbacks=[lambda e, p: events.append(e)], **args)
    assert len(study.results) == 8 and _rows(study).equals(_rows(local))
    # the store holds the rows and the files: a re-run is served from it, with every artifact in place
    for row in study.results.itertuples():
        assert Path(row.artifact_path).is_file() and Path(row.artifact_path).is_relative_to(tmp_path / "ray")
        assert not list(Path(row.artifact_path).parent.glob(".nbopt-ray-probe"))
    again = nbopt.optimize(backends=["fake"], recipes=RECIPES, executor="ray", workers=2, **args)
    assert _rows(again).equals(_rows(study))
    # rows arrive as candidates finish: finished events come between started ones, not all at the end
    kinds = [e for e in events if e.startswith("candidate_")]
    assert kinds.count("candidate_finished") == 8
    last_start = max(i for i, e in enumerate(kinds) if e == "candidate_started")
    assert sum(e == "candidate_finished" for e in kinds[:last_start]) >= 4, kinds
    # each candidate's log is in the store
    assert all(Path(c.row["log"]).is_file() and Path(c.row["log"]).is_relative_to(tmp_path / "ray")
               for c in study.candidates)


def test_a_crash_is_a_failed_row_and_the_sweep_goes_on(args, transfer):
    study = nbopt.optimize(backends=["crashy"], recipes=["int8-dynamic", "int8-weight-only", "fp16"],
                           executor="ray", workers=2, **args)
    rows = study.results.set_index("name")
    assert rows.loc["crashy:baseline", "status"] == "ok" and rows.loc["crashy:fp16", "status"] == "ok"
    segv = rows.loc["crashy:int8-dynamic"]
    assert segv["status"] == "failed"
    assert segv["error"].startswith("The worker died while building crashy:int8-dynamic (Ray: ")
    assert segv["error"].endswith("; the sweep went on.")
    assert rows.loc["crashy:int8-weight-only", "error"] == "RuntimeError: the converter said no"
    assert "The worker died" in Path(study.candidates[[c.name for c in study.candidates].index(
        "crashy:int8-dynamic")].row["log"]).read_text()


def test_a_hang_times_out_and_an_interrupt_cancels_the_tasks(args):
    t0 = time.monotonic()
    study = nbopt.optimize(backends=["crashy"], recipes=["int4-weight-only", "fp16"], executor="ray", workers=2,
                           timeout_s=4, **args)
    rows = study.results.set_index("name")
    assert rows.loc["crashy:int4-weight-only", "error"].startswith(
        "Timed out after 4 s while building crashy:int4-weight-only")
    assert rows.loc["crashy:fp16", "status"] == "ok"
    assert time.monotonic() - t0 < 40

    study = nbopt.Study(backends=["crashy"], recipes=["int4-weight-only"], executor="ray", **args)

    def interrupt(event, payload):
        if event == "candidate_started" and payload["recipe"] == "int4-weight-only":
            threading.Timer(1.5, _thread.interrupt_main).start()

    study.on(interrupt)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="sweep interrupted"):
        study.run()
    assert time.monotonic() - t0 < 20
    assert not study._executor.busy()
    assert [c.name for c in study.candidates] == ["crashy:baseline"]


def test_the_measure_lock_forgets_a_holder_that_died():
    from nbopt.ray_executor import MeasureLock

    lock = ray.remote(num_cpus=0)(MeasureLock).remote()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    assert ray.get(lock.acquire.remote("build", child.pid))
    t0 = time.monotonic()
    waiting = lock.acquire.remote("measure", child.pid + 10**7)  # a pid that does not exist gives up
    assert ray.get(waiting) is False
    import os

    measured = lock.acquire.remote("measure", os.getpid())  # waits for the build of the child
    time.sleep(0.5)
    assert not ray.wait([measured], timeout=0)[0]
    child.wait()
    assert ray.get(measured, timeout=10) is True and time.monotonic() - t0 > 1.0
    assert ray.get(lock.state.remote())["measurer"] == os.getpid()
    build = lock.acquire.remote("build", os.getpid())  # a build waits for the measurement
    assert not ray.wait([build], timeout=0.5)[0]
    ray.get(lock.release.remote("measure", os.getpid()))
    assert ray.get(build, timeout=5) is True


def test_an_unreachable_address_is_one_sentence_at_once(args):
    t0 = time.monotonic()
    with pytest.raises(NboptError) as err:
        nbopt.Study(backends=["fake"], recipes=["fp16"], executor="ray", ray_address="ray://127.0.0.1:1", **args)
    assert time.monotonic() - t0 < 15
    message = str(err.value)
    assert message.startswith("nbopt cannot reach the Ray cluster at 'ray://127.0.0.1:1' (connection refused): ")
    assert message.endswith("or pass ray_address=None for a local Ray.") and message.count(". ") == 0
    with pytest.raises(NboptError, match="is not an address of a Ray cluster"):
        nbopt.Study(backends=["fake"], recipes=["fp16"], executor="ray", ray_address="no-port", **args)


def test_without_ray_it_says_the_pip_command(args, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(NboptError) as err:
        nbopt.Study(backends=["fake"], recipes=["fp16"], executor="ray", **args)
    assert str(err.value) == "executor='ray' needs Ray: pip install 'nbopt[ray]'."


def test_cancel_pending_cancels_the_tasks_that_wait_for_a_cpu(args, tmp_path):
    """Three hanging builds on two CPUs: the third waits for a CPU; cancel_pending() cancels it alone."""
    from nbopt.backends import backend_spec
    from nbopt.jobs import CandidateJob

    study = nbopt.Study(backends=["crashy"], recipes=["int4-weight-only"], executor="ray", workers=3, **args)
    ex, item, prep = study._executor, study.plan[0], study._prep["crashy"]
    for i in range(3):
        job = CandidateJob(f"k{i}", f"hang {i}", "crashy", backend_spec("crashy"), item.recipe, prep.get("prepared"),
                           study._model_path, study.eval_data, study.calib_data, 0, study.latency, False,
                           study.store.workdir(), tmp_path / f"{i}.log")
        ex.submit(job, i)
    deadline = time.monotonic() + 30
    while sum(t.started is not None for t in ex._tasks.values()) < 2 and time.monotonic() < deadline:
        assert ex.wait(poll=0.2, timeout=0.5) == []
    assert ex.capacity == 0
    waiting = [t.token for t in ex._tasks.values() if t.started is None]
    assert ex.cancel_pending() == waiting and len(waiting) == 1
    assert ex.capacity == 1 and ex.busy()
    ex.cancel()
    assert not ex.busy() and ex.capacity == 3
    study.close()
