"""qat benchmark: quantization-aware training against post-training quantization at the same size, and
nbopt's qat handler against the same PT2E QAT steps written plainly.

Model: a digits MLP (Flatten-Linear(64,64)-ReLU-Linear(64,10)) trained in a second, then one hidden channel
scaled up 400x with its outgoing weights scaled down to match (fp32 outputs unchanged): per-tensor int8
activations spend their levels on that channel, so post-training int8 loses most of the others.

1. One nbopt study (torch -> .pte, onnx -> onnxruntime): int8-static vs qat (bits=8), int4-weight-only
   (activations=int8) vs qat bits=4; plus qat on unlabelled train data (distillation from the fp32 model).
   Accuracy on the digits eval split, size on disk.
2. Overhead: nbopt's torch qat handler (``backend.apply``: export, prepare_qat_pt2e, calibrate, ``fit``,
   convert_pt2e, lower + verify the .pte) against the plain steps (export, prepare_qat_pt2e, calibrate, an
   Adam loop with the same epochs / lr / batch size, convert_pt2e, lower to .pte), best of 3 runs each.

    python benchmarks/bench_qat.py
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from nbopt.demo import outlier_mlp  # noqa: E402

SCALE = 400.0
EPOCHS, LR = 3, 3e-3
QAT = {"epochs": EPOCHS, "lr": LR}


def outlier_ratio(model, k: int, x) -> float:
    """Largest activation of the outlier channel over the largest of all the other hidden channels."""
    import torch

    with torch.no_grad():
        h = torch.relu(model[1](model[0](torch.from_numpy(x))))
    others = torch.cat([h[:, :k], h[:, k + 1:]], 1)
    return float(h[:, k].max() / others.max())


def study_table(model, data) -> list[dict]:
    import nbopt
    from nbopt.evaluator import LatencySettings

    xtr, ytr, xval, yval = data
    common = dict(calib=(xtr[:256], ytr[:256]), eval=(xval, yval), executor="inline", measure_memory=False,
                  progress=False, latency=LatencySettings(warmup=1, min_runs=3, min_seconds=0.0))
    rows = []
    with tempfile.TemporaryDirectory() as store:
        s = nbopt.optimize(model, train=(xtr, ytr), recipes=[
            "int8-static", {"qat": QAT}, {"int4-weight-only": {"activations": "int8"}}, {"qat": {**QAT, "bits": 4}}],
            backends=["torch", "onnx"], store=Path(store) / "a", **common)
        rows += s.results.to_dict("records")
        s = nbopt.optimize(model, train=xtr, recipes=[{"qat": QAT}], backends=["torch", "onnx"],
                           store=Path(store) / "b", **common)
        rows += [dict(r, name=r["name"] + " [train= unlabelled: distillation]") for r in s.results.to_dict("records")
                 if r["recipe"] == "qat"]
    return rows


def handler_seconds(model, data) -> tuple[float, float]:
    """(seconds, eval accuracy of the .pte) of nbopt's torch qat handler called in this process."""
    from nbopt import data as nbdata
    from nbopt.backends.base import Context
    from nbopt.backends.torch import TorchBackend
    from nbopt.recipes import Recipe

    xtr, ytr, xval, yval = data
    backend = TorchBackend()
    prepared = backend.prepare(model, nbdata.load((xval, yval), "eval"))
    recipe = backend.validate(Recipe("qat", QAT))
    ctx = Context(Path(tempfile.mkdtemp(prefix="bench-qat-")), calib=nbdata.load((xtr[:256], ytr[:256]), "calib"),
                  train=nbdata.load((xtr, ytr), "train"))
    t = time.perf_counter()
    art = backend.apply(prepared, recipe, ctx)
    seconds = time.perf_counter() - t
    runner = backend.load(art)
    pred = np.concatenate([runner({"x": xval[i:i + 1]}) for i in range(len(xval))]).argmax(1)
    return seconds, float((pred == yval).mean())


