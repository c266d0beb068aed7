"""Core ML backend: small torch and Keras models converted to .mlpackage folders, every recipe on disk.

Off macOS Core ML cannot run a model, so these tests check what can be checked everywhere: the package
on disk, its size, what its weights are, and that the artifact says its accuracy and latency need macOS.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytestmark = pytest.mark.slow

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from nbopt.backends.base import Context  # noqa: E402
from nbopt.backends.coreml import CoreMLBackend  # noqa: E402
from nbopt.backends.coreml.runner import MACOS_REASON, NeedsMacOS  # noqa: E402
from nbopt.data import load  # noqa: E402
from nbopt.errors import CandidateError, NboptError  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

OFF_MACOS = sys.platform != "darwin"


class Net(torch.nn.Module):
    """Conv 1->8 on 1x8x8, then Linear 512->256->256->10: enough weights that metadata does not dominate."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(512, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.out = torch.nn.Linear(256, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _walk_size(folder) -> tuple[int, set]:
    """The folder's size and files, computed independently of the backend."""
    total, files = 0, set()
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            total += os.path.getsize(path)
            files.add(os.path.realpath(path))
    return total, files


@pytest.fixture(scope="module")
def backend():
    return CoreMLBackend()


@pytest.fixture(scope="module")
def eval_data():
    rng = np.random.default_rng(0)
    return load((rng.random((16, 1, 8, 8), dtype=np.float32), np.arange(16) % 10), role="eval")


@pytest.fixture(scope="module")
def prepared(backend, eval_data):
    torch.manual_seed(0)
    return backend.prepare(Net().eval(), eval_data)


@pytest.fixture(scope="module")
def artifacts(backend, prepared, tmp_path_factory):
    """The baseline and every recipe of the default sweep (plus per-block int8), built once."""
    ctx = Context(workdir=tmp_path_factory.mktemp("coreml"))
    out = {"baseline": backend.baseline(prepared, ctx)}
    for recipe in backend.default_recipes(prepared) + [Recipe("int8-weight-only", {"group_size": 32})]:
        full, reason = backend.resolve(recipe)
        assert not reason, reason
        out[full.label] = backend.apply(prepared, full, ctx)
    return out


def test_baseline_is_an_mlpackage_sized_by_every_file_in_it(artifacts, prepared):
    art = artifacts["baseline"]
    assert art.format == "mlpackage" and art.path.suffix == ".mlpackage" and art.path.is_dir()
    size, files = _walk_size(art.path)
    assert art.size_bytes == size
    assert {os.path.realpath(f) for f in art.files} == files
    assert (art.path / "Manifest.json").exists()
    assert art.info["compute_precision"] == "fp32" and art.info["min_deployment_target"] == "iOS16"
    assert "fp32 4/4" in art.info["quantized"]
    assert "torch.export" in art.notes and prepared.how == "torch.export"


def test_every_artifact_size_is_its_whole_folder(artifacts):
    for name, art in artifacts.items():
        assert art.size_bytes == _walk_size(art.path)[0], name


def test_sizes_shrink_with_fewer_bits(artifacts):
    size = {name: art.size_bytes for name, art in artifacts.items()}
    fp32, fp16 = size["baseline"], size["fp16"]
    assert 0.45 < fp16 / fp32 < 0.55
    assert size["int8-weight-only"] < 0.6 * fp16
    assert size["int4-weight-only"] < 0.65 * size["int8-weight-only"]
    assert size["int4-weight-only(method=palettize)"] < 0.65 * size["int8-weight-only"]
    assert size["int8-weight-only(group_size=32)"] < 0.6 * fp16


def test_notes_and_info_say_what_was_compressed(artifacts):
    int8 = artifacts["int8-weight-only"]
    assert "int8 3/4 (linear)" in int8.info["quantized"] and "fp16 1/4 (conv)" in int8.info["quantized"]
    assert "per-channel" in int8.notes and "fp16 compute" in int8.notes
    int4 = artifacts["int4-weight-only"]
    assert "int4 blockwise 3/4" in int4.info["quantized"] and int4.info["min_deployment_target"] == "iOS18"
    assert "one scale per 32 input channels" in int4.notes
    palette = artifacts["int4-weight-only(method=palettize)"]
    assert "4-bit palette 3/4" in palette.info["quantized"] and palette.info["min_deployment_target"] == "iOS16"
    assert "fp16 4/4" in artifacts["fp16"].info["quantized"]


