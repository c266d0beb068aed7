"""Torch backend: quantization (torchao ``quantize_`` configs and PT2E static int8).

Every function returns the transformed module (or exported program) plus a plain count of what was
quantized, so a row never calls a network int8 while its convolutions stayed fp32.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter

from ...errors import CandidateError
from ...quiet import quiet
from .attention import has_attention
from .convert import export_dynamic_batch, export_static
from .reports import layer_type, pt2e_counts
from .runner import import_torch, import_torchao, to_tensors

# -- torchao quantize_ ------------------------------------------------------------------------------


def torchao_quantize(model, config, filter_fn=None):
    """``quantize_`` on a copy, then unwrap the tensor subclasses so ``torch.export`` sees plain ops.

    Returns (module, Counter of quantized layer types).
    """
    import_torchao()
    torch = import_torch()
    from torchao.quantization import quantize_
    from torchao.utils import unwrap_tensor_subclass

    model = copy.deepcopy(model)
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    before = {name: type(m.weight) for name, m in model.named_modules() if isinstance(m, kinds)}
    with quiet():
        if filter_fn is None:
            quantize_(model, config)
        else:
            quantize_(model, config, filter_fn=filter_fn)
    quantized = Counter()
    for name, m in model.named_modules():
        if name in before and type(m.weight) is not before[name]:
            quantized[layer_type(m, kinds)] += 1
    with quiet():
        unwrap_tensor_subclass(model)
    return model, quantized


def int8_weight_only_config():
    import_torchao()
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def int8_dynamic_config():
    """int8 dynamic activations, int8 per-channel weights: the torchao config XNNPACK lowers (qd8-qc8w)."""
    torch = import_torch()
    import_torchao()
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis

    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))


def int4_config(group_size: int, activations: str):
    torch = import_torch()
    import_torchao()
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    if activations == "int8":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def linear_divisible_by(group_size: int):
    torch = import_torch()

    def keep(module, fqn=""):
        return isinstance(module, torch.nn.Linear) and module.in_features % group_size == 0

    return keep


# -- PT2E static int8 ----------------------------------------------------------------------------------


def entropy_observer():
    """HistogramObserver whose range is the KL-divergence (entropy) threshold, TensorRT style: the
    histogram of |x| is clipped at the threshold whose 128-level quantization loses least information."""
    import numpy as np

    torch = import_torch()
    from torchao.quantization.pt2e.observer import HistogramObserver

    class EntropyObserver(HistogramObserver):
        def _non_linear_param_search(self):
            hist = self.histogram.detach().double().cpu().numpy()
            lo, hi = float(self.min_val), float(self.max_val)
            edges = np.linspace(lo, hi, len(hist) + 1)
            centers = np.abs((edges[:-1] + edges[1:]) / 2)
            top = max(abs(lo), abs(hi))
            if top <= 0 or hist.sum() == 0:
                return self.min_val, self.max_val
            nbins, levels = 2048, 128
            folded, fedges = np.histogram(centers, bins=nbins, range=(0, top), weights=hist)
            best_kl, best_i = np.inf, nbins
            for i in range(levels, nbins + 1, 16):
                kept = folded[:i]
                p = kept.copy()
                p[-1] += folded[i:].sum()  # the reference keeps the clipped mass in its last bin
                nonzero = kept > 0
                q = np.zeros(i)  # the candidate: the kept bins merged into 128 levels, spread back
                for chunk in np.array_split(np.arange(i), levels):
                    nz = nonzero[chunk]
                    if nz.any():
                        q[chunk[nz]] = kept[chunk].sum() / nz.sum()
                pn, qn = p / p.sum(), q / max(q.sum(), 1e-12)
                mask = pn > 0
                kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
                if kl < best_kl:
                    best_kl, best_i = kl, i
            threshold = float(fedges[best_i])
            new_min = torch.tensor(max(lo, -threshold), dtype=self.min_val.dtype)
            new_max = torch.tensor(min(hi, threshold), dtype=self.max_val.dtype)
            return new_min, new_max

    return EntropyObserver


def xnnpack_config(per_channel: bool, calibration: str = "histogram", dynamic: bool = False):
    """The XNNPACK quantizer's symmetric int8 config (weights per channel or per tensor). Static:
    activations observed by ``calibration`` ("minmax": MinMaxObserver, "histogram": HistogramObserver,
    L2-error search, "entropy": KL-divergence threshold on the histogram). Dynamic: activations quantized
    at run time (nothing to calibrate)."""
    with quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
        from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic)
    if dynamic:
        return config
    observer = {"minmax": MinMaxObserver, "histogram": HistogramObserver}.get(calibration) or entropy_observer()
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer.with_args(eps=2 ** -12))
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def xnnpack_quantizer(per_channel: bool, calibration: str, weighted_only: bool = False):
    """XNNPACKQuantizer with ``xnnpack_config`` on every op it knows (``weighted_only``: on Linear / Conv
    layers only, adds, muls and concatenations kept float)."""
    quantizer = module_quantizer(xnnpack_config(per_channel, calibration))
    if weighted_only:
        quantizer.SUPPORTED_PATTERNS = [p for p in quantizer.SUPPORTED_PATTERNS if p.name.split("_")[0] in
                                        ("linear", "conv")]
    return quantizer


def module_quantizer(config, only: list[str] | None = None, skip: list[str] = ()):
    """XNNPACKQuantizer with ``config`` everywhere (``only=None``) or on the named submodules only; the
    ``skip`` submodules stay float."""
    quantizer = _ptq_quantizer_class()()
    if only is None:
        quantizer.set_global(config)
    elif only:
        # not set_module_name(name, config): its filter must accept every node of a pattern, and a
        # Conv2d+ReLU pattern's ReLU is a sibling module, a folded batch norm's weight has no module at all
        quantizer.set_global(config)
        quantizer.set_filter_function(_from_modules(only))
    for name in skip:
        # set_module_name(name, None) asserts "not supported yet", but the annotator already treats a None
        # entry as "skip": it annotates nothing for it and keeps the global config off that module
        quantizer.module_name_config[name] = None
    return quantizer


def _from_modules(names: list[str]):
    """Node filter: the nodes of the named submodules, weights and biases (get_attr nodes: a folded batch
    norm's weight belongs to no module), and an activation applied right on those modules' output (the
    ReLU of a Linear/Conv+ReLU pattern)."""
    import_torchao()
    torch = import_torch()
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    inside = [get_module_name_filter(n) for n in names]
    fused = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default, torch.ops.aten.hardtanh.default,
             torch.ops.aten.hardtanh_.default}

    def ours(node) -> bool:
        return any(f(node) for f in inside)

    def keep(node) -> bool:
        if node.op == "get_attr" or ours(node):
            return True
        first = node.args[0] if node.args else None
        return node.target in fused and hasattr(first, "op") and ours(first)

    return keep


def _ptq_quantizer_class():
    """XNNPACKQuantizer without its conv-bn patterns. They are for QAT only (prepare_pt2e folds batch norms
    into convolutions before annotating, so they never match in PTQ), yet each annotation pass exports
    ~36 small pattern graphs for them: about 2 s per prepare_pt2e, the largest cost of a PTQ prepare."""
    global _PTQ_QUANTIZER
    if _PTQ_QUANTIZER is None:
        with quiet():
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

        class PtqXNNPACKQuantizer(XNNPACKQuantizer):
            SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if not p.is_qat]

            def transform_for_annotation(self, model):
                before = set(model.graph.nodes)
                return keep_integer_scalars(super().transform_for_annotation(model), before)

        _PTQ_QUANTIZER = PtqXNNPACKQuantizer
    return _PTQ_QUANTIZER


_PTQ_QUANTIZER = None


def keep_integer_scalars(model, before: set):
    """Undo the quantizer's scalar-to-tensor pass on integer adds/muls. XNNPACKQuantizer turns every scalar
    operand of add/mul into a float32 tensor constant so it can be observed, also on index arithmetic
    (transformers' ``arange(seq) + past_length`` position ids): the ids turn float and the embedding lookup
    fails. Integer ops are never quantized, so their scalar goes back in place."""
    torch = import_torch()
    graph = model.graph
    for node in list(graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor) or val.dtype.is_floating_point:
            continue
        args = list(node.args)
        for i, arg in enumerate(args):
            if getattr(arg, "op", None) == "get_attr" and arg not in before:
                args[i] = int(getattr(model, arg.target).item())
        if args != list(node.args):
            node.args = tuple(args)
    for node in list(graph.nodes):
        if node.op == "get_attr" and node not in before and not node.users:
            graph.erase_node(node)
            delattr(model, node.target)
    model.recompile()
    return model


def quantizable_modules(model) -> list[tuple[str, object]]:
    """(name, module) of every Linear / Conv1d / Conv2d / ConvTranspose layer: what XNNPACKQuantizer's
    patterns quantize, and what mixed precision can keep float one by one."""
    torch = import_torch()
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d)
    return [(n, m) for n, m in model.named_modules() if n and isinstance(m, kinds)]


def pt2e_static(model, example: tuple, calib, input_names: list[str], per_channel: bool, calibration: str,
                max_examples: int = 1024):
    """Prepare (observers), calibrate on ``calib`` batches, convert; returns (module, stats)."""
    with quiet():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # attention models: int8 residual adds, GELU muls and their layer norms' inputs cost all-MiniLM-L6-v2 its
    # embeddings (cosine 0.83 to fp32); with only the Linear layers int8 the sweep's int8-static stays faithful
    weighted_only = has_attention(model)
    program, batch = export_for_pt2e(model, example)
    with quiet():
        prepared = prepare_pt2e(program.module(), xnnpack_quantizer(per_channel, calibration, weighted_only))
    seen = calibrate(prepared, calib, input_names, batch, max_examples)
    with quiet():
        converted = convert_pt2e(prepared)
    return converted, {"calibrated_on": seen, "quantized": pt2e_counts(converted),
                       "scope": "Linear/Conv layers only (attention model)" if weighted_only
                       else "every op XNNPACKQuantizer annotates"}


def export_for_pt2e(model, example: tuple):
    """(program, None) exported with a symbolic batch, else (program, its static batch size): what PT2E
    prepares (shared by int8-static and qat)."""
    program = export_dynamic_batch(model, example)
    if program is not None:
        return program, None
    return export_static(model, example), len(example[0])


def calibrate(prepared, calib, input_names: list[str], batch: int | None, max_examples: int = 1024) -> int:
    """Run up to ``max_examples`` of ``calib`` through a PT2E-prepared module (its observers or fake
    quantizers record the activation ranges); returns how many examples it saw. ``batch``: the static batch
    of a program that pins it (fed one example at a time), None for a symbolic batch."""
    torch = import_torch()
    seen = 0
    with torch.no_grad(), quiet():
        for inputs, _ in calib.batches(64):
            ordered = {k: inputs[k] for k in input_names}
            n = len(next(iter(ordered.values())))
            if batch is None:
                prepared(*to_tensors(ordered))
            else:
                for i in range(n):
                    prepared(*to_tensors({k: v[i:i + 1] for k, v in ordered.items()}))
            seen += n
            if seen >= max_examples:
                break
    if seen == 0:
        raise CandidateError("The calibration data yielded no examples.")
    return seen
