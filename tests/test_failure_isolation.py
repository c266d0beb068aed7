"""One backend's failure never ends the study: a backend that cannot export or convert the model is a
failed baseline row with the real cause in one clean line, and the other backends run. Models that return
a cache or several outputs are exported through their first tensor output, with the cache off, and the
baseline's notes say so."""
import warnings

import numpy as np
import pytest

import nbopt
from fake_backend import FakeBackend
from nbopt.backends import _PACKAGES, register_backend
from nbopt.errors import CandidateError, NboptError, one_line
from nbopt.evaluator import LatencySettings

FAST = dict(measure_memory=False, progress=False, latency=LatencySettings(warmup=1, min_runs=5, min_seconds=0.0))
ANSI = "\x1b["
# what torch.onnx's dynamo exporter raises for a model that returns a transformers cache (torch 2.13)
EXPORTER_TEXT = (
    "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting the model to "
    "ONNX. Next steps:\n- Modify the model code for `torch.export.export` to succeed.\n- Create an issue in the "
    "PyTorch GitHub repository against the \x1b[96m*torch.export*\x1b[0m component.\n\n## Exception summary\n\n"
    "<class 'RuntimeError'>: Found <class 'transformers.cache_utils.DynamicCache'> in output, which is not a "
    "known type. If this type holds tensors, you need to register a pytree for it. See "
    "https://github.com/pytorch/functorch/issues/475 for a brief explanation why. If you don't need to register "
    "a pytree, please leave a comment explaining your use case and we'll make this more ergonomic to deal with\n\n"
    "(Refer to the full stack trace above for more information.)")
CAUSE = "RuntimeError: Found DynamicCache in output, which is not a known type."


class TorchExportError(RuntimeError):
    pass


def raise_like_the_exporter():
    try:
        raise RuntimeError(EXPORTER_TEXT.split("<class 'RuntimeError'>: ")[1].split("\n")[0])
    except RuntimeError as cause:
        raise TorchExportError(EXPORTER_TEXT) from cause


class ExporterFails(FakeBackend):
    name = "fake-exporter-fails"

    def prepare(self, model, example):
        raise_like_the_exporter()


class RefusesModel(FakeBackend):
    name = "fake-refuses"

    def prepare(self, model, example):
        raise NboptError("The fake-refuses backend has no converter for this model: use another backend.")


@pytest.fixture(scope="module", autouse=True)
def failing_backends():
    """Registered for this module only (the panel lists registered backends); the workers import them
    from this module too."""
    names = {"fake-exporter-fails": "ExporterFails", "fake-refuses": "RefusesModel"}
    for name, cls in names.items():
        register_backend(name, "test_failure_isolation", cls, probe="numpy")
    yield
    for name in names:
        _PACKAGES.pop(name, None)


@pytest.fixture
def args(fake_model, fake_data, tmp_path):
    xtr, ytr, xval, yval = fake_data
    return dict(model=fake_model, calib=(xtr, ytr), eval=(xval, yval), store=tmp_path / "store", **FAST)


# -- the error text ----------------------------------------------------------------------------------------
def test_a_library_error_becomes_its_real_cause_on_one_clean_line():
    with pytest.raises(TorchExportError) as err:
        raise_like_the_exporter()
    assert one_line(err.value) == CAUSE
    assert one_line(TorchExportError(EXPORTER_TEXT)) == CAUSE  # no chain: the exporter's own summary
    assert one_line(err.value, with_type=False) == CAUSE.split(": ", 1)[1]
    path = ("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-"
            "linux-gnu.so")
    assert one_line(OSError(f"Could not load {path}: bad ELF")) == \
        "OSError: Could not load site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: bad ELF"
    deep = "/tmp/nbopt-store-abcdefgh/scratch/prepare-onnx/onnx-0123456789abcdef/pre/model.onnx"
    assert one_line(ValueError(f"cannot open {deep}")) == "ValueError: cannot open .../pre/model.onnx"
    assert one_line(ValueError("\n\n  \x1b[1mreal\x1b[0m\n  detail")) == "ValueError: real"
    assert one_line(ValueError()) == "ValueError"
    # nbopt's own sentences are kept as written (paths included: they are the user's)
    mine = NboptError(f"ONNX model file '{deep}' does not exist: check the path.")
    assert one_line(mine) == str(mine)
    assert one_line(CandidateError("x"), with_type=True) == "CandidateError: x"


# -- failure isolation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("executor", ["inline", "local"])
def test_a_backend_that_cannot_take_the_model_is_a_failed_baseline_row(args, executor):
    study = nbopt.optimize(**args, backends=["fake", "fake-exporter-fails", "fake-refuses"],
                           recipes=["int8-dynamic"], executor=executor)
    rows = study.results.set_index("name")
    assert rows.loc["fake:baseline", "status"] == "ok" and rows.loc["fake:int8-dynamic", "status"] == "ok"
    assert rows.loc["fake-exporter-fails:baseline", "status"] == "failed"
    assert rows.loc["fake-exporter-fails:baseline", "error"] == CAUSE
    assert rows.loc["fake-refuses:baseline", "status"] == "failed"
    assert rows.loc["fake-refuses:baseline", "error"] == ("The fake-refuses backend has no converter for this "
                                                          "model: use another backend.")
    assert rows.loc["fake-refuses:int8-dynamic", "status"] == "skipped"
    assert not any(ANSI in str(e) or "\n" in str(e) for e in study.results["error"])


