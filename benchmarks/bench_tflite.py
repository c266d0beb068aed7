"""TFLite backend overhead: nbopt's recipe handler vs the TFLite converter called directly.

    python benchmarks/bench_tflite.py [--repeats 3]

Trains a small Keras CNN on sklearn digits (a few seconds), then for each recipe times
``backend.apply`` (conversion + writing the file + weight summary + delegate report) against the same
``tf.lite.TFLiteConverter`` settings called by hand, and prints size, accuracy and the overhead ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402



def keras_digits_cnn(xtr, ytr):
    """The Keras digits CNN (two convs, two dense layers), trained 12 epochs, seeded."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xtr, ytr, epochs=12, batch_size=32, verbose=0)
    return model

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import contextlib
    import io

    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from nbopt.backends.base import Context
    from nbopt.backends.tflite import TFLiteBackend
    from nbopt.data import load
    from nbopt.recipes import Recipe

    d = load_digits()
    X = (d.images / 16.0).astype("float32")[..., None]
    y = d.target.astype("int64")
    idx = np.random.default_rng(0).permutation(len(X))
    Xtr, ytr, Xval, yval = X[idx[:1400]], y[idx[:1400]], X[idx[1400:]], y[idx[1400:]]
    model = keras_digits_cnn(Xtr, ytr)
    calib, ev = load(Xtr[:200]), load((Xval, yval))

    backend = TFLiteBackend()
    t0 = time.perf_counter()
    prepared = backend.prepare(model, ev)
    prepare_s = time.perf_counter() - t0

    def rep():
        for x in Xtr[:200]:
            yield [x[None]]

    def direct(name: str, params: dict) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if name == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif name == "int8-dynamic":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        elif name == "int8-static":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = rep
            int16 = params["activations"] == "int16"
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 if int16
                else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if params["io"] == "int8":
                conv.inference_input_type = conv.inference_output_type = tf.int16 if int16 else tf.int8
        elif name == "prune-unstructured":
            return b""  # no converter equivalent: nbopt clones and prunes first (timed as handler only)
        with contextlib.redirect_stdout(io.StringIO()):
            return conv.convert()

    recipes = [Recipe("baseline"), Recipe("fp16"), Recipe("int8-dynamic"), Recipe("int8-static"),
               Recipe("int8-static", {"io": "int8"}), Recipe("int8-static", {"activations": "int16"}),
               Recipe("prune-unstructured", {"amount": 0.5})]
    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-tflite-"))
    for r in recipes:
        rec = r if r.name == "baseline" else backend.validate(r)
        ours, theirs, art = [], [], None
        for k in range(args.repeats):
            ctx = Context(workdir=root / f"{rec.label}-{k}", calib=calib)
            t = time.perf_counter()
            if rec.name == "baseline":
                art = backend.baseline(prepared, ctx)  # conversion already done once in prepare()
            else:
                art = backend.apply(prepared, rec, ctx)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            direct("baseline" if rec.name == "baseline" else rec.name, dict(rec.params))
            theirs.append(time.perf_counter() - t)
        runner = backend.load(art)
        outs = np.concatenate([runner(i) for i, _ in ev.batches(64)])
        acc = float((outs.argmax(1) == yval).mean())
        o, t = statistics.median(ours), statistics.median(theirs)
        ratio = "n/a" if rec.name in ("baseline", "prune-unstructured") else f"{o / t:.2f}"
        rows.append((rec.label, art.size_bytes, art.info["size_compressed_bytes"], acc, o, t, ratio,
                     art.info["delegates"]))

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, runner {runner.runtime}, "
          f"threads {runner.threads}; prepare (fp32 conversion + checks) {prepare_s:.2f} s; "
          f"median of {args.repeats}")
    head = (f"{'recipe':58s} {'bytes':>7s} {'gz':>7s} {'acc':>6s} {'nbopt s':>8s} {'direct s':>8s} "
            f"{'ratio':>6s}  delegates")
    print(head)
    print("-" * len(head))
    for label, size, gz, acc, o, t, ratio, dele in rows:
        print(f"{label:58s} {size:7d} {gz:7d} {acc:6.4f} {o:8.3f} {t:8.3f} {ratio:>6s}  {dele}")
    print("baseline: nbopt reuses the fp32 conversion made in prepare(); prune: no direct converter "
          "equivalent (timed: clone + prune + convert + report).")


if __name__ == "__main__":
    main()
