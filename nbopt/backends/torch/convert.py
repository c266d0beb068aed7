"""Torch backend: turning a module into a deployable file.

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CandidateError, one_line
from ...quiet import quiet
from ..base import Artifact, exportable
from .runner import PT2, PTE, import_torch, load

# -- export ----------------------------------------------------------------------------------------


def export_static(module, args: tuple):
    """``torch.export`` at the example's batch size (static shapes), of what the exporter can take (see
    ``exportable``: the cache off, the first tensor output)."""
    torch = import_torch()
    with exportable(module, args) as (view, _), quiet():
        return torch.export.export(view, args, strict=False)


def export_dynamic_batch(module, args: tuple):
    """``torch.export`` with a symbolic batch dimension (max 4096); None if the model pins the batch."""
    torch = import_torch()
    from torch.export import Dim

    args2 = tuple(torch.cat([a, a]) if a.dim() > 0 else a for a in args)
    batch = Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} if a.dim() > 0 else None for a in args2)
    try:
        with exportable(module, args2) as (view, _), quiet():
            return torch.export.export(view, args2, dynamic_shapes=shapes, strict=False)
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


def build_artifact(module, example: tuple, workdir: Path, *, notes: list[str], info: dict,
          stem: str = "model", pte: bool = True, program=None, reference=None) -> Artifact:
    """The deployable artifact for ``module``: a verified ``.pte``, else a verified ``.pt2``.

    ``program`` is an already exported (batch-1) program to lower instead of exporting ``module``.
    ``reference`` (the eager output on ``example``) is compared with the artifact's output.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with exportable(module, example) as (_, changed):  # what the exports below change, for the notes
        notes = [*notes, *(c for c in changed if c not in notes)]
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
            why = one_line(exc, 200)
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


def _join(parts: list[str]) -> str:
    return "; ".join(p for p in parts if p)
