"""Torch backend: 4-bit Linear weights that stay 4-bit in the file.

torchao ``Int8DynamicActivationIntxWeightConfig(weight_dtype=int4, PerGroup(group_size))`` is the form
ExecuTorch's XNNPACK partitioner lowers to its qd8-qb4w kernels: the .pte stores two weights per byte plus
one bf16 scale per group (about 0.56 B per weight at group 32). Weight-only (float activations) has no
packed 4-bit kernel in XNNPACK, so that form stays the honest .pt2 fallback (one byte per 4-bit value).

How the 4-bit values are chosen (``algorithm``):

- ``rtn``: round to nearest with each group's min/max scale (torchao's affine qparams).
- ``hqq``: torchao's HQQ scale search (``IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY``): scales that minimise
  the weight reconstruction error; data-free.
- ``awq``: torchao's AWQ observer (``torchao.prototype.awq``) records each Linear's inputs on calibration
  data and searches per-input-channel scales s that minimise the layer's output error; the weight is
  quantized as W*s and the input multiplied by 1/s in the program (torchao's own AWQ convert asserts a
  tensor with ``act_pre_scale``, which the XNNPACK-lowerable intx tensor lacks, so nbopt wraps it).

GPTQ is left out: torchao 0.18's ``GPTQConfig`` produces ``Int4Tensor`` through mslk's int4 kernels
(CUDA; ``mslk`` is not installable on CPU), a layout XNNPACK cannot lower.
"""
from __future__ import annotations

import copy
from collections import Counter

from ...errors import CandidateError
from ...quiet import quiet
from .runner import import_torch, import_torchao, to_tensors

ALGORITHMS = ("rtn", "hqq", "awq")
AWQ_MAX_EXAMPLES = 64  # calibration examples AWQ runs (one at a time: the deployed batch)
AWQ_MAX_ROWS = 512  # ...or fewer once this many input rows (tokens) are recorded: each Linear keeps them all


def int4_config(group_size: int, activations: str, algorithm: str = "rtn"):
    """The torchao config: int8 dynamic activations (XNNPACK qd8-qb4w) or weight-only, int4 per group."""
    torch = import_torch()
    import_torchao()
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quantize_.workflows.intx.intx_choose_qparams_algorithm import (
        IntxChooseQParamsAlgorithm,
    )

    qparams = IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY if algorithm == "hqq" else IntxChooseQParamsAlgorithm.AFFINE
    if activations == "int8":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size),
                                                     intx_choose_qparams_algorithm=qparams)
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size),
                                intx_choose_qparams_algorithm=qparams)


def linears(model) -> list[tuple[str, object]]:
    torch = import_torch()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def check_group(model, group_size: int) -> int:
    """How many Linear layers ``group_size`` does not fit (skipped, kept fp32); none that fits is an error."""
    all_linears = linears(model)
    if not all_linears:
        raise CandidateError("int4-weight-only found no nn.Linear layer to quantize (torchao quantizes Linear "
                             "layers only); try int8-static, which covers convolutions.")
    misfit = [n for n, m in all_linears if m.in_features % group_size]
    if len(misfit) == len(all_linears):
        sizes = sorted({m.in_features for _, m in all_linears})
        raise CandidateError(f"int4-weight-only: group_size={group_size} divides the input size of no Linear layer "
                             f"(input sizes {', '.join(map(str, sizes[:6]))}); pick a group_size that divides them.")
    return len(misfit)


def quantize_int4(model, group_size: int, activations: str, algorithm: str, calib=None,
                  input_names: list[str] | None = None):
    """4-bit Linear weights on a copy of ``model``; returns (module, Counter {'Linear': n}, extra notes)."""
    if algorithm not in ALGORITHMS:
        raise CandidateError(f"int4-weight-only: algorithm={algorithm!r} is not one of {', '.join(ALGORITHMS)}.")
    config = int4_config(group_size, activations, algorithm)
    keep = _fits(group_size)
    if algorithm == "awq":
        module, n, seen = _awq(model, config, keep, calib, input_names or [])
        return module, Counter({"Linear": n}) if n else Counter(), [f"AWQ scales searched on {seen} calibration "
                                                                     "examples"]
    from .quant import torchao_quantize

    module, q = torchao_quantize(model, config, filter_fn=keep)
    return module, q, []


