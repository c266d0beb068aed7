"""What an .mlpackage holds: how each weight tensor is stored, read from the package's own MIL program.

Only the model spec is read (``MLModel(path, skip_model_load=True).get_spec()``), not the weights blob and
not Core ML's runtime, so this works on every system. A weight is the constant input of a conv, linear,
matmul or gather (embedding) op; it is stored plainly (``const``: fp32 / fp16) or compressed by one of
Core ML's ``constexpr_*`` ops, expanded when the model loads. ``size_breakdown(artifact)`` says where the
package's bytes go (its weights file, read through the program and the blobs' own metadata).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .runner import import_ct

WEIGHT_INPUTS = {"conv": ("weight",), "conv_transpose": ("weight",), "linear": ("weight",),
                 "matmul": ("x", "y"), "gather": ("x",)}
PLAIN = ("fp32", "fp16")


@dataclass
class Report:
    """Weight tensors by storage (``{"int8": 3, "fp16": 1}``), their element counts, sparsity if pruned."""

    opset: str
    tensors: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    ops: dict[str, set] = field(default_factory=dict)  # storage -> op types using such weights
    nonzero: int = 0  # sparse tensors: stored non-zero values
    sparse_elements: int = 0  # sparse tensors: dense element count

    @property
    def total(self) -> int:
        return sum(self.tensors.values())

    @property
    def compressed(self) -> int:
        return sum(n for kind, n in self.tensors.items() if kind not in PLAIN)

    @property
    def sparsity(self) -> float | None:
        return 1 - self.nonzero / self.sparse_elements if self.sparse_elements else None

    @property
    def text(self) -> str:
        """'weights int8 3/4 (linear), fp16 1/4 (conv); 98% of weight elements compressed; CoreML6'."""
        if not self.total:
            return f"no conv/linear/matmul weights found; {self.opset}"
        parts = [f"{kind} {n}/{self.total} ({', '.join(sorted(self.ops[kind]))})"
                 for kind, n in sorted(self.tensors.items(), key=lambda kv: -kv[1])]
        all_elements = sum(self.elements.values())
        packed = sum(n for kind, n in self.elements.items() if kind not in PLAIN)
        share = math.floor(1000 * packed / all_elements) / 10  # floored: 99.96% must not read as 100%
        share = f"; {share:g}% of weight elements compressed" if packed else ""
        return f"weights {', '.join(parts)}{share}; {self.opset}"


def summary(path: Path) -> Report:
    ct = import_ct()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    producers = {out.name: op for op in ops for out in op.outputs}
    report = Report(opset=main.opset)
    for op in ops:
        for key in WEIGHT_INPUTS.get(op.type, ()):
            arg = op.inputs[key].arguments[0] if key in op.inputs and op.inputs[key].arguments else None
            producer = producers.get(arg.name) if arg is not None and arg.name else None
            if producer is None or not producer.type.startswith(("const", "constexpr_")):
                continue  # an activation (or an inline scalar), not a stored weight
            kind = _storage(producer, producers)
            report.tensors[kind] = report.tensors.get(kind, 0) + 1
            report.elements[kind] = report.elements.get(kind, 0) + _count(producer.outputs[0].type)
            report.ops.setdefault(kind, set()).add(op.type)
            if producer.type == "constexpr_sparse_to_dense":
                report.nonzero += _count(_arg_type(producer, "nonzero_data", producers))
                report.sparse_elements += _count(producer.outputs[0].type)
    return report


def _storage(op, producers: dict) -> str:
    """How one weight is stored: fp16, int8, int4, '4-bit palette', 'sparse fp16', ..."""
    if op.type == "const":
        return _dtype(op.outputs[0].type)
    if op.type == "constexpr_affine_dequantize":
        return _dtype(_arg_type(op, "quantized_data", producers))
    if op.type == "constexpr_blockwise_shift_scale":
        return _dtype(_arg_type(op, "data", producers)) + " blockwise"
    if op.type == "constexpr_lut_to_dense":
        dims = _dims(_arg_type(op, "lut", producers))
        entries = dims[-1] if len(dims) == 1 else dims[-2] if dims else 0  # iOS18 luts end in (entries, vector)
        return f"{int(math.log2(entries))}-bit palette" if entries else "palette"
    if op.type == "constexpr_sparse_to_dense":
        return "sparse " + _dtype(_arg_type(op, "nonzero_data", producers))
    return op.type


def _arg_type(op, key: str, producers: dict | None = None):
    """The value type of an op's argument: an attribute (iOS16 constexpr ops) or an inline/named input."""
    if key in op.attributes:
        return op.attributes[key].type
    arg = op.inputs[key].arguments[0]
    if arg.name and producers and arg.name in producers:
        return producers[arg.name].outputs[0].type
    return arg.value.type


def _dtype(value_type) -> str:
    from coremltools.proto import MIL_pb2

    name = MIL_pb2.DataType.Name(value_type.tensorType.dataType).lower()
    return name.replace("float", "fp")


