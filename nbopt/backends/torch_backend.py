"""The PyTorch backend: a ``torch.nn.Module`` in, ExecuTorch ``.pte`` (XNNPACK) or ``.pt2`` files out.

Recipes: fp16, int8-dynamic, int8-weight-only, int4-weight-only (torchao ``quantize_``), int8-static
(PT2E with the XNNPACK quantizer), prune-unstructured (torch.nn.utils.prune), prune-structured
(Torch-Pruning). Export and runners live in ``torch_export``, quantization in ``torch_quant``, pruning in
``torch_prune``. torch, torchao, executorch and torch_pruning are imported only when a method runs.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CandidateError, NboptError
from ..recipes import Recipe
from . import torch_export as tx
from .base import Artifact, Backend, Context, Param, hash_arrays


@dataclass
class TorchPrepared:
    """The user's model, copied and in eval mode, with the input layout it is fed."""

    model: Any  # torch.nn.Module (eval, CPU)
    input_names: list[str]
    single_input: bool
    example: dict[str, np.ndarray]  # one example, batched (batch of 1)
    output_shape: tuple = ()
    module: Any = field(default=None, repr=False)  # positional view of ``model`` (multi-input models)

    @property
    def args(self) -> tuple:
        return tx.to_tensors(self.example)


class TorchBackend(Backend):
    name = "torch"

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)

    # -- preparing -----------------------------------------------------------------------------------
    def prepare(self, model: Any, example: Any) -> TorchPrepared:
        torch = tx.import_torch()
        if not isinstance(model, torch.nn.Module):
            raise NboptError(f"The torch backend takes a torch.nn.Module, got a {type(model).__name__}.")
        data = example
        try:
            model = copy.deepcopy(model)
        except Exception as exc:  # noqa: BLE001
            raise NboptError(f"nbopt could not copy the model ({type(exc).__name__}: {exc}); it must be "
                             "deep-copyable so that the original stays untouched.") from exc
        model = model.cpu().eval()
        inputs = data.example(1)
        names = list(data.input_names)
        ordered = {k: inputs[k] for k in names}
        module = tx.Positional.wrap(model, names, data.single_input)
        try:
            with torch.no_grad(), tx.quiet():
                out = tx.first_output(module(*tx.to_tensors(ordered)))
        except CandidateError as exc:
            raise NboptError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001
            raise NboptError(_mismatch(model, ordered, data.single_input, exc)) from exc
        return TorchPrepared(model, names, data.single_input, ordered, tuple(out.shape), module)

    def fingerprint(self, model: Any) -> str:
        state = model.state_dict()
        arrays = []
        for key in sorted(state):
            t = state[key]
            if hasattr(t, "detach"):
                t = t.detach().cpu()
                arrays.append(t.float().numpy() if t.dtype.is_floating_point else t.numpy())
        return hash_arrays(arrays, extra=str(model) + "|" + ",".join(sorted(state)))

    def warm_imports(self) -> None:
        """Import the runtimes (the memory probe subtracts what they cost before loading an artifact)."""
        tx.import_torch()
        tx.import_torchao()
        with tx.quiet():
            from executorch.runtime import Runtime

            Runtime.get()

    # -- artifacts -----------------------------------------------------------------------------------
    def baseline(self, prepared: TorchPrepared, ctx: Context) -> Artifact:
        return _build(prepared.module, prepared, ctx, notes=["fp32"], info={"quantized": "none (fp32)"})

    def load(self, artifact: Artifact):
        return tx.load(artifact)

    def default_recipes(self, prepared: TorchPrepared) -> list[Recipe]:
        return [
            Recipe("fp16", {}),
            Recipe("int8-dynamic", {}),
            Recipe("int8-static", {"calibration": "minmax", "per_channel": True}),
            Recipe("int8-weight-only", {}),
            Recipe("prune-structured", {"amount": 0.3}),
            Recipe("prune-structured", {"amount": 0.5}),
        ]

    def versions(self) -> dict[str, str]:
        out = {}
        for dist in ("torch", "torchao", "executorch", "torch-pruning"):
            try:
                out[dist.replace("-", "_")] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return out