def _fits(group_size: int):
    torch = import_torch()

    def keep(module, fqn=""):
        return isinstance(module, torch.nn.Linear) and module.in_features % group_size == 0

    return keep


# -- AWQ -------------------------------------------------------------------------------------------------


def _awq(model, config, keep, calib, input_names: list[str]):
    """torchao AWQ: observe, search scales, then quantize W*s behind a 1/s input scale. Returns (module, how
    many Linear layers are 4-bit, examples seen)."""
    if calib is None:
        raise CandidateError("int4-weight-only with algorithm='awq' needs calibration data: pass calib=... "
                             "(or use algorithm='rtn' or 'hqq').")
    torch = import_torch()
    import_torchao()
    from torchao.prototype.awq import AWQConfig
    from torchao.prototype.awq.core import AWQObservedLinear
    from torchao.quantization import quantize_
    from torchao.utils import unwrap_tensor_subclass

    model = copy.deepcopy(model)
    if isinstance(model, torch.nn.Linear):  # the root itself cannot be swapped for the scaled wrapper
        model = torch.nn.Sequential(model)
    with quiet():
        quantize_(model, AWQConfig(base_config=config, step="prepare"), filter_fn=keep)
    observed = [(n, m) for n, m in model.named_modules() if isinstance(m, AWQObservedLinear)]
    seen = _observe(model, observed, calib, input_names)
    with torch.no_grad(), quiet():
        for name, m in observed:
            _replace(model, name, _awq_linear(m, config))
        unwrap_tensor_subclass(model)
    return model, len(observed), seen


def _observe(model, observed, calib, input_names: list[str]) -> int:
    """Feed calibration examples one at a time until the first observer holds AWQ_MAX_ROWS input rows."""
    torch = import_torch()
    first = observed[0][1].act_obs if observed else None
    seen = 0
    with torch.no_grad(), quiet():
        for inputs, _ in calib.batches(16):
            n = len(inputs[input_names[0]])
            for i in range(n):
                model(*to_tensors({k: inputs[k][i:i + 1] for k in input_names}))
                seen += 1
                rows = sum(x.numel() // x.shape[-1] for x in first.inputs) if first is not None else 0
                if seen >= AWQ_MAX_EXAMPLES or rows >= AWQ_MAX_ROWS:
                    return seen
    if seen == 0:
        raise CandidateError("The calibration data yielded no examples.")
    return seen


def _awq_linear(observed, config):
    """The scaled Linear: weight W*s quantized by ``config``, input multiplied by 1/s (a mul XNNPACK runs)."""
    torch = import_torch()
    from torchao.quantization import quantize_

    scale = observed.act_obs.calculate_qparams()
    observed.act_obs.inputs.clear()  # the recorded activations are the largest thing AWQ holds
    linear = torch.nn.Linear(observed.in_features, observed.out_features, observed.bias is not None)
    linear.weight = torch.nn.Parameter(observed.weight.detach() * scale, requires_grad=False)
    if observed.bias is not None:
        linear.bias = torch.nn.Parameter(observed.bias.detach(), requires_grad=False)
    quantize_(linear, config, filter_fn=lambda m, fqn="": isinstance(m, torch.nn.Linear))
    return _PreScaled.make(linear, 1.0 / scale)


class _PreScaled:
    """Built lazily: torch is imported only when a recipe runs."""

    cls = None

    @classmethod
    def make(cls, linear, inv_scale):
        torch = import_torch()
        if cls.cls is None:
            class AWQLinear(torch.nn.Module):
                def __init__(self, inner, inv):
                    super().__init__()
                    self.inner = inner
                    self.register_buffer("inv_scale", inv.detach().clone())

                def forward(self, x):
                    return self.inner(x * self.inv_scale)

            cls.cls = AWQLinear
        return cls.cls(linear, inv_scale)


def _replace(model, name: str, new) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