def direct_seconds(model, data) -> tuple[float, float]:
    """(seconds, eval accuracy of the .pte) of the same PT2E QAT steps written plainly."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from executorch.backends.xnnpack.utils.configs import (get_xnnpack_edge_compile_config,
                                                           get_xnnpack_executorch_backend_config)
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    xtr, ytr, xval, yval = data
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    path = Path(tempfile.mkdtemp(prefix="bench-qat-direct-")) / "model.pte"
    t = time.perf_counter()
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # a copy: an exported program shares its parameters with the module, and training changes them
    program = torch.export.export(copy.deepcopy(model), (x[:2],), dynamic_shapes=({0: batch},), strict=False)
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    qat = prepare_qat_pt2e(program.module(), quantizer)
    with torch.no_grad():
        qat(x[:256])  # calibration: the fake quantizers' observers see data first
    opt = torch.optim.Adam(qat.parameters(), lr=LR)
    for _ in range(EPOCHS):  # no dropout / batch norm in this model: no train/eval switch needed
        for idx in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(qat(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    converted = convert_pt2e(qat)
    edge = to_edge_transform_and_lower(torch.export.export(converted, (x[:1],), strict=False),
                                      partitioner=[XnnpackPartitioner()],
                                      compile_config=get_xnnpack_edge_compile_config())
    path.write_bytes(edge.to_executorch(config=get_xnnpack_executorch_backend_config()).buffer)
    seconds = time.perf_counter() - t
    method = Runtime.get().load_program(path).load_method("forward")
    pred = np.array([int(method.execute([torch.from_numpy(xval[i:i + 1])])[0].argmax()) for i in range(len(xval))])
    return seconds, float((pred == yval).mean())


def main() -> None:
    from nbopt.demo import digits_arrays
    from nbopt.quiet import quiet
    from nbopt.speed import cpu_features

    start = time.perf_counter()
    data = digits_arrays(seed=0)
    model, k = outlier_mlp(data, SCALE)
    cpu = cpu_features()
    print(f"CPU: {cpu.get('model', '?')} ({os.cpu_count()} cores; int8 dot product: {cpu.get('int8_dot')})")
    print(f"model: digits MLP 64-64-10, hidden channel {k} scaled x{SCALE:g}: its largest activation is "
          f"{outlier_ratio(model, k, data[0][:256]):.0f}x the largest of the other 63 channels (calibration data)")
    print(f"qat: epochs={EPOCHS}, lr={LR}, train = the {len(data[0])} digits training images (10% held out by the "
          f"engine), calib = 256 of them, eval = {len(data[2])} other images\n")
    with quiet():
        rows = study_table(model, data)
    print(f"{'candidate':62s} {'format':>6s} {'size B':>8s} {'accuracy':>9s} {'drop':>7s} {'train s':>8s}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['name']:62s} {r['status']}: {r['error']}")
            continue
        train = f"{r['train_seconds']:.1f}" if r.get("train_seconds") == r.get("train_seconds") and r.get(
            "train_seconds") is not None else ""
        print(f"{r['name']:62s} {r['format']:>6s} {int(r['size_bytes']):8d} {r['accuracy']:9.3f} "
              f"{r['accuracy_drop'] or 0:7.3f} {train:>8s}")
    print()
    with quiet():
        nb = [handler_seconds(model, data) for _ in range(3)]
        direct = [direct_seconds(model, data) for _ in range(3)]
    tn, td = min(s for s, _ in nb), min(s for s, _ in direct)
    print(f"{'torch qat, int8, ' + str(EPOCHS) + ' epochs':34s} {'seconds (best of 3)':>19s} {'.pte accuracy':>14s}")
    print(f"{'nbopt handler (backend.apply)':34s} {tn:19.2f} {nb[0][1]:14.3f}")
    print(f"{'PT2E QAT called directly':34s} {td:19.2f} {direct[0][1]:14.3f}")
    print(f"overhead ratio nbopt / direct: {tn / td:.2f}x  (nbopt also evaluates a held-out 10% after every "
          f"epoch, keeps the best epoch's weights, and loads the .pte back to run it once)")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
