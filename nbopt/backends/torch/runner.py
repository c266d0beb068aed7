"""Torch backend: running a deployable file (``.pte`` with ``executorch.runtime``, ``.pt2`` with
``torch.export.load``), and the tensor plumbing both sides share.

torch and torchao are imported once, quietly, and cached: runners call ``import_torch`` on every inference.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError
from ...quiet import quiet
from ..base import Artifact


PTE, PT2 = "pte", "pt2"


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
        # no capture here: this is the timed path (warnings only, which cost nothing to silence)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _numpy(first_output(self.module(*tensors)))


def load(artifact: Artifact):
    if artifact.format == PTE:
        return PteRunner(artifact.path)
    if artifact.format == PT2:
        return Pt2Runner(artifact.path)
    raise CandidateError(f"The torch backend cannot run a '{artifact.format}' artifact.")