def _build(module, prepared: TorchPrepared, ctx: Context, *, notes: list[str], info: dict,
           pte: bool = True, program=None) -> Artifact:
    torch = tx.import_torch()
    with torch.no_grad():
        try:
            return tx.build(module, prepared.args, ctx.workdir, notes=notes, info=info, pte=pte, program=program,
                            reference=_run(module, prepared))
        except (NboptError, CandidateError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise CandidateError(f"torch.export could not export the model: {tx._reason(exc)}.") from exc


def _run(module, prepared: TorchPrepared):
    torch = tx.import_torch()
    with torch.no_grad(), tx.quiet():
        return tx.first_output(module(*prepared.args))


def _mismatch(model, inputs: dict[str, np.ndarray], single: bool, exc: BaseException) -> str:
    """One sentence: what the model's first layer expects and what the data gives."""
    torch = tx.import_torch()
    given = ", ".join(f"{k} {_shape(v)}" for k, v in inputs.items()) if not single else _shape(next(iter(inputs.values())))
    error = " ".join(str(exc).split())[:200]
    first = next((m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                                                              torch.nn.Linear, torch.nn.Embedding))), None)
    if isinstance(first, torch.nn.Linear):
        expected = f"(N,{first.in_features})"
    elif isinstance(first, torch.nn.Conv1d):
        expected = f"(N,{first.in_channels},L)"
    elif isinstance(first, torch.nn.Conv2d):
        expected = f"(N,{first.in_channels},H,W)"
    elif isinstance(first, torch.nn.Conv3d):
        expected = f"(N,{first.in_channels},D,H,W)"
    else:
        expected = None
    if expected:
        return (f"The model expects inputs of shape {expected} (first layer: {type(first).__name__}) but the "
                f"data gives {given}: {type(exc).__name__}: {error}")
    return f"The model could not run on the data (inputs {given}): {type(exc).__name__}: {error}"


def _shape(a: np.ndarray) -> str:
    return "(" + ",".join(["N", *map(str, a.shape[1:])]) + ")" + ("" if a.dtype == np.float32 else f" {a.dtype}")


def _ratio(a: int, b: int) -> str:
    return f"{a / max(b, 1):.0%}"


# -- recipes ---------------------------------------------------------------------------------------------


