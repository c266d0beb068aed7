"""Files nbopt writes and reads outside its store.

Export never destroys: an existing target is replaced only with ``overwrite=True``, a folder target gets
``<folder>/<name>.<ext>``, ONNX external data is named after the exported file, exporting onto the artifact
itself does nothing, and a refused export leaves no file behind. Paths inside model files are confined:
an external-data location outside the model's folder is one NboptError, before anything is read or copied.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import nbopt
from nbopt.errors import NboptError
from nbopt.evaluator import LatencySettings
from nbopt.backends.onnx.convert import copy_model, load_user_file, model_files
from nbopt.export import export_candidate

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # the export tests on the fake backend still run
    onnx = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="needs onnx and onnxruntime")

FAST = dict(measure_memory=False, progress=False, latency=LatencySettings(warmup=1, min_runs=3, min_seconds=0.0))


def one_line_error(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------------------
# export: the fake backend (one .npz file per candidate)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_study(fake_model, fake_data, tmp_path_factory):
    xtr, ytr, xval, yval = fake_data
    return nbopt.optimize(fake_model, calib=(xtr, ytr), eval=(xval, yval), backends=["fake"],
                          recipes=["fp16", "int8-dynamic"], store=tmp_path_factory.mktemp("store"), **FAST)


def cand(study, recipe):
    return next(c for c in study.candidates if c.row["recipe"] == recipe)


def test_existing_file_is_never_overwritten_unasked(fake_study, tmp_path):
    c = cand(fake_study, "int8-dynamic")
    target = tmp_path / "model.npz"
    target.write_bytes(b"the user's own file")
    with pytest.raises(NboptError) as exc:
        c.export(target)
    msg = one_line_error(exc, str(target), "already exists", "overwrite=True")
    assert msg.count(". ") == 0  # one sentence
    assert target.read_bytes() == b"the user's own file"
    assert listing(tmp_path) == {"model.npz": b"the user's own file"}  # no card, no staging folder
    out = export_candidate(c, target, overwrite=True)
    assert out == target and out.read_bytes() == Path(c.row["artifact_path"]).read_bytes()
    assert json.loads((tmp_path / "model.json").read_text())["recipe"] == "int8-dynamic"
    assert sorted(listing(tmp_path)) == ["model.json", "model.npz"]


def test_existing_card_is_never_overwritten_and_nothing_is_written(fake_study, tmp_path):
    c = cand(fake_study, "fp16")
    (tmp_path / "m.json").write_text("my notes")
    with pytest.raises(NboptError) as exc:
        c.export(tmp_path / "m")
    one_line_error(exc, str(tmp_path / "m.json"), "overwrite=True")
    assert listing(tmp_path) == {"m.json": b"my notes"}  # checked before writing: no m.npz either
    export_candidate(c, tmp_path / "m", overwrite=True)
    assert json.loads((tmp_path / "m.json").read_text())["model_file"] == "m.npz"


def test_second_export_to_the_same_path_is_refused(fake_study, tmp_path):
    first = cand(fake_study, "fp16").export(tmp_path / "best")
    before = listing(tmp_path)
    with pytest.raises(NboptError, match="already exists"):
        cand(fake_study, "int8-dynamic").export(first)
    assert listing(tmp_path) == before


def test_folder_target_gets_the_candidate_name(fake_study, tmp_path):
    c = cand(fake_study, "int8-dynamic")
    out = c.export(tmp_path)
    assert out == tmp_path / "fake_int8-dynamic.npz" and out.read_bytes() == Path(c.row["artifact_path"]).read_bytes()
    assert json.loads((tmp_path / "fake_int8-dynamic.json").read_text())["model_file"] == out.name
    other = cand(fake_study, "fp16").export(tmp_path)  # another candidate: its own name, nothing replaced
    assert other == tmp_path / "fake_fp16.npz"
    assert sorted(listing(tmp_path)) == ["fake_fp16.json", "fake_fp16.npz", "fake_int8-dynamic.json",
                                         "fake_int8-dynamic.npz"]
    with pytest.raises(NboptError, match="overwrite=True"):
        c.export(tmp_path)


def test_suffixes(fake_study, tmp_path):
    c = cand(fake_study, "fp16")
    assert c.export(tmp_path / "a") == tmp_path / "a.npz"
    assert c.export(tmp_path / "b.onnx") == tmp_path / "b.npz"  # a model suffix of another format is replaced
    assert c.export(tmp_path / "c.v2") == tmp_path / "c.v2.npz"  # any other dot is part of the name
    assert (tmp_path / "c.v2.json").exists()


def test_export_onto_the_artifact_itself_is_a_noop(fake_study):
    c = cand(fake_study, "fp16")
    art = Path(c.row["artifact_path"])
    before, stamp = listing(art.parent), art.stat().st_mtime_ns
    assert c.export(art) == art
    assert export_candidate(c, art, overwrite=True) == art
    assert listing(art.parent) == before and art.stat().st_mtime_ns == stamp


def test_targets_in_the_way(fake_study, tmp_path):
    c = cand(fake_study, "fp16")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NboptError) as exc:
        c.export(tmp_path / "afile" / "model")
    one_line_error(exc, "afile", "is a file")
    (tmp_path / "m.json").mkdir()  # the card's name is a folder: even overwrite=True does not remove it
    with pytest.raises(NboptError) as exc:
        export_candidate(c, tmp_path / "m.npz", overwrite=True)
    one_line_error(exc, "m.json", "folder")
    assert sorted(listing(tmp_path)) == ["afile", "m.json"]
    art = Path(c.row["artifact_path"])
    (tmp_path / "link.npz").symlink_to(art)  # a link to the artifact is the artifact: nothing to do
    assert export_candidate(c, tmp_path / "link.npz", overwrite=True) == tmp_path / "link.npz"
    assert not (tmp_path / "link.json").exists()
    (tmp_path / "x.json").symlink_to(art)  # a target that is a store file: refused, even with overwrite=True
    with pytest.raises(NboptError) as exc:
        export_candidate(c, tmp_path / "x.npz", overwrite=True)
    one_line_error(exc, "x.json", "own artifact")
    assert art.read_bytes()[:2] == b"PK" and not (tmp_path / "x.npz").exists()


def test_package_folder_export(tmp_path):
    """A .mlpackage is a folder: copied whole, refused when there, replaced whole with overwrite=True."""
    art = tmp_path / "store" / "model.mlpackage"
    (art / "Data").mkdir(parents=True)
    (art / "Manifest.json").write_text("{}")
    (art / "Data" / "weights.bin").write_bytes(b"w" * 100)
    row = {"name": "coreml:fp16", "backend": "coreml", "recipe": "fp16", "params": {}, "format": "mlpackage",
           "status": "ok", "error": None, "notes": "", "artifact_path": str(art),
           "artifact_files": [str(art / "Manifest.json"), str(art / "Data" / "weights.bin")]}
    study = SimpleNamespace(backends={}, metric=SimpleNamespace(name="accuracy"), calib_data=None,
                            eval_data=SimpleNamespace(fingerprint="f", num_examples=1))
    c = SimpleNamespace(row=row, study=study)
    out = tmp_path / "out"
    p = export_candidate(c, out / "m.mlpackage")
    assert listing(p) == listing(art) and (out / "m.json").exists()
    with pytest.raises(NboptError) as exc:
        export_candidate(c, out / "m")
    one_line_error(exc, "m.mlpackage", "overwrite=True")
    (p / "stale.txt").write_text("old")
    assert export_candidate(c, p, overwrite=True) == p
    assert listing(p) == listing(art)  # replaced whole, not merged
    assert export_candidate(c, out) == out / "coreml_fp16.mlpackage"  # a plain folder: the candidate's name
    assert export_candidate(c, art) == art  # onto itself: nothing happens
    with pytest.raises(NboptError, match="own artifact"):
        export_candidate(c, art / "Data")  # inside the package itself
    assert sorted(p.name for p in out.iterdir()) == ["coreml_fp16.json", "coreml_fp16.mlpackage", "m.json",
                                                      "m.mlpackage"]


# ------------------------------------------------------------------------------------------------
# export: ONNX external data is named after the exported file
# ------------------------------------------------------------------------------------------------
def mlp_proto(seed=0):
    """y = relu(x @ W1 + b1) @ W2: weights big enough to go to external data."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 64)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=64).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(size=(64, 3)).astype(np.float32), "W2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


X = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)


def run(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]


def locations(path):
    proto = onnx.load(str(path), load_external_data=False)
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}


def without_locations(path):
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = ""
    return proto.SerializeToString()


def onnx_candidate(art: Path, name="onnx:baseline"):
    """A measured ONNX row pointing at ``art`` (what export reads from a candidate), with a minimal study."""
    row = {"name": name, "backend": "onnx", "recipe": "baseline", "params": {}, "format": "onnx", "status": "ok",
           "error": None, "notes": "", "artifact_path": str(art), "artifact_files": [str(f) for f in model_files(art)]}
    study = SimpleNamespace(backends={}, metric=SimpleNamespace(name="accuracy"), calib_data=None,
                            eval_data=SimpleNamespace(fingerprint="f" * 16, num_examples=5))
    return SimpleNamespace(row=row, study=study)


@needs_onnx
def test_onnx_external_data_is_named_after_the_export(tmp_path):
    art = tmp_path / "store" / "model.onnx"
    art.parent.mkdir()
    onnx.save_model(mlp_proto(), str(art), save_as_external_data=True, location="model.onnx.data",
                    all_tensors_to_one_file=True, size_threshold=0)
    expected = run(art)
    c = onnx_candidate(art)
    out = tmp_path / "out"
    out.mkdir()
    a = export_candidate(c, out / "a.onnx")
    b = export_candidate(c, out / "b")
    assert b == out / "b.onnx"
    assert sorted(listing(out)) == ["a.json", "a.onnx", "a.onnx.data", "b.json", "b.onnx", "b.onnx.data"]
    assert locations(a) == {"a.onnx.data"} and locations(b) == {"b.onnx.data"}
    # byte for byte: the same data; the graph differs only in the data file's name
    assert (out / "a.onnx.data").read_bytes() == (art.parent / "model.onnx.data").read_bytes()
    assert without_locations(a) == without_locations(art)
    (out / "b.onnx.data").unlink()  # the exports share nothing: a still runs without b's data
    np.testing.assert_array_equal(run(a), expected)
    # the data file is checked too: a stale one is not replaced unasked, and nothing else is written
    (out / "c.onnx.data").write_bytes(b"old")
    with pytest.raises(NboptError) as exc:
        export_candidate(c, out / "c.onnx")
    one_line_error(exc, "c.onnx.data", "overwrite=True")
    assert not (out / "c.onnx").exists() and not (out / "c.json").exists()
    c2 = export_candidate(c, out / "c.onnx", overwrite=True)
    np.testing.assert_array_equal(run(c2), expected)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left


