"""The ``distill`` recipe on the torch and onnx backends: each built-in student (pruned, mobilenet, shallow)
trained against the user's model, smaller than it and well above chance on digits after a few epochs; the
loss without labels; students that do not fit the model are skipped rows that say why."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # trains and converts real models (the fast tier: pytest -m "not slow")

pytest.importorskip("torch")
pytest.importorskip("executorch")
pytest.importorskip("torch_pruning")

import nbopt  # noqa: E402
from nbopt import data as nbdata  # noqa: E402
from nbopt.backends import get_backend  # noqa: E402
from nbopt.backends.base import Context  # noqa: E402
from nbopt.errors import NboptError, SkipCandidate  # noqa: E402
from nbopt.evaluator import LatencySettings  # noqa: E402
from nbopt.recipes import Recipe  # noqa: E402

FAST = dict(measure_memory=False, progress=False, executor="inline",
            latency=LatencySettings(warmup=1, min_runs=3, min_seconds=0.0))
CHANCE = 0.1  # ten digit classes


def by_student(study, backend="torch") -> dict:
    res = study.results
    res = res[(res["backend"] == backend) & (res["recipe"] == "distill")]
    return {r["params"]["student"]: r for r in res.to_dict("records")}


def baseline(study, backend="torch") -> dict:
    res = study.results
    return res[(res["backend"] == backend) & (res["recipe"] == "baseline")].iloc[0].to_dict()


def test_pruned_and_mobilenet_students_learn_the_teacher(digits, digits_cnn, store):
    xtr, ytr, xval, yval = digits
    recipes = [{"distill": {"student": "pruned", "width": 0.5, "epochs": 3}},
               {"distill": {"student": "mobilenet", "width": 0.25, "epochs": 3}}]
    study = nbopt.optimize(digits_cnn, eval=(xval, yval), train=(xtr, ytr), recipes=recipes, backends=["torch"],
                           store=store, **FAST)
    base = baseline(study)
    got = by_student(study)
    assert set(got) == {"pruned", "mobilenet"}
    for student, row in got.items():
        assert row["status"] == "ok", row["error"]
        assert row["size_bytes"] < base["size_bytes"] and row["params_after"] < row["params_before"]
        assert row["accuracy"] > CHANCE + 0.6, (student, row["accuracy"])  # chance is 0.1
        assert row["train_epochs"] >= 1 and row["train_seconds"] > 0
        assert "KL divergence" in row["notes"] and "cross-entropy on the train labels" in row["notes"]
    assert got["pruned"]["student"].startswith("structured-pruned copy of the model, width 0.5")
    assert got["mobilenet"]["student"].startswith("MobileNetV3-style, width 0.25")
    # the row's parameter count is the student's own, as the student column says
    assert f"{int(got['mobilenet']['params_after']):,} parameters" in got["mobilenet"]["student"]


def test_unlabelled_train_data_on_torch_and_onnx(digits, digits_cnn, store):
    """KL to the teacher alone trains the student; the onnx backend trains in torch and exports the student;
    efficientnet is the tflite backend's student: a skipped row here."""
    xtr, _, xval, yval = digits
    recipes = [{"distill": {"student": ["pruned", "efficientnet"], "width": 0.5, "epochs": 2}}]
    study = nbopt.optimize(digits_cnn, eval=(xval, yval), train=xtr, recipes=recipes, backends=["torch", "onnx"],
                           store=store, **FAST)
    for backend, fmt in (("torch", "pte"), ("onnx", "onnx")):
        got = by_student(study, backend)
        row = got["pruned"]
        assert row["status"] == "ok", row["error"]
        assert row["format"] == fmt
        assert "train data without labels" in row["notes"]
        assert row["accuracy"] > baseline(study, backend)["accuracy"] - 0.1
        assert row["size_bytes"] < 0.5 * baseline(study, backend)["size_bytes"]
        skipped = got["efficientnet"]
        assert skipped["status"] == "skipped"
        assert "cannot do student='efficientnet'" in skipped["error"] and "'mobilenet'" in skipped["error"]


def test_unknown_student_is_one_sentence(digits, digits_cnn, store):
    xtr, ytr, xval, yval = digits
    with pytest.raises(NboptError, match="parameter 'student' is 'resnet'; allowed: 'pruned', 'mobilenet', "
                                         "'efficientnet', 'shallow'"):
        nbopt.optimize(digits_cnn, eval=(xval, yval), train=(xtr, ytr), recipes=[{"distill": {"student": "resnet"}}],
                       backends=["torch"], store=store, **FAST)


