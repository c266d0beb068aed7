"""Torch backend: pruning (torch.nn.utils.prune, unstructured; Torch-Pruning, structured)."""
from __future__ import annotations

import copy

from ...errors import CandidateError
from ...quiet import quiet
from .attention import find_attention, update_heads
from .runner import first_output, import_torch


def prunable_layers(model):
    torch = import_torch()
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def unstructured(model, amount: float):
    """Global L1 unstructured pruning of every Conv/Linear weight, made permanent (``prune.remove``)."""
    import_torch()  # quietly, before torch.nn.utils pulls it in
    from torch.nn.utils import prune

    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    if not layers:
        raise CandidateError("prune-unstructured found no Conv or Linear layer to prune.")
    params = [(m, "weight") for _, m in layers]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(amount))
    for m, name in params:
        prune.remove(m, name)
    total = sum(m.weight.numel() for m, _ in params)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return model, zeros / max(total, 1), len(layers)


def run_order(model, example: tuple) -> list:
    """Conv/Linear modules in the order the forward pass runs them."""
    torch = import_torch()
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    order, hooks = [], []
    for m in model.modules():
        if isinstance(m, kinds):
            hooks.append(m.register_forward_hook(lambda mod, i, o: order.append(mod)))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return order


def structured(model, example: tuple, amount: float):
    """Remove ``amount`` of the channels of every Conv/Linear group by L1 magnitude (Torch-Pruning);
    the last layer the forward pass runs (the classifier) keeps its outputs. In attention models
    (``attention.find_attention``) ``amount`` of each attention's heads go whole, with the MLP channels, and
    each attention's head count is updated; the residual width (the layer norms') is kept."""
    with quiet():
        import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    attention = find_attention(model)
    order = run_order(model, example)
    if len(order) < 2:
        raise CandidateError("prune-structured needs at least two Conv/Linear layers (the last one, the "
                             "classifier, is never pruned).")
    with quiet():
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=float(amount), ignored_layers=[order[-1], *_residual(model, attention)],
                                      forward_fn=lambda m, x: first_output(m(*x)), **_head_options(attention, amount))
        pruner.step()
    update_heads(attention, pruner.num_heads)
    return model


def _head_options(attention: list, amount: float) -> dict:
    """Torch-Pruning's head pruning: whole heads go (each head keeps its size, which the attention's forward
    reshapes by), ``amount`` of them in every attention."""
    if not attention:
        return {}
    num_heads = {layer: a.heads for a in attention for layer in a.qkv}
    heads = min(a.heads for a in attention)
    k = min(round(float(amount) * heads), heads - 1)  # the nearest whole number of heads, one kept at least
    # Torch-Pruning removes ceil(ratio x heads): half a head below k keeps float error from adding one
    ratio = (k - 0.5) / heads if k else 0.0
    return dict(num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)


def _residual(model, attention: list) -> list:
    """The layer norms of an attention model: ignoring them keeps the residual width, which every block,
    the embeddings and the output share (narrowing it would change every layer and the output's width)."""
    torch = import_torch()
    if not attention:
        return []
    return [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]


def heads_note(before, after) -> str:
    """'whole attention heads removed: 2 of 4 heads kept in each of 2 attention modules (head counts
    updated), residual width kept'; '' for a model without attention."""
    was = [a.heads for a in find_attention(copy.deepcopy(before))]
    now = [a.heads for a in find_attention(copy.deepcopy(after))]
    if not was or len(was) != len(now):
        return ""
    if len(set(was)) == 1 and len(set(now)) == 1:
        kept = f"{now[0]} of {was[0]} heads kept in each of {len(was)} attention modules"
    else:
        kept = "heads kept per attention module: " + ", ".join(f"{b}->{a}" for b, a in zip(was, now))
    return f"whole attention heads removed: {kept} (head counts updated), residual width kept"