def test_a_study_where_every_backend_fails_returns_with_one_warning(args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = nbopt.optimize(**args, backends=["fake-exporter-fails"], recipes=[], executor="inline")
    assert list(study.results["status"]) == ["failed"]
    said = [str(w.message) for w in caught if "no backend has" in str(w.message)]
    assert said == [f"nbopt: no backend has a working baseline (fake-exporter-fails: {CAUSE.rstrip('.')}); "
                    "fix that cause, or try another backend (backends=[...])."]


def test_user_mistakes_still_stop_at_once(args):
    # no backend took the model and one says the model or data as given is why: that sentence, at once
    with pytest.raises(NboptError, match="^The fake-refuses backend has no converter"):
        nbopt.Study(**args, backends=["fake-exporter-fails", "fake-refuses"], executor="inline")
    args.update(backends=["fake", "fake-refuses"], executor="inline")
    with pytest.raises(NboptError, match="known metrics"):
        nbopt.Study(**args, metric="acc")
    with pytest.raises(NboptError, match="Calibration examples"):
        nbopt.Study(**{**args, "calib": np.zeros((5, 32), np.float32)})


# -- models with caches and several outputs --------------------------------------------------------------
def test_exportable_takes_the_first_tensor_and_turns_the_cache_off():
    import torch

    from nbopt.backends.base import exportable

    class Config:
        use_cache = True

    class Cache:
        pass

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(4, 3)
            self.inner.config = Config()  # a transformers model's config, deep inside a wrapper

        def forward(self, x):
            return {"logits": self.inner(x), "past": Cache() if self.inner.config.use_cache else None}

    net, x = Net(), torch.ones(2, 4)
    with exportable(net, (x,)) as (view, notes):
        assert net.inner.config.use_cache is False
        assert notes == ["key/value cache turned off (use_cache=False): one forward pass over the whole sequence"]
        assert view is net  # with the cache off only tensors come out: nothing else to change
    assert net.inner.config.use_cache is True  # the model may be the user's: put back

    class Forced(Net):
        def forward(self, x):
            return (self.inner(x), Cache())

    forced = Forced()
    with exportable(forced, (x,)) as (view, notes):
        assert torch.equal(view(x), forced.inner(x))
        assert notes == ["only the first tensor output (0) is exported: the model also returns Cache"]
        assert list(dict(view.named_parameters())) == ["inner.inner.weight", "inner.inner.bias"]
    plain = torch.nn.Linear(4, 3)
    with exportable(plain, (x,)) as (view, notes):
        assert view is plain and notes == []


def tiny_gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64)).eval()


def token_ids(n=8):
    return np.random.default_rng(0).integers(0, 1000, (n, 32)).astype(np.int64)


@pytest.mark.slow
def test_a_model_that_insists_on_its_cache_exports_its_logits(tmp_path):
    import torch

    class AlwaysCache(torch.nn.Module):  # a wrapper whose forward asks the language model for its cache
        def __init__(self):
            super().__init__()
            self.lm = tiny_gpt2()

        def forward(self, input_ids):
            return self.lm(input_ids, use_cache=True)

    ids = token_ids()
    study = nbopt.optimize(AlwaysCache(), calib=ids, eval=ids, metric="agreement", backends=["onnx"],
                           recipes=[], executor="inline", store=tmp_path, **FAST)
    row = study.results.iloc[0]
    assert row["status"] == "ok", row["error"]
    assert "only the first tensor output (logits) is exported: the model also returns DynamicCache" in row["notes"]
    assert row["accuracy"] == 1.0


@pytest.mark.slow
def test_an_exporter_failure_costs_only_its_backend(tmp_path, monkeypatch):
    import torch

    def fails(*args, **kwargs):
        raise_like_the_exporter()

    monkeypatch.setattr(torch.onnx, "export", fails)  # both ONNX exporters fail, as for a cache they cannot take
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    study = nbopt.optimize(net, calib=x, eval=x, metric="agreement", backends=["onnx", "torch"], recipes=[],
                           executor="inline", store=tmp_path, **FAST)
    rows = study.results.set_index("backend")
    assert rows.loc["torch", "status"] == "ok", rows.loc["torch", "error"]
    assert rows.loc["onnx", "status"] == "failed"
    error = rows.loc["onnx", "error"]
    assert error == (f"torch.onnx could not export this model: the dynamo exporter failed ({CAUSE.rstrip('.')}) "
                     f"and the TorchScript exporter failed too ({CAUSE.rstrip('.')}).")
