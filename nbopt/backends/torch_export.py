"""Torch backend, part 1: turning a module into a deployable file, and running that file.

Preferred: an ExecuTorch ``.pte`` program with the XNNPACK delegate (``torch.export`` ->
``to_edge_transform_and_lower`` -> ``to_executorch``), run by ``executorch.runtime``. When a graph does
not lower or does not run, the fallback is ``torch.export``'s ``.pt2`` run by ``torch.export.load``.
Every artifact is loaded back and run once before it is handed over, so a file that cannot run is an
error here, not a wrong number later.

ExecuTorch programs have a static batch of 1 (``Runner.max_batch = 1``): with a symbolic batch, the
XNNPACK lowering re-runs torch's fake convolution, whose backend choice guards the batch to < 16 and
narrows the memory plan to 15 examples; a batch-1 program is also what a phone runs.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CandidateError
from .base import Artifact

PTE, PT2 = "pte", "pt2"


@contextlib.contextmanager
def quiet():
    """Silence the import-time and export-time chatter of torch / torchao / executorch (not errors)."""
    names = ("torchao", "torch.utils._pytree", "torch._export", "torch.export", "executorch", "root",
             "torch._dynamo", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


@functools.lru_cache(maxsize=None)
def import_torch():
    """torch, imported once quietly (cached: runners call this on every inference)."""
    with quiet():
        import torch
    return torch


@functools.lru_cache(maxsize=None)
def import_torchao():
    with quiet():
        import torchao  # noqa: F401  (registers torch.ops.torchao.* used by quantized .pt2 files)
        import torchao.quantization  # noqa: F401
    return torchao


# -- inputs --------------------------------------------------------------------------------------


class Positional:
    """Builds a module whose forward takes the inputs positionally, in ``input_names`` order."""

    @staticmethod
    def wrap(model, input_names: list[str], single_input: bool):
        torch = import_torch()
        if single_input:
            return model

        class NamedInputs(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *args):
                return self.inner(**dict(zip(input_names, args)))

        return NamedInputs(model)


def to_tensors(inputs: dict[str, np.ndarray]) -> tuple:
    torch = import_torch()
    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())


def first_output(out: Any):
    """The first tensor of a model's output (a tensor, a tuple/list, a dict or a HF ModelOutput)."""
    torch = import_torch()
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        values = list(out.values()) if isinstance(out, dict) else list(out.to_tuple())
        return first_output(values[0])
    if isinstance(out, (list, tuple)) and out:
        return first_output(out[0])
    raise CandidateError(f"The model returned a {type(out).__name__}; nbopt needs a tensor (or a tuple/dict "
                         "whose first item is one).")


def _numpy(t) -> np.ndarray:
    t = t.detach()
    if t.dtype.is_floating_point and t.dtype != t.new_zeros(()).float().dtype:
        t = t.float()
    return t.cpu().numpy()


# -- export ----------------------------------------------------------------------------------------


def export_static(module, args: tuple):
    """``torch.export`` at the example's batch size (static shapes)."""
    torch = import_torch()
    with quiet():
        return torch.export.export(module, args, strict=False)


def export_dynamic_batch(module, args: tuple):
    """``torch.export`` with a symbolic batch dimension (max 4096); None if the model pins the batch."""
    torch = import_torch()
    from torch.export import Dim

    args2 = tuple(torch.cat([a, a]) if a.dim() > 0 else a for a in args)
    batch = Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} if a.dim() > 0 else None for a in args2)
    try:
        with quiet():
            return torch.export.export(module, args2, dynamic_shapes=shapes, strict=False)
    except Exception:
        return None


@dataclass
class Lowered:
    path: Path
    delegated: int  # operator nodes inside XNNPACK
    portable: list[str]  # operator names left to ExecuTorch's portable kernels


