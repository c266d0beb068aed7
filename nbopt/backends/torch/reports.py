"""Torch backend: what a candidate holds, counted from the module or graph (shown as ``quantized``).

Every recipe counts what it really quantized, so a row never calls a network int8 while its
convolutions stayed fp32.
"""
from __future__ import annotations

from collections import Counter

from .runner import import_torch

LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def layer_counts(model) -> Counter:
    """How many Linear / ConvNd modules the model has, by type name."""
    torch = import_torch()
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return Counter(type(m).__name__ if type(m).__name__ in LAYER_TYPES else layer_type(m, kinds)
                   for m in model.modules() if isinstance(m, kinds))


def layer_type(module, kinds) -> str:
    for k in kinds:
        if isinstance(module, k):
            return k.__name__
    return type(module).__name__


def describe(quantized: Counter, total: Counter, dtype: str) -> str:
    """'2/2 Linear (int8), 0/2 Conv2d (fp32)'."""
    parts = []
    for kind in LAYER_TYPES:
        if total.get(kind):
            q = quantized.get(kind, 0)
            label = dtype if q == total[kind] else (f"{dtype}, rest fp32" if q else "fp32")
            parts.append(f"{q}/{total[kind]} {kind} ({label})")
    return ", ".join(parts) or "no Linear or Conv layers"



def pt2e_counts(graph_module) -> Counter:
    """Conv / linear nodes whose weight comes out of a dequantize node (i.e. stored as int8)."""
    kinds = {"conv1d": "Conv1d", "conv2d": "Conv2d", "conv3d": "Conv3d", "linear": "Linear",
             "convolution": "Conv2d"}
    found = Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
        if op in kinds and len(node.args) > 1:
            w = node.args[1]
            if hasattr(w, "target") and "dequantize" in str(w.target):
                found[kinds[op]] += 1
    return found
