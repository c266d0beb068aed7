"""Torch backend: pruning (torch.nn.utils.prune, unstructured; Torch-Pruning, structured)."""
from __future__ import annotations

import copy

from ...errors import CandidateError
from ...quiet import quiet
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
    the last layer the forward pass runs (the classifier) keeps its outputs."""
    with quiet():
        import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    order = run_order(model, example)
    if len(order) < 2:
        raise CandidateError("prune-structured needs at least two Conv/Linear layers (the last one, the "
                             "classifier, is never pruned).")
    ignored = [order[-1]]
    with quiet():
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=float(amount), ignored_layers=ignored,
                                      forward_fn=lambda m, x: first_output(m(*x)))
        pruner.step()
    return model