def lower_to_pte(program, path: Path) -> Lowered:
    """ExecuTorch program with the XNNPACK delegate; raises on any lowering failure."""
    with quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.utils.configs import (
            get_xnnpack_edge_compile_config,
            get_xnnpack_executorch_backend_config,
        )
        from executorch.exir import to_edge_transform_and_lower

        ops_before = sum(1 for n in program.graph.nodes if n.op == "call_function")
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                          compile_config=get_xnnpack_edge_compile_config())
        graph = edge.exported_program().graph
        portable = [_op_name(n.target) for n in graph.nodes if n.op == "call_function"
                    and "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target)]
        et = edge.to_executorch(config=get_xnnpack_executorch_backend_config())
    path.write_bytes(et.buffer)
    return Lowered(path, max(ops_before - len(portable), 0), portable)


def _op_name(target) -> str:
    name = getattr(target, "__name__", None) or str(target)
    name = name.split(":")[0].replace("<EdgeOpOverload", "").strip(" <>")
    return name.replace(".default", "")


def save_pt2(program, path: Path) -> Path:
    torch = import_torch()
    with quiet():
        torch.export.save(program, str(path))
    return path


def build(module, example: tuple, workdir: Path, *, notes: list[str], info: dict,
          stem: str = "model", pte: bool = True, program=None, reference=None) -> Artifact:
    """The deployable artifact for ``module``: a verified ``.pte``, else a verified ``.pt2``.

    ``program`` is an already exported (batch-1) program to lower instead of exporting ``module``.
    ``reference`` (the eager output on ``example``) is compared with the artifact's output.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    why = "ExecuTorch lowering was not attempted"
    if pte:
        try:
            prog = program if program is not None else export_static(module, example)
            low = lower_to_pte(prog, workdir / f"{stem}.pte")
            art = Artifact(low.path, PTE, notes=_join(notes), info=dict(info))
            _verify(art, example, reference)
            where = "ExecuTorch .pte, all ops in the XNNPACK delegate"
            if low.portable:
                names = sorted(set(low.portable))
                where = (f"ExecuTorch .pte, XNNPACK delegate; {len(low.portable)} ops on ExecuTorch portable "
                         f"kernels ({', '.join(names[:4])}" + (", ..." if len(names) > 4 else "") + ")")
            art.notes = _join([where] + notes)
            art.info.setdefault("runtime", "executorch")
            return art
        except Exception as exc:  # noqa: BLE001 - any failure means: fall back, and say why
            why = _reason(exc)
            for f in workdir.glob(f"{stem}.pte"):
                f.unlink()
    prog = export_dynamic_batch(module, example) or export_static(module, example)
    path = save_pt2(prog, workdir / f"{stem}.pt2")
    art = Artifact(path, PT2, info=dict(info))
    _verify(art, example, reference)
    head = "torch.export .pt2" + (f" (ExecuTorch fallback: {why})" if pte else "")
    art.notes = _join([head] + notes)
    art.info.setdefault("runtime", "torch.export")
    return art


def _verify(art: Artifact, example: tuple, reference=None) -> None:
    """Load the artifact back and run it once: a file that cannot run never reaches the evaluator."""
    out = load(art)({f"in{i}": a.numpy() for i, a in enumerate(example)})
    if np.issubdtype(out.dtype, np.floating) and np.isnan(out).any():
        raise CandidateError(f"The {art.format} artifact produced NaN on the example input.")
    if reference is not None and tuple(out.shape) != tuple(reference.shape):
        raise CandidateError(f"The {art.format} artifact returned shape {tuple(out.shape)}, the model "
                             f"{tuple(reference.shape)}.")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    first = text.split(". ")[0][:200] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first}"


def _join(parts: list[str]) -> str:
    return "; ".join(p for p in parts if p)


# -- runners ---------------------------------------------------------------------------------------


class PteRunner:
    """Runs a ``.pte`` with ``executorch.runtime`` (XNNPACK and portable kernels), one example a call."""

    def __init__(self, path: Path):
        with quiet():
            from executorch.runtime import Runtime

            runtime = Runtime.get()
            self.program = runtime.load_program(Path(path))
            self.method = self.program.load_method("forward")
        meta = self.method.metadata
        self._dtypes = [str(meta.input_tensor_meta(i).dtype()) for i in range(meta.num_inputs())]
        self._batch = [list(meta.input_tensor_meta(i).sizes())[:1] for i in range(meta.num_inputs())]
        self.max_batch = 1 if all(b == [1] for b in self._batch) else None
        self.threads = _et_threads()

    def _feed(self, arrays: list[np.ndarray]):
        torch = import_torch()
        out = []
        for a, dt in zip(arrays, self._dtypes):
            t = torch.from_numpy(np.ascontiguousarray(a))
            want = _ET_DTYPES.get(dt.split(".")[-1])
            out.append(t.to(want) if want is not None and t.dtype != want else t)
        return out

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        arrays = list(inputs.values())
        if len(arrays) != len(self._dtypes):
            raise CandidateError(f"The .pte program takes {len(self._dtypes)} inputs, got {len(arrays)}.")
        n = len(arrays[0]) if arrays[0].ndim else 1
        if self.max_batch == 1 and n != 1:
            return np.concatenate([self({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)])
        return _numpy(self.method.execute(self._feed(arrays))[0])


def _et_dtypes():
    torch = import_torch()
    return {"Float": torch.float32, "Half": torch.float16, "Long": torch.int64, "Int": torch.int32,
            "Bool": torch.bool, "Byte": torch.uint8, "Char": torch.int8, "Double": torch.float64}


class _LazyDtypes(dict):
    def get(self, key, default=None):
        if not self:
            self.update(_et_dtypes())
        return super().get(key, default)


_ET_DTYPES = _LazyDtypes()


def _et_threads() -> int:
    try:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

        return int(_threadpool_get_thread_count())
    except Exception:  # noqa: BLE001
        return 1


class Pt2Runner:
    """Runs a ``.pt2`` with ``torch.export.load(...).module()`` (eager torch kernels)."""

    def __init__(self, path: Path):
        torch = import_torch()
        import_torchao()  # quantized programs call torch.ops.torchao.*
        with quiet():
            program = torch.export.load(str(path))
        self.module = program.module()
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        user = [n for n in placeholders if n.name in set(program.graph_signature.user_inputs)]
        self._dtypes = [n.meta["val"].dtype for n in user if "val" in n.meta]
        batch = [n.meta["val"].shape[0] for n in user if "val" in n.meta and n.meta["val"].dim() > 0]
        static = all(isinstance(b, int) for b in batch)
        self.max_batch = (batch[0] if batch else 1) if static else None
        self.threads = torch.get_num_threads()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = import_torch()
        arrays = list(inputs.values())
        n = len(arrays[0]) if arrays[0].ndim else 1
        if self.max_batch is not None and n != self.max_batch:
            if self.max_batch != 1:
                raise CandidateError(f"This .pt2 program has a fixed batch of {self.max_batch}, got {n}.")
            return np.concatenate([self({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)])
        tensors = []
        for i, a in enumerate(arrays):
            t = torch.from_numpy(np.ascontiguousarray(a))
            if i < len(self._dtypes) and t.dtype != self._dtypes[i]:
                t = t.to(self._dtypes[i])
            tensors.append(t)
        with torch.no_grad(), quiet():
            return _numpy(first_output(self.module(*tensors)))


def load(artifact: Artifact):
    if artifact.format == PTE:
        return PteRunner(artifact.path)
    if artifact.format == PT2:
        return Pt2Runner(artifact.path)
    raise CandidateError(f"The torch backend cannot run a '{artifact.format}' artifact.")
