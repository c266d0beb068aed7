"""The ``resolution`` recipe: latency gained against accuracy lost, on a compute-heavy GAP CNN.

Data: scikit-learn's digits made into 3x64x64 colour images (each 8x8 digit upscaled 8x, tinted with a
random colour, Gaussian noise added), so the model does real work per pixel. Model: a 4-block conv-BN CNN with
global average pooling (it takes any input size), trained for a few epochs. nbopt runs ``resolution`` at
scale 0.75 and 0.5, without and with a fine-tune at the new size, on the torch (ExecuTorch .pte) and onnx
(onnxruntime) backends; scale 1.0 is each backend's baseline. Peers, called directly in the same run: the
eager torch model timed at each input size (batch 1), the latency ratio the arithmetic alone gives; and
the same fine-tune at the full 64x64 (nbopt's torch engine), how much accuracy the extra training alone
brings. Latencies of ~0.1 ms move with machine load: read the ratios, and run it on a quiet machine.

    python benchmarks/bench_resolution.py [--epochs 2] [--lr 1e-3] [--train-epochs 8]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402

import nbopt  # noqa: E402
from nbopt import resize  # noqa: E402
from nbopt.demo import digits_arrays  # noqa: E402
from nbopt.speed import cpu_features  # noqa: E402

SIDE, SCALES = 64, (0.75, 0.5)


def colour_digits(x: np.ndarray, seed: int) -> np.ndarray:
    """(N, 1, 8, 8) digits -> (N, 3, 64, 64): each pixel repeated 8x8 (nearest-neighbour upscaling),
    tinted, noised."""
    rng = np.random.default_rng(seed)
    big = np.kron(x, np.ones((1, 1, SIDE // 8, SIDE // 8), np.float32))
    tint = rng.uniform(0.4, 1.0, (len(x), 3, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 0.15, (len(x), 3, SIDE, SIDE)).astype(np.float32)
    return np.clip(big * tint + noise, 0, 1).astype(np.float32)


def gap_cnn(width: int = 16):
    """Four conv-BN-ReLU blocks (BatchNorm folds into the convolutions on export) and global average
    pooling: ~14 M multiply-adds at 64x64, and it runs any input size."""
    import torch.nn as nn

    def block(i, o, pool=True):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])

    w = width
    return nn.Sequential(*block(3, w), *block(w, 2 * w), *block(2 * w, 4 * w), *block(4 * w, 4 * w, pool=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


def train(model, x, y, epochs: int):
    import torch

    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=torch.Generator().manual_seed(0)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def eager_ms(model, side: int, runs: int = 50) -> float:
    """Median batch-1 latency of the eager torch model at side x side (the direct peer)."""
    import torch

    x = torch.rand(1, 3, side, side)
    times = []
    with torch.no_grad():
        for i in range(runs + 5):
            t0 = time.perf_counter()
            model(x)
            if i >= 5:
                times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def eager_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def control_finetune(model, xtr, ytr, epochs: int, lr: float, workdir: str):
    """The same fine-tune at the full 64x64 (nbopt's torch engine, same seed and settings): how much of a
    fine-tuned row's accuracy is the extra training rather than the new size."""
    import copy

    from nbopt.backends.base import Context
    from nbopt.backends.torch.train import fit, supervised
    from nbopt.data import load
    from nbopt.training import TrainSettings

    tuned = copy.deepcopy(model)
    fit(tuned, load((xtr, ytr), role="train"), ["input"], supervised, TrainSettings(epochs, lr), Context(workdir))
    return tuned


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2, help="fine-tune epochs at the new size")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tune learning rate")
    ap.add_argument("--train-epochs", type=int, default=8, help="epochs training the model at 64x64")
    args = ap.parse_args()
    cpu = cpu_features()
    print(f"CPU: {cpu.get('model', platform.processor())} ({os.cpu_count()} cores), {platform.platform()}")
    xtr, ytr, xval, yval = digits_arrays(seed=0)
    xtr, xval = colour_digits(xtr, 1), colour_digits(xval, 2)
    t0 = time.perf_counter()
    model = train(gap_cnn(), xtr, ytr, args.train_epochs)
    print(f"model: GAP CNN on 3x{SIDE}x{SIDE}, trained {args.train_epochs} epochs on {len(xtr)} images in "
          f"{time.perf_counter() - t0:.0f} s; eval: {len(xval)} images")
    recipes = [{"resolution": {"scale": list(SCALES), "epochs": [0, args.epochs], "lr": args.lr}}]
    with tempfile.TemporaryDirectory() as store:
        t0 = time.perf_counter()
        study = nbopt.optimize(model, eval=(xval, yval), train=(xtr, ytr), backends=["torch", "onnx"],
                               recipes=recipes, store=store, measure_memory=False, progress=False)
        sweep_s = time.perf_counter() - t0
        df = study.results
        control = control_finetune(model, xtr, ytr, args.epochs, args.lr, store)
    eager = {1.0: eager_ms(model, SIDE), **{s: eager_ms(model, resize.scaled_size((SIDE, SIDE), s)[0])
                                            for s in SCALES}}
    print(f"sweep: {sweep_s:.0f} s (2 baselines + {len(df) - 2} resolution candidates)\n")
    head = (f"{'backend':7} {'scale':>5} {'input':>7} {'fine-tune':>9} {'status':>7} {'accuracy':>8} {'drop':>7} "
            f"{'latency ms':>10} {'x baseline':>10} {'eager torch x':>13} {'train s':>7}")
    print(head)
    print("-" * len(head))
    for backend in ("torch", "onnx"):
        base = df[(df.backend == backend) & (df.recipe == "baseline")].iloc[0]
        rows = [(1.0, 0, base)] + [
            (s, e, df[(df.backend == backend) & (df.recipe == "resolution")
                      & df.params.map(lambda p, s=s, e=e: p.get("scale") == s and p.get("epochs") == e)].iloc[0])
            for s in SCALES for e in (0, args.epochs)]
        for scale, epochs, r in rows:
            side = resize.scaled_size((SIDE, SIDE), scale)[0]
            ok = r["status"] == "ok"
            lat = f"{r['latency_ms']:.3f}" if ok else "-"
            ratio = f"{r['latency_ms'] / base['latency_ms']:.2f}" if ok else "-"
            acc = f"{r['accuracy']:.3f}" if ok else "-"
            drop = f"{r['accuracy_drop']:+.3f}" if ok and r["recipe"] != "baseline" else ""
            train_s = r.get("train_seconds")
            train_s = f"{train_s:.1f}" if isinstance(train_s, float) and train_s == train_s else ""
            print(f"{backend:7} {scale:>5} {f'{side}x{side}':>7} {epochs if epochs else 'no':>9} {r['status']:>7} "
                  f"{acc:>8} {drop:>7} {lat:>10} {ratio:>10} {eager[scale] / eager[1.0]:>13.2f} {train_s:>7}")
    print("\neager torch batch-1 latency (direct peer): " + ", ".join(
        f"{resize.scaled_size((SIDE, SIDE), s)[0]}px {eager[s]:.3f} ms" for s in (1.0, *SCALES)))
    print(f"direct eager torch accuracy at 64x64: {eager_accuracy(model, xval, yval):.3f} as trained, "
          f"{eager_accuracy(control, xval, yval):.3f} after the same {args.epochs}-epoch fine-tune at 64x64 "
          "(control: the extra training alone)")
    print("arithmetic ratio (pixels): " + ", ".join(f"{s}: {s * s:.2f}" for s in SCALES))


if __name__ == "__main__":
    main()