def _dims(value_type) -> list[int]:
    return [d.constant.size for d in value_type.tensorType.dimensions]


def _count(value_type) -> int:
    return math.prod(_dims(value_type))


# -- where the bytes go ------------------------------------------------------------------------------
QPARAM_KEYS = ("scale", "zero_point", "offset", "mask")  # quantization parameters and sparsity masks
_BLOB_SENTINEL = 0xDEADBEEF


def size_breakdown(artifact) -> dict:
    """Bytes of an .mlpackage by tensor dtype, its largest tensors, and the weights blob versus the rest.

    Every tensor stored in a weights file is found from the MIL program (``const`` values and ``constexpr_*``
    attributes that point into ``weights/*.bin``); its dtype and shape come from the program, its bytes
    from the blob's own metadata record in the weights file (MILBlob storage: a 64-byte header per blob)."""
    from ...speed import SizeTally

    path = Path(artifact.path)
    tally = SizeTally(int(artifact.size_bytes))
    for f in artifact.files:
        if _inside(f, path) and "weights" in Path(f).relative_to(path).parts[:-1]:
            tally.segment("weights", Path(f).stat().st_size)
    ct = import_ct()
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:  # noqa: BLE001
        tally.note(f"the model spec could not be read ({type(exc).__name__}); segments only")
        return tally.result("program/other")
    if spec.WhichOneof("Type") != "mlProgram":
        tally.note("not an ML Program: weights are inside the model spec; segments only")
        return tally.result("program/other")
    ops = [op for fn in spec.mlProgram.functions.values() for block in fn.block_specializations.values()
           for op in _walk(block.operations)]
    roles: dict[str, str] = {}
    for op in ops:
        for key, arg in op.inputs.items():
            for a in arg.arguments:
                if a.name and op.type.startswith("constexpr_"):
                    roles.setdefault(a.name, key)
    weights_dir = path / "Data" / "com.apple.CoreML"
    seen: set[tuple[str, int]] = set()
    for op in ops:
        name = op.outputs[0].name if op.outputs else op.type
        for key, value in _stored_values(op):
            blob = value.blobFileValue
            where = (blob.fileName, int(blob.offset))
            if where in seen:
                continue
            seen.add(where)
            dtype = _dtype(value.type)
            shape = _dims(value.type)
            role = key if op.type.startswith("constexpr_") else roles.get(name, "")
            nbytes = _blob_bytes(weights_dir, blob.fileName, int(blob.offset))
            if nbytes is None:
                nbytes = _packed_bytes(dtype, shape)
            label = name if op.type == "const" else f"{name}.{key}"
            if role in QPARAM_KEYS:
                tally.tensor(label, f"{dtype} {role}", shape, nbytes, "other")
            else:
                tally.tensor(label, dtype, shape, nbytes, _BUCKET.get(dtype))
    if not seen:
        tally.note("no tensor of the program is stored in a weights file")
    return tally.result("program/other")


_BUCKET = {"uint8": "int8", "int8": "int8", "int4": "int4", "uint4": "int4", "fp32": "fp32", "fp16": "fp16"}
_BITS = {"fp32": 32, "fp16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32,
         "uint32": 32, "int4": 4, "uint4": 4, "uint3": 3, "uint2": 2, "uint1": 1, "uint6": 6}


def _inside(f, root: Path) -> bool:
    try:
        Path(f).relative_to(root)
        return True
    except ValueError:
        return False


def _walk(operations):
    for op in operations:
        yield op
        for block in op.blocks:
            yield from _walk(block.operations)


def _stored_values(op):
    """(key, Value) of an op's attributes and inline inputs that live in a weights file."""
    for key, value in op.attributes.items():
        if value.WhichOneof("value") == "blobFileValue":
            yield key, value
    for key, arg in op.inputs.items():
        for a in arg.arguments:
            if a.WhichOneof("binding") == "value" and a.value.WhichOneof("value") == "blobFileValue":
                yield key, a.value


def _blob_bytes(weights_dir: Path, file_name: str, offset: int) -> int | None:
    """sizeInBytes of the blob whose metadata record starts at ``offset`` (None if unreadable)."""
    import struct

    rel = file_name.replace("@model_path/", "", 1)
    file = (weights_dir / rel).resolve()
    if not _inside(file, weights_dir.resolve()) or not file.is_file():
        return None  # paths read from model files stay inside the model's folder
    with open(file, "rb") as f:
        f.seek(offset)
        head = f.read(16)
    if len(head) < 16:
        return None
    sentinel, _, size = struct.unpack("<IIQ", head)
    return int(size) if sentinel == _BLOB_SENTINEL else None


def _packed_bytes(dtype: str, shape: list[int]) -> int:
    return math.ceil(math.prod(shape or [1]) * _BITS.get(dtype, 8) / 8)
