"""Shared fixtures, offline settings and the test tiers.

Fast tier (``pytest -m "not slow"``): the engine (study, store, Pareto, report, magic, panel) on the fake
in-memory backend of ``fake_backend.py``, registered here as ``"fake"`` (and ``"fake-wide"``). Slow tier
(``-m slow``): real converters and runtimes, notebooks and browsers. Models the real-backend tests need are
trained once per test run, in the session fixtures below.
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nbopt.backends import register_backend  # noqa: E402

TESTS = Path(__file__).resolve().parent
FAKE_BACKENDS = {"fake": "FakeBackend", "fake-wide": "WideFakeBackend", "fake-train": "TrainingFakeBackend",
                 "fake-mixed": "MixedFakeBackend"}
for _name, _cls in FAKE_BACKENDS.items():  # tests/ is on sys.path (rootdir conftest, no __init__.py)
    register_backend(_name, "fake_backend", _cls, probe="numpy")


# ------------------------------------------------------------------------------------------ tiers
def pytest_ignore_collect(collection_path, config):
    """``-m "not slow"``: a test module marked slow as a whole (a module-level ``pytestmark`` naming
    ``slow``) is not imported at all, which saves importing torch / TensorFlow / ONNX just to deselect it
    (half the fast tier's time on 2 cores). Any other ``-m`` expression collects as usual."""
    if " ".join(str(config.getoption("markexpr") or "").split()) != "not slow":
        return None
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if _marked_slow(collection_path) else None


def _marked_slow(path: Path) -> bool:
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False  # let pytest collect it and report the problem
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
                return any(isinstance(n, ast.Attribute) and n.attr == "slow" for n in ast.walk(node.value))
    return False


# ------------------------------------------------------------------------------------------ fake tier
@pytest.fixture(scope="session")
def fake_data():
    """Digits as flat (N, 64) float32 inputs in [0, 1]: (xtr, ytr, xval, yval), for calib=(xtr, ytr),
    eval=(xval, yval)."""
    from nbopt.demo import digits_arrays

    xtr, ytr, xval, yval = digits_arrays(seed=0)
    return xtr.reshape(len(xtr), -1), ytr, xval.reshape(len(xval), -1), yval


@pytest.fixture(scope="session")
def fake_model(fake_data):
    """A FakeModel fitted by ridge least squares on one-hot labels: ~0.94 accuracy on the eval split."""
    from fake_backend import FakeModel

    xtr, ytr, _, _ = fake_data
    x = np.c_[xtr, np.ones(len(xtr))].astype(np.float64)
    coef = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ np.eye(10)[ytr])
    return FakeModel(coef[:-1].astype(np.float32), coef[-1].astype(np.float32))


@pytest.fixture
def quick_latency(monkeypatch):
    """Studies built in the test (also by the magic and the panel) time 5 runs after 1 warm-up instead of
    0.3 s per candidate: latency is still measured, only with fewer runs."""
    import nbopt.study
    from nbopt.evaluator import LatencySettings

    def quick(**given):  # what the study sets itself (batch_size, ...) is kept
        return LatencySettings(**{"warmup": 1, "min_runs": 5, "min_seconds": 0.0, **given})

    monkeypatch.setattr(nbopt.study, "LatencySettings", quick)


# ------------------------------------------------------------------------------------------ real models
@pytest.fixture(scope="session")
def digits():
    from nbopt.demo import digits_arrays

    return digits_arrays(seed=0)


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """The digits CNN (width 32), trained once per run (seconds)."""
    pytest.importorskip("torch")
    from nbopt.demo import train_digits_cnn

    return train_digits_cnn(epochs=6, data=digits)


@pytest.fixture(scope="session")
def tiny_digits_cnn(digits):
    """A narrow digits CNN (width 8, hidden 32), trained once per run: fast to export and quantize."""
    pytest.importorskip("torch")
    from nbopt.demo import train_digits_cnn

    return train_digits_cnn(epochs=3, width=8, hidden=32, data=digits)


@pytest.fixture()
def store(tmp_path):
    return tmp_path / "store"


def run_cli(*argv):
    """``nbopt``'s command line in-process, its stdout / stderr captured (argparse's own exits included):
    a SimpleNamespace(rc, out, err). Used by the CLI and reopen tests."""
    import contextlib
    import io
    from types import SimpleNamespace

    from nbopt.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())
