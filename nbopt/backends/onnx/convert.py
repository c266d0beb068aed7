"""Getting a model into ONNX: export a torch module, or load an .onnx file / ModelProto, with clear errors.

Imported only by the onnx backend modules (onnx, onnxruntime and torch are imported lazily here).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ...quiet import quiet

ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def model_files(path: Path) -> list[Path]:
    """The .onnx file plus every external-data file it references (what a user would ship)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    files = [path]
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            f = path.parent / ExternalDataInfo(tensor).location
            if f not in files:
                files.append(f)
    return files


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
    """Check that ``path`` is a loadable ONNX model (external data present) and copy it into ``dest``."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    path = Path(path)
    if not path.is_file():
        raise NboptError(f"ONNX model file '{path}' does not exist: check the path.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise NboptError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}: "
                         f"{one_line(exc, with_type=False)}); the file may be truncated or not an .onnx file.") from exc
    if not proto.graph.node:
        raise NboptError(f"'{path}' holds no ONNX graph (zero nodes): the file is empty or not an ONNX model.")
    copied = dest / path.name
    shutil.copyfile(path, copied)
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            loc = ExternalDataInfo(tensor).location
            src = path.parent / loc
            if not src.is_file():
                raise NboptError(f"ONNX model '{path.name}' stores tensor '{tensor.name}' in external data "
                                 f"file '{loc}', which is missing next to it in '{path.parent}': copy that "
                                 "file there too.")
            target = dest / loc
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
    return copied


def export_torch(model: Any, example: dict[str, np.ndarray], single_input: bool, dest: Path) -> tuple[Path, str]:
    """Export a torch module to ``dest/model.onnx``: the dynamo exporter, TorchScript as fallback.

    Returns the path and a note saying which exporter produced it (and why the fallback, if any).
    The batch axis of every input is dynamic.
    """
    import torch

    model = model.eval()
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
        return path, "exported with torch.onnx dynamo exporter"
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back to TorchScript
        dynamo_error = one_line(exc)
    for f in dest.glob("model.onnx*"):
        f.unlink()
    try:
        with quiet():
            if single_input:
                targs, ts_names = args, input_names
            else:  # positional order follows forward()'s signature
                import inspect

                order = [p for p in inspect.signature(model.forward).parameters if p in tensors]
                ts_names = order + [k for k in names if k not in order]
                targs = (*(tensors[k] for k in order), {k: tensors[k] for k in names if k not in order})
            torch.onnx.export(model, targs, str(path), input_names=ts_names, output_names=["output"],
                              dynamic_axes={k: {0: "batch"} for k in ts_names}, dynamo=False,
                              opset_version=17)
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"torch.onnx could not export this model: the dynamo exporter failed "
                         f"({dynamo_error[:300]}) and the TorchScript exporter failed too "
                         f"({type(exc).__name__}: {one_line(exc, 300, with_type=False)}).") from exc
    return path, f"exported with the TorchScript exporter because the dynamo exporter failed ({dynamo_error[:200]})"


def new_tempdir(prefix: str = "nbopt_onnx_") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
