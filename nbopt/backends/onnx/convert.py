"""Getting a model into ONNX: export a torch module, or load an .onnx file / ModelProto, with clear errors.

Imported only by the onnx backend modules (onnx, onnxruntime and torch are imported lazily here).
"""
from __future__ import annotations

import copy
import shutil
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ...quiet import quiet
from ...store import scratch_dir

ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _graph_tensors(graph) -> Iterator[tuple[str, Any]]:
    """(name, TensorProto) for every tensor stored in ``graph``: initializers, sparse initializers and the
    tensors in node attributes, subgraphs included."""
    for t in graph.initializer:
        yield t.name, t
    for sp in graph.sparse_initializer:
        yield from _sparse(sp)
    for node in graph.node:
        yield from _node_tensors(node)


def _sparse(sp, owner: str = "") -> Iterator[tuple[str, Any]]:
    name = sp.values.name or owner
    yield name, sp.values
    yield f"{name} (indices)", sp.indices


def _node_tensors(node) -> Iterator[tuple[str, Any]]:
    for attr in node.attribute:
        owner = f"{node.name or node.op_type}.{attr.name}"
        if attr.HasField("t"):
            yield attr.t.name or owner, attr.t
        for t in attr.tensors:
            yield t.name or owner, t
        if attr.HasField("sparse_tensor"):
            yield from _sparse(attr.sparse_tensor, owner)
        for sp in attr.sparse_tensors:
            yield from _sparse(sp, owner)
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def _all_tensors(proto) -> Iterator[tuple[str, Any]]:
    """Every tensor of a ModelProto (main graph, subgraphs, functions, training graphs), with a name to show."""
    yield from _graph_tensors(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            yield from _node_tensors(node)
    for info in proto.training_info:
        for g in (info.initialization, info.algorithm):
            yield from _graph_tensors(g)


def external_tensors(proto) -> list[tuple[str, Any, dict[str, str]]]:
    """(name, TensorProto, external-data entries) for every tensor whose data lives in another file."""
    from onnx import TensorProto

    out = []
    for name, tensor in _all_tensors(proto):
        if tensor.data_location == TensorProto.EXTERNAL:
            out.append((name, tensor, {e.key: e.value for e in tensor.external_data}))
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS rejects
        return False


def external_files(path: Path, proto=None) -> dict[str, Path]:
    """The external-data files of the .onnx at ``path``, by location, each checked to lie inside the model's
    folder (symlinks followed) BEFORE anything is read from it; any other location is one NboptError."""
    return {loc: f for loc, (_, f) in _external_sources(Path(path), proto).items()}


def _external_sources(path: Path, proto=None) -> dict[str, tuple[str, Path]]:
    """location -> (the first tensor stored there, the file), every location confined to ``path``'s folder."""
    if proto is None:
        proto = _load_graph_only(path)
    root = path.parent
    found: dict[str, tuple[str, Path]] = {}
    for name, _, entries in external_tensors(proto):
        loc = entries.get("location", "")
        if loc in found:
            continue
        where = Path(loc)
        if not loc or "\0" in loc or where.is_absolute() or PureWindowsPath(loc).anchor \
                or not _inside(root / where, root):
            raise NboptError(f"ONNX model '{path.name}' stores tensor '{name}' at external-data location '{loc}', "
                             f"which is not inside the model's folder '{root}': nbopt reads only files next to "
                             "the model (move the data file there and save the model again).")
        found[loc] = (name, root / where)
    return found


def save_user_proto(proto, path: Path) -> list[Path]:
    """Save a user's ``onnx.ModelProto`` at ``path`` without changing it (saving as external data rewrites
    the proto it is given, so a copy is saved then). A tensor that points at an external file the proto
    does not carry cannot be read from here: one NboptError, before anything is written. Locations in the
    proto are never used: tensors it carries are saved as nbopt chooses, inside ``path``'s folder."""
    import onnx

    external = external_tensors(proto)
    for name, tensor, entries in external:
        if not tensor.HasField("raw_data"):
            raise NboptError(f"This onnx.ModelProto keeps tensor '{name}' in external file "
                             f"'{entries.get('location', '')}', which it does not carry: pass the .onnx path "
                             "instead, or load it with onnx.load(path) (external data included).")
    if external or proto.ByteSize() > 1_800_000_000:
        proto, original = onnx.ModelProto(), proto
        proto.CopyFrom(original)
        for _, tensor, _ in external_tensors(proto):  # the data is in the proto: forget where it came from
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    return save_model(proto, path)


def _load_graph_only(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise NboptError(f"'{path}' is not a readable ONNX model ("
                         f"{one_line(exc)}); the file may be truncated or not an .onnx file.") from exc


def model_files(path: Path) -> list[Path]:
    """The .onnx file plus every external-data file it references (what a user would ship), every one
    confined to the model's folder (see ``external_files``)."""
    path = Path(path)
    return [path, *(f for f in external_files(path).values() if f != path)]


def copy_model(src: Path, model_out: Path, data_out: Path, location: str) -> None:
    """Copy the .onnx ``src`` to ``model_out`` with all its external data in ONE file, ``data_out``, which the
    copy names ``location`` (relative to the copy's folder; the caller moves the files into place).

    Tensor bytes are copied as they are (one data file: byte for byte, offsets unchanged; several: appended
    at 4 KiB-aligned offsets), so the copy computes exactly what ``src`` does and has the same size."""
    src = Path(src)
    proto = _load_graph_only(src)
    sources = external_files(src, proto)
    bases: dict[str, int] = {}
    sizes: dict[str, int] = {}
    with open(data_out, "wb") as out:
        for loc, f in sources.items():
            pad = -out.tell() % 4096 if bases else 0
            out.write(b"\0" * pad)
            bases[loc], sizes[loc] = out.tell(), f.stat().st_size
            with open(f, "rb") as fin:
                shutil.copyfileobj(fin, out, 1 << 20)
    for _, tensor, entries in external_tensors(proto):
        loc = entries.get("location", "")
        offset = int(entries.get("offset") or 0)
        new = {"location": location, "offset": str(bases[loc] + offset)}
        if "length" not in entries and len(sources) > 1:  # "to the end of the file" would now read too far
            new["length"] = str(sizes[loc] - offset)
        for e in tensor.external_data:
            if e.key in new:
                e.value = new.pop(e.key)
        for key, value in new.items():
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    Path(model_out).write_bytes(proto.SerializeToString())


def save_model(proto, path: Path, external: bool | None = None) -> list[Path]:
    """Save ``proto`` at ``path`` (external data only when needed: >1.8 GB or asked) and list its files."""
    import onnx

    path = Path(path)
    if external is None:
        external = proto.ByteSize() > 1_800_000_000
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return model_files(path)


def load_user_file(path: Path, dest: Path) -> Path:
    """Check that ``path`` is a loadable ONNX model (external data present, and inside the model's folder)
    and copy it into ``dest``. Every check is done before anything is copied."""
    path = Path(path)
    if not path.is_file():
        raise NboptError(f"ONNX model file '{path}' does not exist: check the path.")
    proto = _load_graph_only(path)
    if not proto.graph.node:
        raise NboptError(f"'{path}' holds no ONNX graph (zero nodes): the file is empty or not an ONNX model.")
    sources = _external_sources(path, proto)  # confined to path.parent, or one NboptError
    targets = {}
    for loc, (name, src) in sources.items():
        if not src.is_file():
            raise NboptError(f"ONNX model '{path.name}' stores tensor '{name}' in external data "
                             f"file '{loc}', which is missing next to it in '{path.parent}': copy that "
                             "file there too.")
        target = dest / loc
        if not _inside(target, dest) or target.resolve() == (dest / path.name).resolve():
            raise NboptError(f"ONNX model '{path.name}' stores tensor '{name}' at external-data location "
                             f"'{loc}', which nbopt cannot reproduce inside its own copy of the model's folder: "
                             "keep the data files in the model's folder, without '..' in their names.")
        targets[loc] = (src, target)
    copied = dest / path.name
    shutil.copyfile(path, copied)
    for src, target in targets.values():
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return copied


def export_torch(model: Any, example: dict[str, np.ndarray], single_input: bool, dest: Path) -> tuple[Path, str]:
    """Export a torch module to ``dest/model.onnx``: the dynamo exporter, TorchScript as fallback.

    Returns the path and a note saying which exporter produced it (and why the fallback, if any).
    The batch axis of every input is dynamic.
    """
    with eval_copy(model) as model:
        return _export_torch(model, example, single_input, dest)


def _export_torch(model: Any, example: dict[str, np.ndarray], single_input: bool, dest: Path) -> tuple[Path, str]:
    """Export what the exporters can take (the cache off, the first tensor output) and say what changed."""
    import torch

    from ..base import exportable

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()}
    args, kwargs = ((tensors[next(iter(tensors))],), {}) if single_input else ((), tensors)
    with exportable(model, args, kwargs) as (view, notes):
        path, note = _export_view(view, example, single_input, dest)
    return path, ", ".join([note, *notes])


@contextmanager
def eval_copy(model: Any):
    """The model in eval mode without touching the user's: a deep copy, or (for a model that cannot be
    copied) the model itself with every submodule's train/eval flag put back afterwards."""
    try:
        copied = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - e.g. a module holding a lock or an open file
        copied = None
    if copied is not None:
        yield copied.eval()
        return
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model.eval()
    finally:
        for m, training in modes:
            m.training = training


def _export_view(model: Any, example: dict[str, np.ndarray], single_input: bool, dest: Path) -> tuple[Path, str]:
    import torch

    names = list(example)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()}
    path = dest / "model.onnx"
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    if single_input:
        args, kwargs = (tensors[names[0]],), {}
        dynamic_shapes = ({0: batch},)
    else:
        args, kwargs = (), tensors
        dynamic_shapes = {k: {0: batch} for k in names}
    input_names = ["input"] if single_input else names
    dynamo_error = None
    try:
        with quiet():
            torch.onnx.export(model, args, str(path), kwargs=kwargs or None, input_names=input_names,
                              dynamic_shapes=dynamic_shapes, dynamo=True, external_data=True,
                              optimize=True, verify=False)
        _strip_node_metadata(path)
        return path, "exported with torch.onnx dynamo exporter"
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back to TorchScript
        dynamo_error = one_line(exc, 250)
    for f in dest.glob("model.onnx*"):
        f.unlink()
    try:
        with quiet():
            if single_input:
                targs, ts_names = args, input_names
            else:  # positional order follows forward()'s signature
                import inspect

                source = getattr(model, "source", model)  # the model's own forward, not a view's *args
                order = [p for p in inspect.signature(source.forward).parameters if p in tensors]
                ts_names = order + [k for k in names if k not in order]
                targs = (*(tensors[k] for k in order), {k: tensors[k] for k in names if k not in order})
            torch.onnx.export(model, targs, str(path), input_names=ts_names, output_names=["output"],
                              dynamic_axes={k: {0: "batch"} for k in ts_names}, dynamo=False,
                              opset_version=17)
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"torch.onnx could not export this model: the dynamo exporter failed "
                             f"({dynamo_error.rstrip('.')}) and the TorchScript exporter failed too "
                             f"({one_line(exc, 200).rstrip('.')}).") from exc
    return path, f"exported with the TorchScript exporter because the dynamo exporter failed ({dynamo_error.rstrip('.')})"


def _strip_node_metadata(path: Path) -> None:
    """Drop the dynamo exporter's per-node metadata (stack traces, module paths): half of a small
    transformer's int8 file (198-241 KB on a 2-layer BERT), carried into every candidate, never read by a
    runtime. The weights (external data) are not touched."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    found = False
    for node in _all_nodes(proto.graph):
        if len(node.metadata_props) or node.doc_string:
            found = True
            del node.metadata_props[:]
            node.doc_string = ""
    if found:
        onnx.save_model(proto, str(path))


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def new_tempdir() -> Path:
    """The prepared model's private folder: under the study's store (removed with its scratch)."""
    return scratch_dir("onnx")
