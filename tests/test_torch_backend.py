"""The torch backend on a real CNN trained on digits: every recipe's artifact exists, reloads, runs in its
own runtime, has the size on disk it claims, and keeps accuracy; quantized files are really smaller."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # converts real models (the fast tier: pytest -m "not slow")

pytest.importorskip("torch")
pytest.importorskip("executorch")
pytest.importorskip("torchao")
pytest.importorskip("torch_pruning")

from nbopt import data as nbdata  # noqa: E402
from nbopt.backends import get_backend  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.errors import NboptError  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

# (recipe, params, largest accuracy drop allowed vs the fp32 baseline artifact)
RECIPES = [
    ("fp16", {}, 0.02),
    ("int8-dynamic", {}, 0.03),
    ("int8-weight-only", {}, 0.02),
    ("int4-weight-only", {}, 0.05),
    ("int4-weight-only", {"activations": "int8", "group_size": 64}, 0.05),
    ("int8-static", {"calibration": "minmax", "per_channel": True}, 0.03),
    ("int8-static", {"calibration": "histogram", "per_channel": False}, 0.03),
    ("int8-static", {"calibration": "entropy"}, 0.03),
    ("prune-unstructured", {"amount": 0.6}, 0.05),
    ("prune-structured", {"amount": 0.5}, 0.08),
]


@pytest.fixture(scope="module")
def setup(digits, digits_cnn, tmp_path_factory):
    xtr, ytr, xval, yval = digits
    backend = get_backend("torch")
    calib = nbdata.load((xtr[:256], ytr[:256]), role="calib")
    evald = nbdata.load((xval, yval), role="eval")
    prepared = backend.prepare(digits_cnn, evald)
    root = tmp_path_factory.mktemp("torch_backend")
    base = backend.baseline(prepared, Context(root / "baseline", calib))
    return {"backend": backend, "prepared": prepared, "calib": calib, "eval": evald, "root": root,
            "baseline": base, "base_acc": _accuracy(backend, base, evald, yval), "yval": yval}


def _accuracy(backend, artifact, evald, yval) -> float:
    runner = backend.load(artifact)  # a fresh load from the file on disk
    step = runner.max_batch or 64
    outs = np.concatenate([runner(inputs) for inputs, _ in evald.batches(step)])
    assert outs.shape == (len(yval), 10)
    return float((outs.argmax(1) == yval).mean())


def _check_file(artifact):
    assert artifact.path.exists() and artifact.files
    assert artifact.size_bytes == sum(os.path.getsize(f) for f in artifact.files)
    assert artifact.path.suffix == "." + artifact.format


def test_accepts_and_versions(digits_cnn):
    backend = get_backend("torch")
    assert backend.accepts(digits_cnn) and not backend.accepts(np.zeros(3)) and not backend.accepts("x.onnx")
    versions = backend.versions()
    assert {"torch", "torchao", "executorch", "torch_pruning"} <= set(versions)


def test_baseline_is_a_runnable_pte(setup):
    base = setup["baseline"]
    _check_file(base)
    assert base.format == "pte"
    runner = setup["backend"].load(base)
    assert runner.max_batch == 1 and runner.threads >= 1
    assert setup["base_acc"] > 0.9


def test_fingerprint_tracks_weights_and_forward(digits_cnn, digits):
    """The store key follows what the model computes: its weights and its exported graph."""
    import copy

    import torch

    backend = get_backend("torch")
    data = nbdata.load(digits[2][:4], role="eval")
    other = copy.deepcopy(digits_cnn)
    assert backend.fingerprint(backend.prepare(other, data)) == backend.fingerprint(backend.prepare(digits_cnn, data))
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert backend.fingerprint(backend.prepare(other, data)) != backend.fingerprint(backend.prepare(digits_cnn, data))

    class Doubled(type(digits_cnn)):
        def forward(self, x):
            return super().forward(x) * 2

    doubled = copy.deepcopy(digits_cnn)
    doubled.__class__ = Doubled
    assert backend.fingerprint(backend.prepare(doubled, data)) != backend.fingerprint(backend.prepare(digits_cnn, data))


def test_prepare_names_the_shape_mismatch(digits, digits_cnn):
    xtr, ytr, _, _ = digits
    flat = nbdata.load((xtr[:32].reshape(32, 64), ytr[:32]))
    with pytest.raises(NboptError, match=r"expects inputs of shape \(N,1,H,W\).*\(N,64\)"):
        get_backend("torch").prepare(digits_cnn, flat)


@pytest.mark.parametrize("name,params,max_drop", RECIPES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_recipe_artifact(setup, name, params, max_drop):
    backend, prepared = setup["backend"], setup["prepared"]
    recipe = backend.validate(Recipe(name, params))
    art = backend.apply(prepared, recipe, Context(setup["root"] / recipe.label, setup["calib"]))
    _check_file(art)
    assert art.notes
    acc = _accuracy(backend, art, setup["eval"], setup["yval"])
    assert acc >= setup["base_acc"] - max_drop, (recipe.label, acc, setup["base_acc"])
    base_size = setup["baseline"].size_bytes
    if name.startswith("int"):
        assert art.size_bytes < 0.6 * base_size, (recipe.label, art.size_bytes, base_size)
        assert "Linear" in art.info["quantized"]
    if name == "int8-static":
        # convolutions included, and the .pte's bytes really are int8 (weights dominate this model)
        assert art.format == "pte" and "2/2 Conv2d (int8)" in art.info["quantized"]
        assert art.size_bytes < 0.5 * base_size
    if name in ("int8-dynamic", "int8-weight-only"):
        # torchao quantizes Linear only: the row must say the convolutions stayed fp32
        assert "0/2 Conv2d (fp32)" in art.info["quantized"] and "Conv2d (fp32)" in art.notes
    if name == "fp16":
        assert art.size_bytes < 0.7 * base_size
    if name == "int4-weight-only" and params.get("activations") == "int8":
        assert art.format == "pte"
    if name == "prune-unstructured":
        assert art.info["size_compressed_bytes"] < art.size_bytes
        assert abs(art.info["sparsity"] - params["amount"]) < 0.02
        assert "no speed" in art.notes
    if name == "prune-structured":
        assert art.info["params_after"] < 0.75 * art.info["params_before"]
        assert art.size_bytes < 0.75 * base_size
        assert "fine-tuned" in art.notes


def test_structured_pruning_without_labels_says_so(setup, digits):
    xtr = digits[0]
    backend = get_backend("torch")
    unlabeled = nbdata.load(xtr[:64], role="calib")
    recipe = backend.validate(Recipe("prune-structured", {"amount": 0.3}))
    art = backend.apply(setup["prepared"], recipe, Context(setup["root"] / "nolabels", unlabeled))
    assert "no labels" in art.notes
    assert art.info["params_after"] < art.info["params_before"]


@pytest.mark.parametrize("name,params,pattern", [
    ("prune-structured", {"amount": 1.5}, "between"),
    ("prune-unstructured", {"amount": "half"}, "must be a number"),
    ("int8-static", {"calibration": "magic"}, "allowed"),
    ("int8-static", {"per_channel": "yes"}, "allowed"),
    ("int4-weight-only", {"group_size": 33}, "allowed"),
    ("int8-dynamic", {"bits": 8}, "no parameter"),
    ("int2", {}, "no recipe"),
])
def test_bad_params_raise_one_sentence(name, params, pattern):
    with pytest.raises(NboptError, match=pattern):
        get_backend("torch").validate(Recipe(name, params))


def test_int8_static_needs_calibration(setup):
    backend = setup["backend"]
    recipe = backend.validate(Recipe("int8-static", {}))
    with pytest.raises(NboptError, match="calibration"):
        backend.apply(setup["prepared"], recipe, Context(setup["root"] / "nocalib", None))


def test_default_recipes_validate(setup):
    backend = setup["backend"]
    recipes = backend.default_recipes(setup["prepared"])
    assert recipes and all(backend.validate(r) for r in recipes)


def test_named_inputs_model(tmp_path):
    """A model with two named inputs (like tokenized text) is fed by name and exported positionally."""
    import torch

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, input_ids, attention_mask):
            h = self.emb(input_ids) * attention_mask.unsqueeze(-1).float()
            return {"logits": self.head(h.sum(1))}

    torch.manual_seed(0)
    model = TwoInputs().eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, size=(16, 5)).astype(np.int64)
    mask = np.ones((16, 5), dtype=np.int64)
    evald = nbdata.load(({"input_ids": ids, "attention_mask": mask}, np.zeros(16, dtype=np.int64)))
    backend = get_backend("torch")
    prepared = backend.prepare(model, evald)
    art = backend.baseline(prepared, Context(tmp_path, None))
    runner = backend.load(art)
    inputs, _ = next(evald.batches(4))
    got = runner(inputs)
    want = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})["logits"].detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_entropy_observer_clips_outliers():
    import torch

    from nbopt.backends.torch.quant import entropy_observer

    obs = entropy_observer()(eps=2 ** -12)
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    x[0] = 60.0  # one outlier
    obs(x)
    lo, hi = obs._non_linear_param_search()
    assert float(hi) < 20.0 and float(lo) > -20.0 and float(hi) > 2.0
