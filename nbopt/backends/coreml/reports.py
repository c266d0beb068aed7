"""What an .mlpackage holds: how each weight tensor is stored, read from the package's own MIL program.

Only the model spec is read (``MLModel(path, skip_model_load=True).get_spec()``), not the weights blob and
not Core ML's runtime, so this works on every system. A weight is the constant input of a conv, linear,
matmul or gather (embedding) op; it is stored plainly (``const``: fp32 / fp16) or compressed by one of
Core ML's ``constexpr_*`` ops, expanded when the model loads.
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
