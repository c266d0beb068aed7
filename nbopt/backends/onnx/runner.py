"""Running an .onnx file in onnxruntime: the graph's inputs, mapping data onto them, OrtRunner.

onnx and onnxruntime are imported inside functions only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ..common import default_threads
from .convert import ORT_TO_NUMPY


# --------------------------------------------------------------------------------------------------
# graph inputs and input mapping
# --------------------------------------------------------------------------------------------------
@dataclass
class GraphInput:
    name: str
    dtype: Any
    shape: tuple  # ints or None (dynamic)


def graph_inputs(path: Path) -> list[GraphInput]:
    """The real inputs of the graph (initializers listed as inputs by old opsets are left out)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.float32
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        out.append(GraphInput(vi.name, np.dtype(dtype), shape))
    return out


def map_feeds(inputs: dict[str, np.ndarray], graph: list[GraphInput]) -> dict[str, np.ndarray]:
    """Data names -> graph input names (one array feeds the one input; otherwise by name), dtypes cast."""
    names = [g.name for g in graph]
    if len(inputs) == 1 and len(graph) == 1:
        pairs = [(graph[0], next(iter(inputs.values())))]
    elif set(inputs) >= set(names):
        pairs = [(g, inputs[g.name]) for g in graph]
    else:
        raise NboptError(f"The data's inputs ({', '.join(sorted(inputs)) or 'none'}) do not match the ONNX "
                         f"model's inputs ({', '.join(names)}): name the data's arrays or columns after "
                         "the model's inputs.")
    feeds = {}
    for g, arr in pairs:
        arr = np.asarray(arr)
        if arr.dtype != g.dtype:
            arr = arr.astype(g.dtype)
        feeds[g.name] = arr
    return feeds


def static_batch(graph: list[GraphInput]) -> int | None:
    sizes = {g.shape[0] for g in graph if g.shape}
    if not sizes or None in sizes or len(sizes) != 1:
        return None
    return sizes.pop()


def rebatch(feeds: dict[str, np.ndarray], batch: int | None) -> list[tuple[dict[str, np.ndarray], int]]:
    """Split / pad a feed so every piece has the model's static batch size; (piece, real rows)."""
    n = len(next(iter(feeds.values())))
    if batch is None or n == batch:
        return [(feeds, n)]
    pieces = []
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        real = len(next(iter(part.values())))
        if real < batch:
            part = {k: np.concatenate([v, np.repeat(v[-1:], batch - real, axis=0)]) for k, v in part.items()}
        pieces.append((part, real))
    return pieces


# --------------------------------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------------------------------
class OrtRunner:
    """Runs an .onnx file in onnxruntime.InferenceSession (CPU); returns the first output."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.threads = threads or default_threads()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CandidateError(f"onnxruntime cannot load this model ({one_line(exc, 300, with_type=True)}).") from exc
        self.graph = [GraphInput(i.name, np.dtype(ORT_TO_NUMPY.get(i.type, np.float32)),
                                 tuple(d if isinstance(d, int) else None for d in (i.shape or ())))
                      for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.static_batch = static_batch(self.graph)
        self.max_batch = self.static_batch

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feeds = map_feeds(inputs, self.graph)
        outs = []
        for piece, real in rebatch(feeds, self.static_batch):
            outs.append(self.session.run([self.output_name], piece)[0][:real])
        return outs[0] if len(outs) == 1 else np.concatenate(outs)