@needs_onnx
def test_onnx_folder_target_and_several_data_files_join_into_one(tmp_path):
    src = tmp_path / "user" / "net.onnx"
    src.parent.mkdir()
    # one file per tensor (w1, b1, W2 named files), some without "length"
    onnx.save_model(mlp_proto(2), str(src), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(model_files(src)) == 4
    expected = run(src)
    c = onnx_candidate(src, name="onnx:int8-static(calibration=entropy)")
    out = export_candidate(c, tmp_path)
    assert out == tmp_path / "onnx_int8-static_calibration_entropy.onnx"
    assert [f.name for f in model_files(out)] == [out.name, out.name + ".data"]
    np.testing.assert_array_equal(run(out), expected)
    # copy_model on its own: every tensor reads its own bytes from the joined file
    copy_model(src, tmp_path / "j.onnx", tmp_path / "j.onnx.data", "j.onnx.data")
    np.testing.assert_array_equal(run(tmp_path / "j.onnx"), expected)


@needs_onnx
def test_onnx_without_external_data_is_one_file(tmp_path):
    art = tmp_path / "s" / "model.onnx"
    art.parent.mkdir()
    onnx.save_model(mlp_proto(), str(art))
    out = export_candidate(onnx_candidate(art), tmp_path / "plain.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.json", "plain.onnx", "s"]
    assert out.read_bytes() == art.read_bytes()


@needs_onnx
@pytest.mark.slow
def test_real_study_exports_run_in_onnxruntime(tmp_path):
    """Two candidates of a real torch -> ONNX study exported into one folder: each file runs on its own."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3))
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    y = model(torch.from_numpy(x)).argmax(1).numpy()
    study = nbopt.optimize(model, calib=(x, y), eval=(x, y), backends=["onnx"], recipes=["int8-dynamic"],
                           store=tmp_path / "store", **FAST)
    base, q = cand(study, "baseline"), cand(study, "int8-dynamic")
    assert len(base.row["artifact_files"]) == 2, base.row["artifact_files"]  # the dynamo exporter's external data
    out = tmp_path / "out"
    paths = [export_candidate(base, out / "fp32.onnx"), export_candidate(q, out / "int8.onnx"),
             export_candidate(base, out)]
    assert not (out / "model.onnx.data").exists()
    assert (out / "fp32.onnx.data").exists() and (out / "onnx_baseline.onnx.data").exists()
    for path, c in zip(paths, [base, q, base]):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(c.row["artifact_path"], providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x[:4]}
        np.testing.assert_array_equal(sess.run(None, feed)[0], ref.run(None, feed)[0])
        files = model_files(path)
        assert without_locations(path) == without_locations(c.row["artifact_path"])
        assert [f.read_bytes() for f in files[1:]] == [Path(f).read_bytes() for f in c.row["artifact_files"][1:]]


# ------------------------------------------------------------------------------------------------
# paths inside model files are confined to the model's folder
# ------------------------------------------------------------------------------------------------
def external_model(folder: Path, location: str = "w.bin") -> Path:
    """``folder/net.onnx`` with its weights saved as external data, then pointed at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "net.onnx"
    onnx.save_model(mlp_proto(), str(path), save_as_external_data=True, location="w.bin",
                    all_tensors_to_one_file=True, size_threshold=0)
    if location != "w.bin":
        proto = onnx.load(str(path), load_external_data=False)
        for t in proto.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        path.write_bytes(proto.SerializeToString())
    return path


@needs_onnx
def test_external_data_outside_the_folder_is_refused_before_anything_is_copied(tmp_path):
    path = external_model(tmp_path / "m", "../outside/w.bin")
    (tmp_path / "outside").mkdir()
    (tmp_path / "m" / "w.bin").rename(tmp_path / "outside" / "w.bin")  # the data really is there
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(NboptError) as exc:
        load_user_file(path, dest)
    one_line_error(exc, "'W1'", "'../outside/w.bin'", "net.onnx", "not inside the model's folder")
    assert list(dest.iterdir()) == []
    with pytest.raises(NboptError, match=r"'W1'.*'\.\./outside/w\.bin'"):
        model_files(path)  # the fingerprint reads the same list: it refuses too


@needs_onnx
def test_prepare_refuses_with_one_sentence_not_a_validation_error(tmp_path):
    from nbopt import data as nbdata
    from nbopt.backends.onnx import OnnxBackend

    path = external_model(tmp_path / "m", "../outside/w.bin")
    (tmp_path / "outside").mkdir()
    (tmp_path / "m" / "w.bin").rename(tmp_path / "outside" / "w.bin")
    with pytest.raises(NboptError) as exc:
        OnnxBackend().prepare(path, nbdata.load(X))
    assert type(exc.value) is NboptError
    one_line_error(exc, "'W1'", "'../outside/w.bin'")


@needs_onnx
@pytest.mark.parametrize("kind", ["absolute", "symlink-file", "symlink-folder", "dotdot-deep"])
def test_other_escapes_are_refused(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 4096)
    m = tmp_path / "m"
    m.mkdir()
    if kind == "absolute":
        loc = str(outside / "w.bin")
    elif kind == "symlink-file":
        (m / "link.bin").symlink_to(outside / "w.bin")
        loc = "link.bin"
    elif kind == "symlink-folder":
        (m / "sub").symlink_to(outside, target_is_directory=True)
        loc = "sub/w.bin"
    else:
        loc = "a/../../outside/w.bin"
    path = external_model(m, loc)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(NboptError) as exc:
        load_user_file(path, dest)
    one_line_error(exc, "'W1'", f"'{loc}'")
    assert list(dest.iterdir()) == []


@needs_onnx
def test_attribute_tensor_locations_are_checked_too(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    const = helper.make_node("Constant", [], ["c"], name="scale",
                             value=numpy_helper.from_array(np.ones((8, 8), np.float32), "scale_value"))
    graph = helper.make_graph([const, helper.make_node("MatMul", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])])
    path = m / "c.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, location="c.bin", size_threshold=0, convert_attribute=True)
    proto = onnx.load(str(path), load_external_data=False)
    for e in proto.graph.node[0].attribute[0].t.external_data:
        if e.key == "location":
            e.value = "../../c.bin"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(NboptError) as exc:
        load_user_file(path, tmp_path)
    one_line_error(exc, "'scale_value'", "'../../c.bin'")


@needs_onnx
def test_data_files_inside_the_folder_are_fine(tmp_path):
    m = tmp_path / "m"
    path = external_model(m, "weights/w.bin")
    (m / "weights").mkdir()
    (m / "w.bin").rename(m / "weights" / "w.bin")
    dest = tmp_path / "dest"
    dest.mkdir()
    copied = load_user_file(path, dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["net.onnx", "weights", "weights/w.bin"]
    np.testing.assert_array_equal(run(copied), run(path))


@needs_onnx
def test_model_proto_with_unloaded_external_data_is_one_sentence(tmp_path):
    from nbopt import data as nbdata
    from nbopt.backends.onnx import OnnxBackend

    path = external_model(tmp_path / "m", "../../../etc/passwd")
    proto = onnx.load(str(path), load_external_data=False)
    before = proto.SerializeToString()
    with pytest.raises(NboptError) as exc:
        OnnxBackend().prepare(proto, nbdata.load(X))
    one_line_error(exc, "'W1'", "pass the .onnx path")
    assert proto.SerializeToString() == before
    # loaded with its data, the proto is taken, and left as it was
    good = onnx.load(str(external_model(tmp_path / "g")))
    before = good.SerializeToString()
    OnnxBackend().prepare(good, nbdata.load(X))
    assert good.SerializeToString() == before
    assert sorted(os.listdir(tmp_path / "g")) == ["net.onnx", "w.bin"]
    # a proto that carries its data but still names a location: the location is never written to
    for t in good.graph.initializer:
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", f"../../escaped-{t.name}.bin"
    before = good.SerializeToString()
    prepared = OnnxBackend().prepare(good, nbdata.load(X))
    assert good.SerializeToString() == before
    assert not list(prepared.dir.parent.parent.glob("escaped-*")) and not list(tmp_path.rglob("escaped-*"))
    np.testing.assert_array_equal(run(prepared.path), run(tmp_path / "g" / "net.onnx"))
