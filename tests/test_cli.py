"""The command line: ``nbopt optimize`` / ``nbopt report``, its exit codes, its table, and the data files it
reads (.npz, CSV, a saved Hugging Face dataset folder)."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from nbopt import cli  # noqa: E402
from nbopt import data as nd  # noqa: E402
from nbopt.errors import NboptError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = "fp16,int8-dynamic"





def assert_one_line_error(res, *words):
    assert res.rc == 2, (res.rc, res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbopt: error: "), res.err
    assert "Traceback" not in res.err
    for word in words:
        assert word in lines[0], lines[0]


def table_names(out: str) -> list[str]:
    """The first column of the results table's body."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("name "))
    body = []
    for line in lines[start + 1:]:
        if not re.match(r"[a-z]+:[a-z]", line):
            break
        body.append(line.split()[0])
    return body


# -- data files --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    return x[:1200], y[:1200], x[1200:1500], y[1200:1500]


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_data):
    """eval/calib data in every file form the command line reads."""
    import datasets

    xtr, ytr, xv, yv = digits_data
    d = tmp_path_factory.mktemp("data")
    np.savez(d / "eval.npz", input=xv, labels=yv)
    np.savez(d / "calib.npz", input=xtr[:200], labels=ytr[:200])
    frame = pd.DataFrame(xv, columns=[f"px{i}" for i in range(xv.shape[1])]).assign(label=yv)
    frame.to_csv(d / "eval.csv", index=False)
    with nd._quiet_datasets():
        datasets.Dataset.from_dict({"pixels": xv, "label": yv}).save_to_disk(str(d / "eval_hf"))
    return SimpleNamespace(dir=d, npz=d / "eval.npz", calib=d / "calib.npz", csv=d / "eval.csv", hf=d / "eval_hf")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A 64 -> 10 linear ONNX model built with onnx.helper (no torch): for the usage-error tests."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_npz_single_input_and_labels(tmp_path):
    x, y = np.random.rand(12, 5).astype(np.float64), np.arange(12) % 3
    np.savez(tmp_path / "a.npz", features=x, labels=y)
    data = nd.load(tmp_path / "a.npz")
    assert data.single_input and data.label_name == "label" and len(data) == 12
    batch, labels = next(data.batches(12))
    assert batch["input"].dtype == np.float32 and np.allclose(batch["input"], x) and (labels == y).all()
    # inputs only (no labels): fine for agreement / cosine
    np.savez(tmp_path / "b.npz", x=x)
    assert not nd.load(tmp_path / "b.npz").has_labels


def test_npz_named_inputs(tmp_path):
    ids, mask = np.arange(40).reshape(10, 4), np.ones((10, 4), np.int64)
    np.savez(tmp_path / "tok.npz", input_ids=ids, attention_mask=mask, label=np.arange(10))
    data = nd.load(tmp_path / "tok.npz")
    assert sorted(data.input_names) == ["attention_mask", "input_ids"] and data.label_name == "label"
    assert (data.example(10)["input_ids"] == ids).all()


