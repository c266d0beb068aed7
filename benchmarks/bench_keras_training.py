"""Training recipes for Keras models on the tflite backend, against their peers in the same run.

    python benchmarks/bench_keras_training.py [--quick]

Three tables, every number measured on the .tflite in the LiteRT interpreter (1 thread, batch 1), accuracy
on held-out sklearn digits:

1. qat vs post-training int8 at the same size. Two CNNs: a plain one, and the same network with two of its
   first layer's channels scaled up 100x (the next layer's weights scaled down to match: the float model
   computes exactly the same), an activation outlier that per-tensor int8 activations cannot hold. Peers,
   called directly: the TFLite converter's full-integer PTQ, and the float model fine-tuned with plain Keras
   for the same epochs, then PTQ (so that qat's extra training is not what makes the difference).
2. distill: each built-in student (MobileNetV3Small, EfficientNet-B0 width-scaled; trained from scratch)
   against the teacher, on digits upsampled to 32x32; peer: the same MobileNetV3Small trained on the labels
   alone with ``model.fit`` for the same epochs (what distillation adds).
3. resolution: latency against accuracy for a global-pooling CNN on 32x32 digits at smaller input sizes,
   without and with a short fine-tune at the new size.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

OUTLIER = 100.0  # the activation outlier's scale in table 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run, about a minute)")
    args = ap.parse_args()
    import keras

    from nbopt.speed import cpu_features

    cpu = cpu_features()
    print(f"CPU: {_cpu_model()} ({', '.join(k for k, v in cpu.items() if v is True)}); keras {keras.__version__}; "
          f"1 thread, batch 1\n")
    store = Path(tempfile.mkdtemp(prefix="bench-keras-training-"))
    (xtr, ytr), (xval, yval) = _digits()
    t0 = time.perf_counter()
    table_qat(xtr, ytr, xval, yval, store, epochs=1 if args.quick else 3)
    up_tr, up_val = _upsample(xtr), _upsample(xval)
    table_distill(up_tr, ytr, up_val, yval, store, epochs=1 if args.quick else 5)
    table_resolution(up_tr, ytr, up_val, yval, store, epochs=1 if args.quick else 2)
    print(f"total {time.perf_counter() - t0:.0f} s")


# -- data and models ------------------------------------------------------------------------------------
def _digits():
    from nbopt.demo import digits_arrays

    xtr, ytr, xval, yval = digits_arrays(seed=0)
    return (xtr.transpose(0, 2, 3, 1), ytr), (xval.transpose(0, 2, 3, 1), yval)


def _upsample(x, size=32):
    import tensorflow as tf

    return tf.image.resize(x, (size, size), method="bilinear").numpy().astype(np.float32)


def _trained(layers, x, y, epochs, lr=3e-3):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _with_outlier(model, scale: float):
    """The same function with channels 0-1 of layer c1 scaled up and c2's matching inputs scaled down (ReLU
    is positively homogeneous): an activation outlier, the float outputs unchanged."""
    import keras

    out = keras.models.clone_model(model)
    out.set_weights(model.get_weights())
    k1, b1 = out.get_layer("c1").get_weights()
    k2, b2 = out.get_layer("c2").get_weights()
    k1[..., :2] *= scale
    b1[:2] *= scale
    k2[:, :, :2, :] /= scale
    out.get_layer("c1").set_weights([k1, b1])
    out.get_layer("c2").set_weights([k2, b2])
    return out


# -- measuring peers directly ------------------------------------------------------------------------------
def _ptq_direct(model, calib, path: Path) -> Path:
    """The TFLite converter's full-integer PTQ (float I/O), called by hand."""
    import tensorflow as tf

    from nbopt.quiet import quiet

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with quiet():
        path.write_bytes(conv.convert())
    return path


def _finetuned_copy(model, xtr, ytr, epochs: int, lr: float):
    """(a copy of ``model`` fine-tuned with plain Keras fit, seconds): the peer a training recipe is held to."""
    import keras

    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    keras.utils.set_random_seed(0)
    tuned.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t = time.perf_counter()
    tuned.fit(xtr, ytr, epochs=epochs, batch_size=32, verbose=0)
    return tuned, time.perf_counter() - t


