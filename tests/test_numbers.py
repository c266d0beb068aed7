"""Numbers that never lie, on real backends: store keys from the compiled graph, the metric recomputed from
stored outputs, accuracy at the deployed batch, non-finite data and results, interrupts, string labels."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nbopt  # noqa: E402
from nbopt.errors import NboptError  # noqa: E402

pytestmark = pytest.mark.slow


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((96, 16), dtype=np.float32)
    net = Net().eval()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()  # the model is right on most examples
    y[::7] = (y[::7] + 1) % 4  # and wrong on some
    return x, y


def run(model, data, store, events=None, **kw):
    x, y = data
    kw.setdefault("recipes", ["fp16"])
    return nbopt.optimize(model, calib=(x, y), eval=(x, y), store=store, progress=False, measure_memory=False,
                          callbacks=[lambda e, p: events.append((e, p))] if events is not None else (), **kw)


def built(events) -> list[str]:
    return [p["name"] for e, p in events if e == "candidate_started" and not p["cached"]]


def test_editing_forward_re_measures(data, tmp_path):
    """Same class, same weights, another forward(): nothing may be served from the store."""
    class Edited(Net):
        pass

    model = Edited().eval()
    first = run(model, data, tmp_path / "s")
    events = []
    Edited.forward = lambda self, x: self.fc2(self.fc1(x)) * 0  # the model now answers class 0 always
    second = run(model, data, tmp_path / "s", events)
    assert built(events) == ["torch:baseline", "torch:fp16"]
    expected = float(np.mean(data[1] == 0))
    assert second.results["accuracy"].tolist() == pytest.approx([expected, expected])
    assert first.results["accuracy"][0] != pytest.approx(expected)


def test_changing_the_metric_rebuilds_nothing_and_is_never_stale(data, tmp_path):
    threshold = {"value": 0.0}

    def above(outputs, labels):  # reads a notebook variable
        return float(np.mean(outputs.max(1) > threshold["value"]))

    run(Net().eval(), data, tmp_path / "s", metric=above)
    events = []
    threshold["value"] = 1e9
    study = run(Net().eval(), data, tmp_path / "s", events, metric=above)
    assert built(events) == []  # served from the store...
    assert study.results["accuracy"].tolist() == [0.0, 0.0]  # ...but scored with today's metric
    study = run(Net().eval(), data, tmp_path / "s", events, metric="f1")
    assert built(events) == [] and study.results["accuracy"][0] > 0.5


def test_a_metric_that_returns_nan_is_a_failed_row_never_best(data, tmp_path):
    def nan_for_small(outputs, labels):
        return float("nan") if outputs.dtype == np.float32 and outputs.std() < 0 else float(np.nan)

    study = run(Net().eval(), data, tmp_path / "s", metric=nan_for_small)
    rows = study.results
    assert (rows["status"] == "failed").all()
    assert rows["error"].str.contains("metric returned nan").all()
    assert study.best() is None and study.pareto().empty


def test_non_finite_inputs_are_one_sentence(data):
    x, y = data
    bad = x.copy()
    bad[3, 2], bad[5, 0] = np.inf, np.nan
    with pytest.raises(NboptError, match=r"'input' has 2 NaN or inf values") as err:
        nbopt.optimize(Net().eval(), calib=(x, y), eval=(bad, y), store=None, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(NboptError, match="calib data"):
        nbopt.optimize(Net().eval(), calib=(bad, y), eval=(x, y), store=None, progress=False)


def test_every_artifact_re_run_at_batch_1_gives_the_tables_accuracy(data, tmp_path):
    """What the table says is what the shipped file does at the phone's batch size."""
    x, y = data
    study = run(Net().eval(), data, tmp_path / "s", backends=["torch", "onnx"],
                recipes=["fp16", "int8-dynamic", "int8-static"])
    assert (study.results["status"] == "ok").all(), study.results[["name", "error"]]
    for cand in study.candidates:
        runner = study.backends[cand.row["backend"]].load(
            __import__("nbopt.backends.base", fromlist=["Artifact"]).Artifact(
                cand.row["artifact_path"], cand.row["format"],
                [p for p in cand.row["artifact_files"]]))
        outs = np.concatenate([runner({"input": x[i:i + 1]}) for i in range(len(x))])
        assert float(np.mean(outs.argmax(1) == y)) == pytest.approx(cand.row["accuracy"]), cand.name
        assert cand.row["batch_size"] == 1