@pytest.fixture(scope="module")
def bert_task():
    """A tiny 2-layer BERT classifier (random weights) and a learnable token task: two named inputs."""
    from nbopt.demo import tiny_bert_encoder, token_batch

    model = tiny_bert_encoder(vocab=200, hidden=64, layers=2, max_length=32)
    tr, ev = token_batch(400, seed=1), token_batch(120, seed=2)
    return model, (tr, tr["input_ids"][:, 0] % 4), (ev, ev["input_ids"][:, 0] % 4)


def test_shallow_bert_student_and_mobilenet_skipped(bert_task, store):
    model, train, ev = bert_task
    recipes = [{"distill": {"student": ["shallow", "mobilenet"], "width": 0.5, "epochs": 2}}]
    study = nbopt.optimize(model, eval=ev, train=train, recipes=recipes, backends=["torch"], store=store, **FAST)
    got = by_student(study)
    row = got["shallow"]
    assert row["status"] == "ok", row["error"]
    assert row["student"].startswith("BertForSequenceClassification with 1 of 2 layers (teacher layers 1)")
    assert row["params_after"] < row["params_before"]
    assert row["size_bytes"] < baseline(study)["size_bytes"]
    assert np.isfinite(row["accuracy"]) and row["latency_ms"] > 0
    skipped = got["mobilenet"]
    assert skipped["status"] == "skipped"
    assert skipped["error"].startswith("student='mobilenet' is for image classifiers (N,C,H,W) -> (N,classes); "
                                       "this model takes input_ids (N,16) int64")


def test_shallow_copies_every_kth_layer(bert_task):
    """The student really has fewer encoder layers, taken from the teacher (weights equal), config updated."""
    import torch

    from nbopt.backends.torch.students import kept_layers, shallow

    model = bert_task[0]
    student, keep, total, name = shallow(model, 0.5)
    assert (keep, total, name) == ([1], 2, "BertForSequenceClassification")
    layers = student.bert.bert.encoder.layer
    assert len(layers) == 1 and student.bert.config.num_hidden_layers == 1
    assert len(model.bert.bert.encoder.layer) == 2 and model.bert.config.num_hidden_layers == 2  # teacher untouched
    for new, old in zip(layers, keep):
        for a, b in zip(new.parameters(), model.bert.bert.encoder.layer[old].parameters()):
            assert torch.equal(a, b)
    assert kept_layers(6, 0.5) == [1, 3, 5] and kept_layers(12, 0.25) == [3, 7, 11] and kept_layers(2, 0.05) == [1]
    # an nn.TransformerEncoder is found as well; a CNN is not a transformer
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3)
    small, keep, total, _ = shallow(enc, 0.34)
    assert (keep, total, len(small.layers), small.num_layers) == ([2], 3, 1, 1)
    with pytest.raises(SkipCandidate, match="student='shallow' is for transformer encoders"):
        shallow(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()), 0.5)


@pytest.mark.parametrize("shape,classes,last", [((1, 8, 8), 10, 2), ((3, 32, 32), 100, 2), ((3, 224, 224), 1000, 7),
                                                 ((3, 3, 3), 5, 3)])
def test_mobilenet_student_is_sized_from_the_teacher(shape, classes, last):
    """Input channels, image size and classes come from the teacher; the strides keep the last feature map
    at least 2x2 (the paper's 7x7 at 224x224)."""
    import torch

    from nbopt.backends.torch.students import mobilenet

    example = {"input": np.zeros((1, *shape), np.float32)}
    model, plan = mobilenet(example, torch.zeros(1, classes), 0.5)
    model.eval()
    x = torch.zeros(2, *shape)
    with torch.no_grad():
        assert model(x).shape == (2, classes)
        assert model.features(x).shape[-2:] == (last, last)
    assert plan.strides()[0] == (2 if shape[-1] == 224 else 1)  # a small image keeps the stem at full size
    with pytest.raises(SkipCandidate, match=r"this model takes input \(N,64\)"):
        mobilenet({"input": np.zeros((1, 64), np.float32)}, torch.zeros(1, 10), 0.5)


def test_onnx_file_cannot_be_distilled(digits, tiny_digits_cnn, tmp_path):
    """An .onnx file has no torch model to train against: the row fails with a sentence saying so."""
    import torch

    xtr, ytr, xval, yval = digits
    path = tmp_path / "digits.onnx"
    torch.onnx.export(tiny_digits_cnn, (torch.from_numpy(xval[:1]),), str(path), input_names=["input"], dynamo=False)
    backend = get_backend("onnx")
    prepared = backend.prepare(str(path), nbdata.load((xval, yval)))
    recipe = backend.validate(Recipe("distill", {"student": "pruned"}))
    ctx = Context(tmp_path / "distill", train=nbdata.load((xtr, ytr), role="train"))
    with pytest.raises(nbopt.errors.CandidateError, match="pass the torch.nn.Module"):
        backend.apply(prepared, recipe, ctx)
