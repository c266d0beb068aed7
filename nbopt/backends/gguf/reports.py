"""What a .gguf file holds, read back from the file with ``gguf.GGUFReader`` (not from what was asked for).

``summary(path)`` counts tensors by their stored GGML type ("Q4_0 10/17 tensors, F32 7/17"), and
``size_breakdown(artifact)`` says where the file's bytes go: tensor bytes by type, the largest tensors,
and the header (keys, vocabulary, tensor index) against the tensor data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# GGML storage types by nbopt's size buckets (Q8_0 / Q4_0 blocks carry one fp16 scale per 32 weights)
BUCKETS = {"F32": "fp32", "F16": "fp16", "BF16": "fp16", "Q8_0": "int8", "Q4_0": "int4", "Q4_1": "int4"}


@dataclass
class Report:
    """Tensors, their element counts and bytes by stored type, and the file's context length."""

    tensors: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)
    context_length: int = 0

    @property
    def text(self) -> str:
        """'tensors Q4_0 10/17 (0.5625 B/weight), F32 7/17'."""
        total = sum(self.tensors.values())
        parts = []
        for kind, n in sorted(self.tensors.items(), key=lambda kv: -self.nbytes[kv[0]]):
            rate = self.nbytes[kind] / max(self.elements[kind], 1)
            parts.append(f"{kind} {n}/{total}" + (f" ({rate:.5g} B/weight)" if kind.startswith("Q") else ""))
        return "tensors " + ", ".join(parts)


def summary(path: Path) -> Report:
    import gguf

    reader = gguf.GGUFReader(str(path))
    report = Report(context_length=context_length(reader))
    for t in reader.tensors:
        kind = t.tensor_type.name
        report.tensors[kind] = report.tensors.get(kind, 0) + 1
        report.elements[kind] = report.elements.get(kind, 0) + int(t.n_elements)
        report.nbytes[kind] = report.nbytes.get(kind, 0) + int(t.n_bytes)
    return report


def context_length(reader) -> int:
    """``<arch>.context_length`` of an open GGUFReader (0 if absent)."""
    arch = reader.get_field("general.architecture")
    value = reader.get_field(f"{arch.contents()}.context_length") if arch is not None else None
    return int(value.contents()) if value is not None else 0


def size_breakdown(artifact) -> dict:
    import gguf

    from ...speed import SizeTally

    tally = SizeTally(int(artifact.size_bytes))
    reader = gguf.GGUFReader(str(artifact.path))
    for t in reader.tensors:
        kind = t.tensor_type.name
        # ggml lists dimensions innermost first; shown as numpy / torch order
        tally.tensor(t.name, kind, [int(d) for d in reversed(t.shape)], int(t.n_bytes), BUCKETS.get(kind, "other"))
    tally.segment("tensor data", sum(int(t.n_bytes) for t in reader.tensors))
    tally.note("Q8_0 / Q4_0 bytes include one fp16 scale per block of 32 weights")
    return tally.result("header, vocabulary and padding")