def _fp32_direct(model, path: Path) -> Path:
    import tensorflow as tf

    from nbopt.quiet import quiet

    with quiet():
        path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def _measure(path: Path, x, y) -> dict:
    """Accuracy (batch 1) and median latency of a .tflite in the interpreter, 1 thread."""
    from nbopt.backends.tflite.runner import interpreter_class

    interp = interpreter_class()[0](model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    preds, times = [], []
    for i in range(len(x)):
        interp.set_tensor(inp, x[i:i + 1])
        t = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t)
        preds.append(int(np.argmax(interp.get_tensor(out))))
    return {"size_bytes": path.stat().st_size, "accuracy": float(np.mean(np.array(preds) == y)),
            "latency_ms": float(np.median(times) * 1e3)}


def _study(model, calib, ev, train, recipes, store):
    import nbopt
    from nbopt.evaluator import LatencySettings

    t = time.perf_counter()
    s = nbopt.optimize(model, calib=calib, eval=ev, train=train, recipes=recipes, backends=["tflite"], store=store,
                       measure_memory=False, progress=False, latency=LatencySettings(warmup=5, min_runs=50))
    return s.results, time.perf_counter() - t


def _nbopt(r, x, y) -> dict:
    """A study row's artifact measured by ``_measure`` like the peers (one timing method for every row);
    the study's own accuracy must agree."""
    m = _measure(Path(r["artifact_path"]), x, y)
    assert abs(m["accuracy"] - r["accuracy"]) < 1e-9, (r["name"], m["accuracy"], r["accuracy"])
    return m


def _row(name, r, base, seconds=None) -> dict:
    return {"what": name, "size_bytes": int(r["size_bytes"]), "size_x": r["size_bytes"] / base["size_bytes"],
            "accuracy": r["accuracy"], "drop": base["accuracy"] - r["accuracy"], "latency_ms": r["latency_ms"],
            "latency_x": r["latency_ms"] / base["latency_ms"], "seconds": seconds}


def _print(title: str, rows: list[dict], extra: str = "") -> None:
    print(title)
    print(f"{'':40} {'bytes':>9} {'size':>6} {'acc':>6} {'drop':>7} {'ms':>8} {'lat':>6} {'build s':>8}")
    for r in rows:
        secs = f"{r['seconds']:8.1f}" if r.get("seconds") is not None else f"{'':8}"
        print(f"{r['what'][:40]:40} {r['size_bytes']:9d} {r['size_x']:5.2f}x {r['accuracy']:6.3f} {r['drop']:+7.3f} "
              f"{r['latency_ms']:8.4f} {r['latency_x']:5.2f}x {secs}")
    if extra:
        print(extra)
    print()


# -- 1. qat vs post-training int8 ----------------------------------------------------------------------------
def table_qat(xtr, ytr, xval, yval, store: Path, epochs: int) -> None:
    import keras

    L = keras.layers
    plain = _trained([keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same", activation="relu", name="c1"),
                      L.Conv2D(32, 3, padding="same", activation="relu", name="c2"), L.GlobalAveragePooling2D(),
                      L.Dense(10)], xtr, ytr, 15)
    calib, train = xtr[:300], (xtr, ytr)
    outlier = _with_outlier(plain, OUTLIER)
    for label, model in (("plain CNN", plain), (f"CNN with a {OUTLIER:g}x activation outlier", outlier)):
        res, secs = _study(model, calib, (xval, yval), train,
                           ["int8-static", {"qat": {"epochs": epochs, "lr": 1e-4}}], store / label.split()[0])
        rows = res.set_index("recipe")
        base = _nbopt(rows.loc["baseline"], xval, yval)
        out = [_row("fp32 baseline (nbopt)", base, base),
               _row("int8-static PTQ (nbopt)", _nbopt(rows.loc["int8-static"], xval, yval), base,
                    rows.loc["int8-static", "build_seconds"])]
        direct = _measure(_ptq_direct(model, calib, store / "ptq.tflite"), xval, yval)
        out.append(_row("PTQ, TFLite converter direct", direct, base))
        tuned, ft = _finetuned_copy(model, xtr, ytr, epochs, 1e-4)
        out.append(_row(f"fp32 fine-tuned {epochs} ep (direct)", _measure(_fp32_direct(tuned, store / "ft.tflite"),
                                                                            xval, yval), base, ft))
        out.append(_row(f"fine-tuned {epochs} ep + PTQ (direct)",
                        _measure(_ptq_direct(tuned, calib, store / "ftptq.tflite"), xval, yval), base, ft))
        q = rows.loc["qat"]
        if q["status"] != "ok":
            print(f"qat failed: {q['error']}")
            continue
        out.append(_row(f"qat {epochs} ep (nbopt, tfmot)", _nbopt(q, xval, yval), base, q["build_seconds"]))
        _print(f"1. qat vs post-training int8: {label} (study {secs:.0f} s; qat train {q['train_seconds']:.1f} s)",
               out)