@pytest.mark.parametrize("arrays, message", [
    ({"input_ids": np.zeros((10, 4)), "attention_mask": np.zeros((9, 4)), "labels": np.zeros(10)},
     "same number of examples"),
    ({"x": np.zeros((10, 4)), "labels": np.zeros(7)}, "x: 10, labels: 7"),
    ({"labels": np.zeros(10)}, "only labels"),
    ({"x": np.zeros((3, 2)), "label": np.zeros(3), "labels": np.zeros(3)}, "both 'labels' and 'label'"),
    ({"x": np.array([{"a": 1}] * 3, dtype=object)}, "plain arrays"),
])
def test_npz_mistakes_are_one_sentence(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(NboptError, match=message) as err:
        nd.load(tmp_path / "bad.npz")
    assert "\n" not in str(err.value)


def test_saved_hf_dataset_and_dataset_dict(tmp_path):
    import datasets

    x, y = np.random.rand(20, 3).astype(np.float32), np.arange(20) % 2
    full = datasets.Dataset.from_dict({"feats": x, "label": y})
    with nd._quiet_datasets():
        full.save_to_disk(str(tmp_path / "ds"))
        datasets.DatasetDict(train=full, validation=full.select(range(5))).save_to_disk(str(tmp_path / "dd"))
    data = nd.load(tmp_path / "ds")
    assert data.single_input and len(data) == 20 and np.allclose(data.example(20)["input"], x)
    assert (data.labels() == y).all()
    assert len(nd.load(tmp_path / "dd", role="eval")) == 5  # validation for eval
    assert len(nd.load(str(tmp_path / "dd"), role="calib")) == 20  # train for calibration


def test_csv_file_loads_as_one_vector(files, digits_data):
    data = nd.load(files.csv)
    assert data.single_input and data.label_name == "label"
    assert np.allclose(data.example(300)["input"], digits_data[2])


# -- parsing the options ------------------------------------------------------------------------------
def test_every_option_has_help():
    parser = argparse.ArgumentParser(prog="nbopt")
    sub = parser.add_subparsers()
    for p in (cli.add_optimize_parser(sub), cli.add_report_parser(sub)):
        for action in p._actions:
            assert action.help, f"{p.prog} {action.dest} has no help text"
    res = run_cli("--help")
    assert res.rc == 0 and "optimize" in res.out and "report" in res.out and "demo" in res.out
    res = run_cli("optimize", "--help")
    assert res.rc == 0 and "--max-drop" in res.out and "exit status" in res.out and ".pt2" in res.out
    assert run_cli("report", "--help").rc == 0


@pytest.mark.parametrize("text, expected", [
    ("fp16,int8-dynamic", ["fp16", "int8-dynamic"]),
    (" fp16 , int8-dynamic ", ["fp16", "int8-dynamic"]),
    ("fp16", ["fp16"]),
    ("[fp16, {int8-static: {calibration: [minmax, entropy]}}]",
     ["fp16", {"int8-static": {"calibration": ["minmax", "entropy"]}}]),
    ('["fp16", {"prune-structured": {"amount": [0.3, 0.5]}}]', ["fp16", {"prune-structured": {"amount": [0.3, 0.5]}}]),
    ("{int8-static: {per_channel: false}}", [{"int8-static": {"per_channel": False}}]),
    (None, None),
])
def test_recipes_option_forms(text, expected):
    assert cli.parse_recipes_arg(text) == expected


def test_recipes_option_reads_a_yaml_file(tmp_path):
    (tmp_path / "r.yaml").write_text("- fp16\n- int8-static: {calibration: [minmax, entropy]}\n")
    assert cli.parse_recipes_arg(str(tmp_path / "r.yaml")) == [
        "fp16", {"int8-static": {"calibration": ["minmax", "entropy"]}}]
    (tmp_path / "cell.yml").write_text("recipes:\n  - int8-dynamic\n")
    assert cli.parse_recipes_arg(str(tmp_path / "cell.yml")) == ["int8-dynamic"]
    (tmp_path / "more.yaml").write_text("recipes: [fp16]\nmax_accuracy_drop: 0.01\n")
    with pytest.raises(NboptError, match="--max-drop"):
        cli.parse_recipes_arg(str(tmp_path / "more.yaml"))


def test_table_cuts_notes_to_the_terminal_width():
    rows = [{"name": "onnx:baseline", "status": "ok", "format": "onnx", "size_bytes": 19682, "size_ratio": 1.0,
             "accuracy": 0.96, "accuracy_drop": 0.0, "latency_ms": 0.005, "notes": "fp32 " * 40, "error": ""},
            {"name": "onnx:int8-static", "status": "failed", "format": None, "size_bytes": None,
             "size_ratio": None, "accuracy": None, "accuracy_drop": None, "latency_ms": None, "notes": None,
             "error": "quantization failed:\nRuntimeError " + "x" * 200},
            {"name": "onnx:fp16", "status": "ok", "format": "onnx", "size_bytes": 10000, "size_ratio": 0.5,
             "accuracy": 0.96, "accuracy_drop": 3e-7, "latency_ms": 0.004, "notes": "short", "error": ""}]
    text = cli.format_table(pd.DataFrame(rows), width=140)
    lines = text.splitlines()
    assert len(lines) == 4 and all(len(line) <= 140 for line in lines)
    assert lines[0].split()[:9] == ["name", "status", "format", "size_bytes", "size_ratio", "accuracy",
                                   "accuracy_drop", "latency_ms", "notes"]
    assert lines[1].endswith("…") and "19,682" in lines[1]
    assert "quantization failed: RuntimeError" in lines[2] and lines[2].endswith("…")
    assert "+3.00e-07" in lines[3] and lines[3].endswith("short")  # a tiny drop is not printed as zero
    narrow = cli.format_table(pd.DataFrame(rows), width=60)  # no room left: notes are left out, not wrapped
    assert len(narrow.splitlines()) == 4 and "fp32" not in narrow


# -- usage errors: one line, exit 2 -------------------------------------------------------------------
def test_usage_errors_are_one_line(tiny_onnx, files, tmp_path):
    store = tmp_path / "store"
    base = ["optimize", tiny_onnx, "--eval", files.npz, "--store", store]
    assert_one_line_error(run_cli("optimize", tmp_path / "nope.onnx", "--eval", files.npz),
                          "nope.onnx", "does not exist")
    assert_one_line_error(run_cli("optimize", files.csv, "--eval", files.npz), "Cannot tell what model")
    assert_one_line_error(run_cli(*base[:2], "--eval", tmp_path / "missing.npz"), "--eval", "missing.npz")
    assert_one_line_error(run_cli(*base, "--calib", tmp_path / "missing.csv"), "--calib")
    assert_one_line_error(run_cli(*base, "--metric", "acuracy"), "Unknown metric 'acuracy'")
    assert_one_line_error(run_cli(*base, "--recipes", "fp17"), "Unknown recipe 'fp17'")
    assert_one_line_error(run_cli(*base, "--recipes", "[fp16, {int8-static: "), "not valid YAML")
    assert_one_line_error(run_cli(*base, "--recipes", "[]"), "at least one recipe")
    assert_one_line_error(run_cli(*base, "--recipes", tmp_path / "r.yaml"), "r.yaml", "does not exist")
    assert_one_line_error(run_cli(*base, "--recipes", "int8-static"), "calibration data")
    assert_one_line_error(run_cli(*base, "--recipes", "int8-dynamic: {amount: 3}"), "no parameter 'amount'")
    assert_one_line_error(run_cli(*base, "--backends", "onnx,gpu"), "Unknown backend 'gpu'")
    assert_one_line_error(run_cli(*base, "--backends", "tflite"), "tflite")
    (tmp_path / "taken.onnx").write_bytes(b"x")
    assert_one_line_error(run_cli(*base, "--export", tmp_path / "taken.onnx"), "already exists", "--overwrite")
    assert_one_line_error(run_cli("report", tmp_path), "no nbopt.sqlite")
    assert_one_line_error(run_cli(*base[:4], "--store", files.csv), "--store", "is a file")
    assert not (store / "nbopt.sqlite").exists() or not cli.read_store_rows(store)  # nothing ran


def test_argparse_errors_exit_2(tiny_onnx, files):
    for argv in (["optimize", tiny_onnx], ["optimize", tiny_onnx, "--eval", files.npz, "--max-drop", "-0.1"],
                 ["optimize", tiny_onnx, "--eval", files.npz, "--max-drop", "nan"], ["frobnicate"], []):
        res = run_cli(*argv)
        assert res.rc == 2 and "Traceback" not in res.err and "error:" in res.err, argv


@pytest.mark.slow
def test_unwritable_report_path_is_one_line(tiny_onnx, files, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = run_cli("optimize", tiny_onnx, "--eval", files.npz, "--metric", "agreement", "--recipes", "fp16",
                  "--store", tmp_path / "store", "--no-memory", "--report", tmp_path / "afile" / "r.html")
    assert table_names(res.out) == ["onnx:baseline", "onnx:fp16"]  # measured and kept before the write failed
    assert_one_line_error(res, "afile")


# -- real sweeps --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp(tmp_path_factory, digits_data):
    """A small MLP trained on scikit-learn's digits (a second or two), and its ONNX export."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    xtr, ytr, _, _ = digits_data
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("mlp")
    with contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x[:1],), str(d / "mlp.onnx"), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return SimpleNamespace(model=model, onnx=d / "mlp.onnx", dir=d)


@pytest.fixture(scope="module")
def onnx_run(mlp, files):
    """One full run: table, report and export."""
    d = mlp.dir
    res = run_cli("optimize", mlp.onnx, "--eval", files.npz, "--calib", files.calib, "--recipes", RECIPES,
                  "--store", d / "store", "--report", d / "report.html", "--export", d / "out" / "best.onnx",
                  "--max-drop", "0.5", "--no-memory")
    return SimpleNamespace(res=res, store=d / "store", report=d / "report.html", export=d / "out" / "best.onnx")


@pytest.mark.slow
def test_optimize_prints_the_table_and_writes_report_and_export(onnx_run):
    res = onnx_run.res
    assert res.rc == 0, res.err
    assert "Traceback" not in res.err and "%|" not in res.err  # no progress bar when not a terminal
    assert table_names(res.out) == ["onnx:baseline", "onnx:fp16", "onnx:int8-dynamic"]
    assert "Metric: accuracy (higher is better)" in res.out
    assert all(len(line) <= 120 for line in res.out.splitlines() if line.startswith("onnx:"))
    html = onnx_run.report.read_text()
    assert "onnx:int8-dynamic" in html and "plotly" in html
    card = json.loads(onnx_run.export.with_suffix(".json").read_text())
    assert onnx_run.export.is_file() and card["format"] == "onnx" and card["metric"] == "accuracy"
    assert card["model_file"] == "best.onnx" and card["recipe"] in ("fp16", "int8-dynamic")
    assert f"Exported onnx:{card['recipe']}" in res.out
    # the exported file runs in onnxruntime
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_run.export), providers=["CPUExecutionProvider"])
    assert sess.run(None, {sess.get_inputs()[0].name: np.zeros((2, 64), np.float32)})[0].shape == (2, 10)


@pytest.mark.slow
def test_export_does_not_overwrite_unasked_and_rerun_reuses_the_store(onnx_run, mlp, files):
    args = ["optimize", mlp.onnx, "--eval", files.npz, "--calib", files.calib, "--recipes", RECIPES,
            "--store", onnx_run.store, "--export", onnx_run.export, "--no-memory"]
    assert_one_line_error(run_cli(*args), "already exists")
    before = onnx_run.export.stat().st_mtime_ns
    res = run_cli(*args, "--overwrite")
    assert res.rc == 0 and table_names(res.out) == table_names(onnx_run.res.out)
    assert onnx_run.export.stat().st_mtime_ns >= before


@pytest.mark.slow
def test_report_rerenders_a_stored_study(onnx_run, tmp_path):
    res = run_cli("report", onnx_run.store, "--out", tmp_path / "x.html")
    assert res.rc == 0, res.err
    assert table_names(res.out) == ["onnx:baseline", "onnx:fp16", "onnx:int8-dynamic"]
    assert "Metric: accuracy (higher is better)" in res.out and "finished" in res.out  # the study's own metric
    html = (tmp_path / "x.html").read_text()
    for name in ("onnx:baseline", "onnx:fp16", "onnx:int8-dynamic", "accuracy", "size_ratio"):
        assert name in html
    assert "<script" in html and "cdn.plot.ly" not in html.split("<body>")[0]  # plotly.js inlined, offline
    # the rows as the study showed them: ratios against the baseline
    line = next(ln for ln in res.out.splitlines() if ln.startswith("onnx:fp16"))
    ratio = float(line.split()[4])
    assert 0.3 < ratio < 0.8
    # default output path; --metric is still accepted (it only names the metric of an older store's rows)
    res = run_cli("report", onnx_run.store, "--metric", "f1")
    assert res.rc == 0 and (onnx_run.store / "report.html").is_file() and "Metric: accuracy" in res.out


@pytest.mark.slow
def test_max_drop_gate_exit_3_when_nothing_fits(mlp, files, tmp_path):
    # cosine against the baseline: every compressed candidate changes the outputs a little, so with a
    # budget of 0 nothing optimized fits; the expectation is read back from the store, not assumed
    store, out = tmp_path / "store", tmp_path / "never.onnx"
    res = run_cli("optimize", mlp.onnx, "--eval", files.npz, "--metric", "cosine", "--recipes", RECIPES,
                  "--store", store, "--max-drop", "0", "--export", out, "--no-memory")
    df = cli.against_baselines(cli.rows_frame(cli.read_store_rows(store)), "cosine")
    fits = cli.fitting_candidates(df, 0.0)
    assert res.rc == (0 if fits else 3), (res.out, res.err)
    assert res.rc == 3 and not out.exists()
    assert "no optimized candidate is within --max-drop 0" in res.err and "Traceback" not in res.err
    assert table_names(res.out) == ["onnx:baseline", "onnx:fp16", "onnx:int8-dynamic"]  # the table still prints
    # a generous budget passes the gate
    res = run_cli("optimize", mlp.onnx, "--eval", files.npz, "--metric", "cosine", "--recipes", RECIPES,
                  "--store", store, "--max-drop", "0.5", "--no-memory")
    assert res.rc == 0 and "Best (within --max-drop 0.5" in res.out


@pytest.mark.slow
@pytest.mark.parametrize("form", ["csv", "hf"])
def test_eval_data_forms(mlp, files, form, tmp_path):
    res = run_cli("optimize", mlp.onnx, "--eval", getattr(files, form), "--recipes", "int8-dynamic",
                  "--store", tmp_path / "store", "--no-memory")
    assert res.rc == 0, res.err
    assert table_names(res.out) == ["onnx:baseline", "onnx:int8-dynamic"]
    acc = float(next(ln for ln in res.out.splitlines() if ln.startswith("onnx:baseline")).split()[5])
    assert acc > 0.8  # the labels and pixels were read the way the model was trained


@pytest.mark.slow
def test_pt2_exported_program(mlp, files, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch")
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(mlp.model, (torch.zeros(1, 64),)), str(path))
    res = run_cli("optimize", path, "--eval", files.npz, "--recipes", "fp16", "--store", tmp_path / "store",
                  "--no-memory", "--export", tmp_path / "mlp_fp16")
    assert res.rc == 0, res.err
    assert table_names(res.out) == ["torch:baseline", "torch:fp16"]
    assert (tmp_path / "mlp_fp16.pte").is_file() and (tmp_path / "mlp_fp16.json").is_file()


@pytest.mark.slow
def test_keras_file(files, tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])
    model.save(tmp_path / "mlp.keras")
    res = run_cli("optimize", tmp_path / "mlp.keras", "--eval", files.npz, "--recipes", "fp16",
                  "--store", tmp_path / "store", "--no-memory")
    assert res.rc == 0, res.err
    assert table_names(res.out) == ["tflite:baseline", "tflite:fp16"]


@pytest.mark.slow
def test_subprocess_exit_code_and_clean_stderr(onnx_run, mlp, files, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "nbopt", "optimize", str(mlp.onnx), "--eval", str(files.npz),
                           "--recipes", RECIPES, "--store", str(tmp_path / "store"), "--no-memory",
                           "--max-drop", "0.5"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "%|" not in proc.stderr
    assert table_names(proc.stdout) == ["onnx:baseline", "onnx:fp16", "onnx:int8-dynamic"]
    bad = subprocess.run([sys.executable, "-m", "nbopt", "optimize", str(mlp.onnx), "--eval", str(files.npz),
                          "--metric", "nope"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("nbopt: error: Unknown metric 'nope'")
