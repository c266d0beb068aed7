"""Torch backend: attention models (transformers BERT, ViT, GPT-2, ...) made visible to the recipes.

GPT-2 and its relatives compute every attention and MLP projection with transformers' ``Conv1D`` (a Linear
whose weight is stored transposed). Quantizers and Torch-Pruning know ``nn.Linear`` only, so nbopt's own copy
of the model swaps each ``Conv1D`` for the ``nn.Linear`` that computes the same numbers.

Structured pruning removes whole attention heads: ``find_attention`` lists each attention module with its
query/key/value projections and head count (a fused query-key-value projection is split into three Linear
layers first, so Torch-Pruning can follow each), and ``update_heads`` writes the pruned head count back to
the module's attributes, which its forward uses to reshape.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .runner import import_torch

# attribute names transformers attention classes give their head count / their width (heads x head size)
_HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_head", "n_heads")
_WIDTH_ATTRS = ("all_head_size", "split_size")
_QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))
_FUSED_NAMES = ("c_attn", "qkv")


def is_conv1d(module) -> bool:
    """A transformers ``Conv1D`` (matched by name: nbopt never imports transformers itself)."""
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers")


def conv1d_to_linear(model) -> int:
    """Replace every transformers ``Conv1D`` in ``model`` (in place: call it on nbopt's copy) by the
    equivalent ``nn.Linear``; returns how many were replaced."""
    torch = import_torch()
    done: dict[int, Any] = {}  # a module registered twice stays one module
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_conv1d(child):
                if id(child) not in done:
                    done[id(child)] = _as_linear(torch, child)
                setattr(parent, name, done[id(child)])
    return len(done)


def _as_linear(torch, conv):
    """Conv1D computes ``x @ W + b`` with W of shape (in, out); nn.Linear stores (out, in)."""
    n_in, n_out = conv.weight.shape
    linear = torch.nn.Linear(n_in, n_out, bias=conv.bias is not None, dtype=conv.weight.dtype,
                             device=conv.weight.device)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    linear.train(conv.training)
    return linear


def conv1d_note(n: int) -> str:
    if not n:
        return ""
    return (f"{n} transformers Conv1D projection(s) run as the equivalent nn.Linear (weight transposed, same "
            "outputs), so quantization and pruning count and treat them like Linear layers")


@dataclass
class Attention:
    module: Any  # the attention module, whose head-count attributes its forward reads
    qkv: list  # its query, key and value nn.Linear layers
    heads: int


def find_attention(model) -> list[Attention]:
    """Every attention module with separate query/key/value Linear layers of equal width and a head count
    that divides it; fused projections of ``model`` are split first, in place (``split_fused_qkv``)."""
    torch = import_torch()
    split_fused_qkv(model)
    found = []
    for m in model.modules():
        heads = _heads(m)
        layers = _qkv_layers(m) if heads else []
        if layers and all(isinstance(x, torch.nn.Linear) for x in layers):
            if len({x.out_features for x in layers}) == 1 and layers[0].out_features % heads == 0:
                found.append(Attention(m, layers, heads))
    return found


def has_attention(model) -> bool:
    """Whether ``model`` has an attention module ``find_attention`` recognizes (``model`` is not changed)."""
    return any(_heads(m) and (_qkv_layers(m) or any(hasattr(m, n) for n in _FUSED_NAMES)) for m in model.modules())


def _qkv_layers(module) -> list:
    children = dict(module.named_children())
    for names in _QKV_NAMES:
        if all(n in children for n in names):
            return [children[n] for n in names]
    for name in _FUSED_NAMES:
        if isinstance(children.get(name), _split_qkv_class()):
            split = children[name]
            return [split.q, split.k, split.v]
    return []


def _heads(module) -> int:
    for attr in _HEAD_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def split_fused_qkv(model) -> int:
    """Replace each fused query-key-value Linear (GPT-2's ``c_attn``, timm's ``qkv``: out = 3 x width, the
    query, key and value blocks one after the other) of an attention module by ``SplitQKV``, three Linear
    layers whose outputs are concatenated: the same numbers, and a graph Torch-Pruning can prune by head."""
    torch = import_torch()
    n = 0
    for m in list(model.modules()):
        heads = _heads(m)
        for name in _FUSED_NAMES:
            fused = getattr(m, name, None) if heads else None
            if isinstance(fused, torch.nn.Linear) and fused.out_features % (3 * heads) == 0:
                setattr(m, name, split_qkv(fused))
                n += 1
    return n


@functools.lru_cache(maxsize=None)
def _split_qkv_class():
    """The ``SplitQKV`` module class, defined once torch is imported (nbopt imports torch lazily)."""
    torch = import_torch()

    class SplitQKV(torch.nn.Module):
        """Three Linear layers (q, k, v) whose outputs are concatenated, as the fused projection gives."""

        def __init__(self, q, k, v):
            super().__init__()
            self.q, self.k, self.v = q, k, v

        def forward(self, x):
            return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    return SplitQKV


def split_qkv(fused):
    """The ``SplitQKV`` computing what the fused Linear ``fused`` computes."""
    torch = import_torch()
    width = fused.out_features // 3
    parts = []
    for i in range(3):
        part = torch.nn.Linear(fused.in_features, width, bias=fused.bias is not None, dtype=fused.weight.dtype,
                               device=fused.weight.device)
        with torch.no_grad():
            part.weight.copy_(fused.weight[i * width:(i + 1) * width])
            if fused.bias is not None:
                part.bias.copy_(fused.bias[i * width:(i + 1) * width])
        parts.append(part)
    return _split_qkv_class()(*parts)


def update_heads(found: list[Attention], heads_after: dict) -> list[tuple[int, int]]:
    """Write each attention's pruned head count (``heads_after[query layer]``, Torch-Pruning's
    ``pruner.num_heads``) and width back to the module; returns (heads before, after) per attention."""
    changes = []
    for a in found:
        n = int(heads_after.get(a.qkv[0], a.heads))
        width = a.qkv[0].out_features
        for attr in _HEAD_ATTRS:
            if isinstance(getattr(a.module, attr, None), int):
                setattr(a.module, attr, n)
        for attr in _WIDTH_ATTRS:
            if isinstance(getattr(a.module, attr, None), int):
                setattr(a.module, attr, width)
        changes.append((a.heads, n))
    return changes