def test_batch_size_sets_latency_and_accuracy_batch(data, tmp_path):
    study = run(Net().eval(), data, tmp_path / "s", backends=["onnx"], batch_size=8)
    assert study.results["batch_size"].tolist() == [8, 8]
    with pytest.raises(NboptError, match="batch_size must be a positive integer"):
        run(Net().eval(), data, tmp_path / "s", batch_size=0)


def test_an_interrupt_keeps_and_stores_what_finished_then_propagates(data, tmp_path):
    seen = []

    def interrupt_after_two(event, payload):
        if event == "candidate_finished":
            seen.append(payload["row"]["name"])
            if len(seen) == 2:
                raise KeyboardInterrupt

    x, y = data
    study = nbopt.Study(Net().eval(), calib=(x, y), eval=(x, y), recipes=["fp16", "int8-dynamic", "int8-static"],
                        store=tmp_path / "s", progress=False, measure_memory=False)
    study._callbacks.append(interrupt_after_two)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="last_study"):
        study.run()
    partial = nbopt.last_study()
    assert partial is study and study.stopped and len(study.candidates) == 2
    events = []
    again = run(Net().eval(), data, tmp_path / "s", events, recipes=["fp16", "int8-dynamic", "int8-static"])
    assert built(events) == ["torch:int8-dynamic", "torch:int8-static"]  # the two finished were stored
    assert len(again.candidates) == 4


def test_string_labels_map_through_class_names(data, tmp_path):
    x, y = data
    names = ["cat", "dog", "bird", "fish"]
    text = np.array([names[i] for i in y])
    study = nbopt.optimize(Net().eval(), eval=(x, text), labels=names, recipes=["fp16"], store=tmp_path / "s",
                           progress=False, measure_memory=False)
    ints = run(Net().eval(), data, tmp_path / "s2")
    assert study.results["accuracy"].tolist() == ints.results["accuracy"].tolist()
    with pytest.raises(NboptError, match=r"pass labels=\[\.\.\.\]"):
        nbopt.optimize(Net().eval(), eval=(x, text), store=None, progress=False)
    with pytest.raises(NboptError, match="'fish' are not among"):
        nbopt.optimize(Net().eval(), eval=(x, text), labels=names[:3], store=None, progress=False)


def test_nothing_is_left_in_the_system_temp_folder(tmp_path):
    """Exported models, data caches and candidates' scratch live under the store, and are gone when the
    process ends; the system temp folder is never used."""
    import os
    import subprocess
    import sys
    import textwrap

    temp = tmp_path / "systemp"
    temp.mkdir()
    script = textwrap.dedent("""
        import numpy as np, torch, nbopt
        net = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
        x = np.random.default_rng(0).random((40, 8), dtype=np.float32); y = np.arange(40) % 4
        s = nbopt.optimize(net, calib=(x, y), eval=(x, y), backends=["torch", "onnx"], recipes=["fp16"],
                           store="store", progress=False, measure_memory=False)
        assert (s.results["status"] == "ok").all(), s.results
    """)
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    left = [p.name for p in temp.iterdir() if "nbopt" in p.name or p.name.startswith("tmp")]
    assert left == []
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_editing_forward_of_a_class_from_the_users_own_module_re_measures(data, tmp_path, monkeypatch):
    """The class lives in a .py next to the notebook (importable by the workers too): the workers must
    run the code as it is in the notebook now, not re-import the file."""
    (tmp_path / "mynet.py").write_text(
        "import torch\n\n"
        "class MyNet(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        torch.manual_seed(0)\n"
        "        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc2(torch.relu(self.fc1(x)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynet

    model = mynet.MyNet().eval()
    run(model, data, tmp_path / "s")
    monkeypatch.setattr(mynet.MyNet, "forward", lambda self, x: self.fc2(self.fc1(x)) * 0)
    events = []
    study = run(model, data, tmp_path / "s", events)
    assert built(events) == ["torch:baseline", "torch:fp16"]
    assert study.results["accuracy"].tolist() == pytest.approx([float(np.mean(data[1] == 0))] * 2)