def test_prune_unstructured_half_is_smaller_than_fp32(artifacts):
    pruned, fp32 = artifacts["prune-unstructured"], artifacts["baseline"]
    assert pruned.info["size_compressed_bytes"] < fp32.size_bytes
    assert pruned.size_bytes < fp32.size_bytes  # Core ML's sparse format is smaller on disk itself
    assert pruned.size_bytes < artifacts["fp16"].size_bytes
    assert pruned.info["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "sparse fp16 3/4" in pruned.info["quantized"]


@pytest.mark.skipif(not OFF_MACOS, reason="on macOS Core ML runs the packages")
def test_off_macos_artifacts_are_not_measurable_and_do_not_load(backend, artifacts):
    for name, art in artifacts.items():
        assert art.info["unmeasured"] == MACOS_REASON, name
    assert MACOS_REASON == "accuracy and latency need macOS (Core ML runs only on Apple's systems)"
    with pytest.raises(CandidateError, match=r"accuracy and latency need macOS \(Core ML runs only on Apple's "
                                             r"systems\)") as info:
        backend.load(artifacts["baseline"])
    assert isinstance(info.value, NeedsMacOS)


def test_int4_group_that_divides_no_layer_fails_with_a_sentence(backend, tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(100, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
    prep = backend.prepare(model, load(np.random.default_rng(0).random((4, 100), dtype=np.float32)))
    full, _ = backend.resolve(Recipe("int4-weight-only", {"group_size": 64}))
    with pytest.raises(CandidateError, match="multiple of group_size=64"):
        backend.apply(prep, full, Context(workdir=tmp_path))


def test_recipes_backend_cannot_honour_are_skipped(backend):
    _, reason = backend.resolve(Recipe("int4-weight-only", {"activations": "int8"}))
    assert "cannot do activations='int8'" in reason
    _, reason = backend.resolve(Recipe("int8-static"))
    assert "no recipe 'int8-static'" in reason


def test_multi_input_torch_model_takes_the_data_names(backend, tmp_path):
    import coremltools as ct

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(100, 64)
            self.fc = torch.nn.Linear(64, 2)

        def forward(self, input_ids, attention_mask):
            return self.fc((self.emb(input_ids) * attention_mask[..., None]).mean(1))

    rng = np.random.default_rng(0)
    data = load({"input_ids": rng.integers(0, 100, (5, 6)), "attention_mask": np.ones((5, 6), np.int64)})
    art = backend.baseline(backend.prepare(Bag(), data), Context(workdir=tmp_path))
    spec = ct.models.MLModel(str(art.path), skip_model_load=True).get_spec()
    assert [i.name for i in spec.description.input] == ["input_ids", "attention_mask"]
    assert "gather" in art.info["quantized"]


def test_data_dependent_branch_falls_back_to_tracing(backend):
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    prep = backend.prepare(Branchy(), load(np.ones((3, 4), np.float32)))
    assert prep.how.startswith("TorchScript trace") and "torch.export failed" in prep.how


def test_data_that_does_not_fit_is_one_sentence(backend):
    with pytest.raises(NboptError, match="could not run on the evaluation data"):
        backend.prepare(Net(), load(np.zeros((3, 5), np.float32)))


def test_keras_model_converts_through_a_concrete_function(backend, tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10)])
    data = load((np.random.default_rng(0).random((8, 8, 8, 1), dtype=np.float32), np.arange(8)))
    prep = backend.prepare(model, data)
    ctx = Context(workdir=tmp_path)
    fp32 = backend.baseline(prep, ctx)
    int8 = backend.apply(prep, backend.resolve(Recipe("int8-weight-only"))[0], ctx)
    assert fp32.size_bytes == _walk_size(fp32.path)[0]
    assert int8.size_bytes < 0.35 * fp32.size_bytes
    assert "Keras Sequential via tf.function" in fp32.notes
    assert "int8 2/3 (matmul)" in int8.info["quantized"]
    assert backend.fingerprint(prep) == backend.fingerprint(backend.prepare(model, data))


def test_fingerprint_follows_the_weights(backend):
    a, b = Net(), Net()
    data = load(np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32))
    assert backend.fingerprint(backend.prepare(a, data)) != backend.fingerprint(backend.prepare(b, data))
    b.load_state_dict(a.state_dict())
    assert backend.fingerprint(backend.prepare(a, data)) == backend.fingerprint(backend.prepare(b, data))


def test_importing_the_backend_imports_no_framework():
    code = ("import sys, nbopt.backends.coreml; "
            "print(sorted(m for m in ('coremltools', 'torch', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not OFF_MACOS, reason="on macOS Core ML runs the packages")
def test_study_keeps_unmeasurable_rows_honest(tmp_path):
    """In a study beside torch, Core ML rows have real sizes, empty accuracy and latency (never estimated),
    stay off the Pareto front and are never best(); the torch rows are measured as usual."""
    import nbopt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    x = np.random.default_rng(0).random((40, 64), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 40)
    study = nbopt.optimize(model, calib=(x, y), eval=(x, y), backends=["torch", "coreml"],
                           recipes=["fp16"], store=tmp_path / "store", progress=False, measure_memory=False)
    df = study.results.set_index("name")
    core = df[df["backend"] == "coreml"]
    assert list(core["status"]) == ["ok", "ok"]
    assert core["accuracy"].isna().all() and core["latency_ms"].isna().all()
    assert core["notes"].str.contains("need macOS").all()
    assert core.loc["coreml:fp16", "size_ratio"] < 0.7
    assert not study.pareto()["backend"].eq("coreml").any()
    assert study.best().row["backend"] == "torch"
    assert df.loc["torch:fp16", "accuracy"] is not None