# -- 2. distill ------------------------------------------------------------------------------------------------
def table_distill(xtr, ytr, xval, yval, store: Path, epochs: int) -> None:
    import keras

    L = keras.layers
    teacher = _trained([keras.Input((32, 32, 1)),
                        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                        L.Conv2D(64, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                        L.Conv2D(128, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                        L.Flatten(), L.Dense(512, activation="relu"), L.Dense(10)], xtr, ytr, 4)
    recipes = [{"distill": {"student": "mobilenet", "width": 0.5, "epochs": epochs, "lr": 3e-3}},
               {"distill": {"student": "efficientnet", "width": 0.25, "epochs": epochs, "lr": 3e-3}}]
    res, secs = _study(teacher, xtr[:300], (xval, yval), (xtr, ytr), recipes, store / "distill")
    base = _nbopt(res.set_index("recipe").loc["baseline"], xval, yval)
    out = [_row(f"teacher CNN ({teacher.count_params():,} params)", base, base)]
    for _, r in res[res["recipe"] == "distill"].iterrows():
        if r["status"] != "ok":
            print(f"{r['name']} failed: {r['error']}")
            continue
        out.append(_row(f"{r['student']}", _nbopt(r, xval, yval), base, r["build_seconds"]))
    # peer: the same MobileNetV3Small on the labels alone (plain model.fit, same epochs and lr)
    keras.utils.set_random_seed(0)
    plain = keras.applications.MobileNetV3Small(input_shape=(32, 32, 1), alpha=0.5, weights=None, classes=10,
                                                include_preprocessing=False, classifier_activation=None)
    for layer in plain.layers:  # as nbopt's student: moving statistics that settle in a short run
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.9
    plain.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t = time.perf_counter()
    plain.fit(xtr, ytr, epochs=epochs, batch_size=32, verbose=0)
    out.append(_row("MobileNetV3Small a=0.5, labels only (direct)",
                    _measure(_fp32_direct(plain, store / "plain.tflite"), xval, yval), base, time.perf_counter() - t))
    _print(f"2. distill on 32x32 digits, {epochs} epochs from scratch (study {secs:.0f} s)", out)


# -- 3. resolution ---------------------------------------------------------------------------------------------
def table_resolution(xtr, ytr, xval, yval, store: Path, epochs: int) -> None:
    import keras

    L = keras.layers
    model = _trained([keras.Input((32, 32, 1)),
                      L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                      L.Conv2D(64, 3, padding="same", activation="relu"),
                      L.Conv2D(64, 3, padding="same", activation="relu"),
                      L.GlobalAveragePooling2D(), L.Dense(10)], xtr, ytr, 15)
    recipes = [{"resolution": {"scale": s}} for s in (0.75, 0.5, 0.25)]
    recipes += [{"resolution": {"scale": s, "epochs": epochs, "lr": 1e-3}} for s in (0.75, 0.5, 0.25)]
    res, secs = _study(model, xtr[:300], (xval, yval), (xtr, ytr), recipes, store / "resolution")
    from nbopt.resize import resize_images

    base = _nbopt(res.set_index("recipe").loc["baseline"], xval, yval)
    out = [_row("32x32 baseline (fp32)", base, base)]
    # peer: the baseline fine-tuned at full size for the same epochs (what the extra training alone gives)
    tuned, ft = _finetuned_copy(model, xtr, ytr, epochs, 1e-3)
    out.append(_row(f"32x32 fine-tuned {epochs} ep (direct)", _measure(_fp32_direct(tuned, store / "res_ft.tflite"),
                                                                      xval, yval), base, ft))
    for _, r in res[res["recipe"] == "resolution"].iterrows():
        if r["status"] != "ok":
            print(f"{r['name']} {r['status']}: {r['error']}")
            continue
        size = tuple(int(v) for v in r["input_shape"].strip("()").split(",")[1:3])
        how = f"fine-tuned {int(r['train_epochs'])} ep" if r["train_epochs"] == r["train_epochs"] else "as is"
        m = _measure(Path(r["artifact_path"]), resize_images(xval, size, "NHWC"), yval)
        assert abs(m["accuracy"] - r["accuracy"]) < 1e-9, (r["name"], m["accuracy"], r["accuracy"])
        out.append(_row(f"{size[0]}x{size[1]} {how}", m, base, r["build_seconds"]))
    _print(f"3. resolution: a global-pooling CNN on 32x32 digits (study {secs:.0f} s)", out)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