@TorchBackend.recipe("fp16")
def _fp16(backend: TorchBackend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    torch = tx.import_torch()

    class Half(torch.nn.Module):
        """fp16 weights and activations inside; fp32 in and out, as the app feeds it."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner.half()

        def forward(self, *args):
            args = [a.half() if a.is_floating_point() else a for a in args]
            out = tx.first_output(self.inner(*args))
            return out.float() if out.is_floating_point() else out

    module = Half(copy.deepcopy(prepared.module))
    art = _build(module, prepared, ctx, notes=["fp16 weights and activations (fp32 inputs/outputs cast "
                                                "inside the program)"],
                 info={"quantized": "fp16 (all float weights)"})
    if art.format == tx.PT2:
        art.notes += "; XNNPACK could not run fp16 on this CPU, so the .pt2 runs fp16 on eager torch CPU kernels"
    return art


def _torchao_linear(prepared: TorchPrepared, ctx: Context, config, recipe: str, how: str, hint: str = "") -> Artifact:
    """A torchao ``quantize_`` recipe: it touches nn.Linear only, and the row says so."""
    from . import torch_quant as tq

    total = tq.layer_counts(prepared.module)
    module, q = tq.torchao_quantize(prepared.module, config)
    if not q:
        raise CandidateError(f"{recipe} found no nn.Linear layer to quantize (torchao quantizes Linear layers "
                             f"only){hint}.")
    what = tq.describe(q, total, "int8")
    return _build(module, prepared, ctx, info={"quantized": what}, notes=[f"{how}: {what}"])


@TorchBackend.recipe("int8-dynamic")
def _int8_dynamic(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    from . import torch_quant as tq

    return _torchao_linear(prepared, ctx, tq.int8_dynamic_config(), "int8-dynamic",
                           "torchao Int8DynamicActivationIntxWeightConfig (int8 per-channel weights, activations "
                           "quantized at run time)", "; try int8-static, which covers convolutions")


@TorchBackend.recipe("int8-weight-only")
def _int8_weight_only(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    from . import torch_quant as tq

    return _torchao_linear(prepared, ctx, tq.int8_weight_only_config(), "int8-weight-only",
                           "torchao Int8WeightOnlyConfig (int8 weights, fp32 compute)")


@TorchBackend.recipe("int4-weight-only",
                     group_size=Param(32, choices=(16, 32, 64, 128, 256),
                                      help="weights share one scale per group of this many inputs"),
                     activations=Param("float", choices=("float", "int8"),
                                       help="float: weight-only; int8: dynamic int8 activations (XNNPACK "
                                            "qd8-qb4w kernels, runs as .pte)"))
def _int4_weight_only(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    from . import torch_quant as tq

    total = tq.layer_counts(prepared.module)
    group = int(params["group_size"])
    config = tq.int4_config(group, params["activations"])
    module, q = tq.torchao_quantize(prepared.module, config, filter_fn=tq.linear_divisible_by(group))
    if not q:
        raise CandidateError(f"int4-weight-only found no nn.Linear layer whose input size is a multiple of "
                             f"group_size={group}; try a smaller group_size.")
    what = tq.describe(q, total, "int4")
    skipped = sum(1 for _, m in _linears(prepared.module)) - q.get("Linear", 0)
    name = "IntxWeightOnlyConfig" if params["activations"] == "float" else "Int8DynamicActivationIntxWeightConfig"
    notes = [f"torchao {name}(int4, group {group}): {what}"]
    if skipped:
        notes.append(f"{skipped} Linear layer(s) skipped: input size not a multiple of {group}")
    art = _build(module, prepared, ctx, info={"quantized": what}, notes=notes)
    if art.format == tx.PT2:
        art.notes += ("; the .pt2 stores each int4 value in one byte (torchao's unpacked layout), so the "
                      "size is about that of int8; activations=int8 gives a packed 4-bit XNNPACK .pte")
    return art


def _linears(model):
    torch = tx.import_torch()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@TorchBackend.recipe("int8-static", needs_calib=True,
                     calibration=Param("minmax", choices=("minmax", "histogram", "entropy"),
                                       help="activation ranges: min/max, histogram (L2-error search) or "
                                            "entropy (KL-divergence threshold)"),
                     per_channel=Param(True, choices=(True, False), help="one weight scale per output channel"))
def _int8_static(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    from . import torch_quant as tq

    calib = ctx.require_calib("int8-static")
    total = tq.layer_counts(prepared.module)
    try:
        module, stats = tq.pt2e_static(prepared.module, prepared.args, calib, prepared.input_names,
                                       bool(params["per_channel"]), params["calibration"])
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"PT2E quantization (XNNPACKQuantizer) failed: {tx._reason(exc)}.") from exc
    what = tq.describe(stats["quantized"], total, "int8")
    scheme = "per-channel" if params["per_channel"] else "per-tensor"
    notes = [f"PT2E, XNNPACKQuantizer (int8 {scheme} weights, int8 activations, {params['calibration']} "
             f"observers, calibrated on {stats['calibrated_on']} calibration examples): {what}"]
    art = _build(module, prepared, ctx, info={"quantized": what, "quantizer": "XNNPACKQuantizer"}, notes=notes)
    if art.format == tx.PT2:
        art.notes += ("; the .pt2 keeps fp32 weights beside quantize/dequantize nodes (simulated int8), so it "
                      "is not smaller than fp32")
    return art


@TorchBackend.recipe("prune-unstructured",
                     amount=Param(0.5, low=0.01, high=0.99, help="fraction of Conv/Linear weights set to zero"))
def _prune_unstructured(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    from . import torch_prune as tp_

    module, sparsity, n = tp_.unstructured(prepared.module, params["amount"])
    art = _build(module, prepared, ctx, notes=[], info={"quantized": "none (fp32)", "sparsity": round(sparsity, 4)})
    compressed = len(zlib.compress(Path(art.path).read_bytes(), 9))
    art.info["size_compressed_bytes"] = compressed
    art.notes += (f"; global L1 pruning zeroed {sparsity:.0%} of the weights of {n} Conv/Linear layers; "
                  f"size is the dense file, size_compressed_bytes is the file zlib-compressed "
                  f"({compressed} bytes); dense kernels run zeros at full cost, so no speed gain")
    return art


@TorchBackend.recipe("prune-structured",
                     amount=Param(0.3, low=0.05, high=0.9, help="fraction of channels removed per layer"),
                     finetune_epochs=Param(5, low=0, high=100,
                                           help="epochs of fine-tuning on the calibration data (needs labels)"))
def _prune_structured(backend, prepared: TorchPrepared, params: dict, ctx: Context) -> Artifact:
    from . import torch_prune as tp_

    before = tp_.count_params(prepared.module)
    try:
        module = tp_.structured(prepared.module, prepared.args, params["amount"])
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"Torch-Pruning could not prune this model: {tx._reason(exc)}.") from exc
    after = tp_.count_params(module)
    notes = [f"Torch-Pruning MetaPruner, L1 magnitude, {params['amount']:.0%} of channels removed (last layer "
             f"kept): {before} -> {after} parameters ({_ratio(after, before)})"]
    epochs = int(params["finetune_epochs"])
    if epochs == 0:
        notes.append("not fine-tuned (finetune_epochs=0)")
    elif ctx.calib is None:
        notes.append("not fine-tuned: no calibration data")
    elif not ctx.calib.has_labels:
        notes.append("not fine-tuned: the calibration data has no labels")
    else:
        try:
            seen = tp_.finetune(module, ctx.calib, prepared.input_names, epochs, ctx.seed)
        except Exception as exc:  # noqa: BLE001
            raise CandidateError(f"Fine-tuning the pruned model failed: {tx._reason(exc)}.") from exc
        notes.append(f"fine-tuned {epochs} epochs on {seen} calibration examples")
    return _build(module, prepared, ctx, notes=notes,
                  info={"quantized": "none (fp32)", "params_before": before, "params_after": after})
