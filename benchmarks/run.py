"""nbopt benchmarks: one command, tables on stdout.

    python benchmarks/run.py            # core + torch backend
    python benchmarks/run.py --all      # also the ONNX and TFLite backends (bench_onnx.py, bench_tflite.py)
    python benchmarks/run.py --training # the training-based recipes (bench_qat, bench_distill,
                                        # bench_resolution, bench_keras_training; about 15 minutes)
    python benchmarks/run.py --search   # mixed precision and search="auto" against the converters' defaults
                                        # (bench_mixed.py: MiniLM, digits CNN, MobileNetV3; about 10 minutes)
    python benchmarks/run.py --llm      # a small Llama trained here: perplexity and size per candidate against
                                        # torchao, ONNX Runtime MatMulNBits and GGUF Q4_0 (bench_llm.py; ~3 minutes)

1. Per torch recipe: nbopt's handler time against the same libraries called directly (overhead ratio).
2. The default sweep on the demo model (fresh store) against an identical re-run (served from the store).
3. Structured pruning on a compute-heavy CNN: batch-1 latency against its baseline, both measured by nbopt.
All figures are ratios inside one run: this machine is noisy, absolute seconds are not comparable across runs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

RECIPES = [("fp16", {}), ("int8-dynamic", {}), ("int8-weight-only", {}), ("int4-weight-only", {}),
           ("int8-static", {"calibration": "minmax", "per_channel": True}), ("prune-unstructured", {"amount": 0.5}),
           ("prune-structured", {"amount": 0.5})]


def table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def recipe_overhead(model, data) -> None:
    from bench_torch_direct import bench_direct

    from nbopt.backends.base import Context
    from nbopt.backends.torch import TorchBackend
    from nbopt.data import load
    from nbopt.recipes import Recipe

    xtr, ytr, xval, yval = data
    backend = TorchBackend()
    calib = load((xtr, ytr)).sample(256, 0)
    prepared = backend.prepare(model, load((xval, yval)))
    with tempfile.TemporaryDirectory() as tmp:
        backend.baseline(prepared, Context(Path(tmp) / "warm", calib))  # first lowering pays one-off costs
        bench_direct("baseline", model, (xtr[:256], ytr[:256]), workdir=Path(tmp) / "warm-direct")
        rows = []
        for name, params in RECIPES:
            recipe = backend.validate(Recipe(name, params))
            work = Path(tmp) / name
            work.mkdir()
            t0 = time.perf_counter()
            art = backend.apply(prepared, recipe, Context(work, calib))
            ours = time.perf_counter() - t0
            direct = bench_direct(name, model, (xtr[:256], ytr[:256]), params=params, workdir=Path(tmp) / f"{name}-d")
            rows.append([name, art.format, f"{ours:.2f}", f"{direct['seconds']:.2f}", f"{ours / direct['seconds']:.2f}",
                         art.size_bytes, direct["size_bytes"]])
    table("Torch recipes: nbopt handler vs the libraries called directly (same model, same calibration data)",
          ["recipe", "format", "nbopt s", "direct s", "ratio", "nbopt bytes", "direct bytes"], rows)


def sweep_and_rerun(model, data) -> None:
    import nbopt

    xtr, ytr, xval, yval = data
    with tempfile.TemporaryDirectory() as store:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            study = nbopt.optimize(model, calib=(xtr, ytr), eval=(xval, yval), store=store, progress=False)
            times.append(time.perf_counter() - t0)
    table("Default sweep on the demo model (digits CNN)", ["run", "candidates", "seconds", "ratio to first"],
          [["fresh store", len(study.candidates), f"{times[0]:.1f}", "1.00"],
           ["identical re-run", len(study.candidates), f"{times[1]:.2f}", f"{times[1] / times[0]:.3f}"]])


def pruning_latency() -> None:
    """A CNN where convolution compute, not call overhead, dominates batch-1 latency (digits at 32x32)."""
    import numpy as np
    import torch

    import nbopt
    from nbopt.demo import digits_arrays

    xtr, ytr, xval, yval = digits_arrays()
    up = lambda x: np.kron(x, np.ones((1, 1, 4, 4), np.float32))  # noqa: E731  8x8 -> 32x32
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(128, 10)).eval()
    with tempfile.TemporaryDirectory() as store:
        study = nbopt.optimize(model, calib=(up(xtr[:256]), ytr[:256]), eval=(up(xval[:100]), yval[:100]),
                               store=store, progress=False, measure_memory=False, metric="agreement",
                               recipes=[{"prune-structured": {"amount": [0.3, 0.5], "finetune_epochs": 0}}])
    df = study.results
    base = df.loc[0, "latency_ms"]
    table("Structured pruning, compute-heavy CNN (32x32 input): batch-1 latency measured by nbopt",
          ["candidate", "format", "bytes", "latency ms", "speed-up"],
          [[r["name"], r["format"], r["size_bytes"], f"{r['latency_ms']:.3f}", f"{base / r['latency_ms']:.2f}x"]
           for _, r in df.iterrows()])


TRAINING = ("bench_qat.py", "bench_distill.py", "bench_resolution.py", "bench_keras_training.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also run the ONNX and TFLite benchmarks")
    parser.add_argument("--training", action="store_true", help="only the training-based recipes' benchmarks")
    parser.add_argument("--search", action="store_true", help="only mixed precision and search='auto' (bench_mixed)")
    parser.add_argument("--llm", action="store_true", help="only the small language model's perplexity (bench_llm)")
    args = parser.parse_args()
    if args.llm:
        subprocess.run([sys.executable, str(HERE / "bench_llm.py")], check=False)
        return
    if args.search:
        subprocess.run([sys.executable, str(HERE / "bench_mixed.py")], check=False)
        return
    if args.training:
        for script in TRAINING:
            subprocess.run([sys.executable, str(HERE / script)], check=False)
        return
    from nbopt.demo import digits_arrays, train_digits_cnn

    data = digits_arrays()
    model = train_digits_cnn(data=data)
    recipe_overhead(model, data)
    sweep_and_rerun(model, data)
    pruning_latency()
    if args.all:
        for script in ("bench_onnx.py", "bench_tflite.py"):
            subprocess.run([sys.executable, str(HERE / script)], check=False)


if __name__ == "__main__":
    main()
