"""Each torch-backend recipe done by calling the libraries directly (no nbopt), for overhead ratios.

    from benchmarks.bench_torch_direct import bench_direct
    out = bench_direct("int8-static", model, (x_calib, y_calib))   # {"path", "format", "size_bytes", "seconds"}

Single-input models; ``calib_arrays`` is ``x`` or ``(x, y)`` numpy arrays (y is needed only for the
prune-structured fine-tune). The pipelines are the ones nbopt's torch backend runs, minus its checks
(reload-and-run verification, layer counting, notes) and fallbacks.

    python benchmarks/bench_torch_direct.py        # times every recipe on the digits CNN
"""
from __future__ import annotations

import copy
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

RECIPES = ("baseline", "fp16", "int8-dynamic", "int8-weight-only", "int4-weight-only", "int8-static",
           "prune-unstructured", "prune-structured")


def _lower(program, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import (
        get_xnnpack_edge_compile_config,
        get_xnnpack_executorch_backend_config,
    )
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                      compile_config=get_xnnpack_edge_compile_config())
    path.write_bytes(edge.to_executorch(config=get_xnnpack_executorch_backend_config()).buffer)
    return path


def _torchao(model, config, filter_fn=None):
    from torchao.quantization import quantize_
    from torchao.utils import unwrap_tensor_subclass

    model = copy.deepcopy(model)
    quantize_(model, config, filter_fn=filter_fn) if filter_fn else quantize_(model, config)
    unwrap_tensor_subclass(model)
    return model


def bench_direct(recipe_name: str, model, calib_arrays, params: dict | None = None, workdir=None) -> dict:
    import torch

    params = dict(params or {})
    x, y = calib_arrays if isinstance(calib_arrays, tuple) else (calib_arrays, None)
    x = torch.from_numpy(np.ascontiguousarray(x))
    example = (x[:1],)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-torch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    out_path, fmt, extra = workdir / f"{recipe_name}.pte", "pte", {}
    t0 = time.perf_counter()
    with torch.no_grad():
        if recipe_name == "baseline":
            _lower(torch.export.export(model, example), out_path)
        elif recipe_name == "fp16":
            class Half(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner.half()

                def forward(self, a):
                    return self.inner(a.half()).float()

            _lower(torch.export.export(Half(model), example), out_path)
        elif recipe_name == "int8-dynamic":
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig
            from torchao.quantization.granularity import PerAxis

            q = _torchao(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8,
                                                                      weight_granularity=PerAxis(0)))
            _lower(torch.export.export(q, example), out_path)
        elif recipe_name == "int8-weight-only":
            from torchao.quantization import Int8WeightOnlyConfig

            _lower(torch.export.export(_torchao(model, Int8WeightOnlyConfig()), example), out_path)
        elif recipe_name == "int4-weight-only":
            from torchao.quantization import IntxWeightOnlyConfig
            from torchao.quantization.granularity import PerGroup

            group = int(params.get("group_size", 32))
            q = _torchao(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group)),
                         lambda m, fqn="": isinstance(m, torch.nn.Linear) and m.in_features % group == 0)
            # no ExecuTorch kernel for torchao::dequantize_affine: the .pt2 is the artifact
            out_path, fmt = workdir / f"{recipe_name}.pt2", "pt2"
            torch.export.save(torch.export.export(q, example), str(out_path))
        elif recipe_name == "int8-static":
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=params.get("per_channel", True)))
            batch = torch.export.Dim("batch", min=1, max=4096)
            gm = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},)).module()
            prepared = prepare_pt2e(gm, quantizer)
            for chunk in x.split(64):
                prepared(chunk)
            _lower(torch.export.export(convert_pt2e(prepared), example), out_path)
        elif recipe_name == "prune-unstructured":
            from torch.nn.utils import prune

            layers = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
            prune.global_unstructured(layers, pruning_method=prune.L1Unstructured,
                                      amount=params.get("amount", 0.5))
            for m, n in layers:
                prune.remove(m, n)
            _lower(torch.export.export(model, example), out_path)
            extra["size_compressed_bytes"] = len(zlib.compress(out_path.read_bytes(), 9))
        elif recipe_name == "prune-structured":
            import torch_pruning as tp

            last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
            with torch.enable_grad():  # Torch-Pruning traces the graph through autograd
                pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                              pruning_ratio=params.get("amount", 0.3), ignored_layers=[last])
                pruner.step()
            if y is not None and params.get("finetune_epochs", 5):
                with torch.enable_grad():
                    yt = torch.from_numpy(np.asarray(y))
                    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                    model.train()
                    for _ in range(int(params.get("finetune_epochs", 5))):
                        for xb, yb in zip(x.split(32), yt.split(32)):
                            opt.zero_grad()
                            torch.nn.functional.cross_entropy(model(xb), yb).backward()
                            opt.step()
                    model.eval()
            _lower(torch.export.export(model, example), out_path)
        else:
            raise ValueError(f"unknown recipe {recipe_name!r}; known: {', '.join(RECIPES)}")
    seconds = time.perf_counter() - t0
    return {"recipe": recipe_name, "path": str(out_path), "format": fmt, "size_bytes": out_path.stat().st_size,
            "seconds": seconds, **extra}


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nbopt.demo import digits_arrays, train_digits_cnn  # data + model only; the recipes above are direct

    xtr, ytr, xval, yval = digits_arrays()
    model = train_digits_cnn(epochs=4, data=(xtr, ytr, xval, yval))
    for name in RECIPES:
        r = bench_direct(name, model, (xtr[:256], ytr[:256]))
        print(f"{name:20s} {r['format']}  {r['size_bytes']:>9d} B  {r['seconds']:6.2f} s")


if __name__ == "__main__":
    main()
