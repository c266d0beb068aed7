"""The PyTorch backend: a ``torch.nn.Module`` in, ExecuTorch ``.pte`` (XNNPACK) or ``.pt2`` files out.

Recipes (``recipes.py``): fp16, int8-dynamic, int8-weight-only, int4-weight-only (torchao ``quantize_``),
int8-static (PT2E with the XNNPACK quantizer), prune-unstructured (torch.nn.utils.prune), prune-structured
(Torch-Pruning). Export and lowering live in ``convert``, runners in ``runner``, quantization in ``quant``,
pruning in ``prune``, layer counts in ``reports``. torch, torchao, executorch and torch_pruning are imported
only when a method runs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, library_failure, one_line
from ...quiet import quiet
from ...recipes import Recipe
from ...store import scratch_dir
from ..base import Artifact, Backend, Context
from ..common import cache_off, hash_exported_program, versions
from .attention import conv1d_note, conv1d_to_linear
from .convert import build_artifact, export_static
from .runner import Positional, first_output, import_torch, import_torchao, load, to_tensors


@dataclass
class TorchPrepared:
    """The user's model, copied and in eval mode, with the input layout it is fed."""

    model: Any  # torch.nn.Module (eval, CPU)
    input_names: list[str]
    single_input: bool
    example: dict[str, np.ndarray]  # one example, batched (batch of 1)
    module: Any = field(default=None, repr=False)  # positional view of ``model`` (multi-input models)
    note: str = ""  # what nbopt changed on its copy to export it (a transformers cache turned off)
    dir: Path | None = None  # private scratch folder (under the study's store): the on-disk sensitivity cache
    # sensitivity tables and the mixed-precision session (export, observer bank); see ``mixed``
    _cache: dict = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        """Pickled for the workers without the session (graph modules); sensitivity tables travel."""
        state = dict(self.__dict__)
        state["_cache"] = {k: v for k, v in state.get("_cache", {}).items() if k[0] == "sens"}
        return state

    @property
    def args(self) -> tuple:
        return to_tensors(self.example)


class TorchBackend(Backend):
    name = "torch"
    supports_sensitivity = True

    @classmethod
    def accepts(cls, model: Any) -> bool:
        if isinstance(model, (str, Path)):
            return Path(model).suffix == ".pt2"
        return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)

    # -- preparing -----------------------------------------------------------------------------------
    def prepare(self, model: Any, example: Any) -> TorchPrepared:
        torch = import_torch()
        if isinstance(model, (str, Path)):
            model = load_pt2_module(Path(model))
        if not isinstance(model, torch.nn.Module):
            raise NboptError(f"The torch backend takes a torch.nn.Module, got a {type(model).__name__}.")
        data = example
        try:
            model = copy.deepcopy(model)
        except Exception as exc:  # noqa: BLE001
            raise NboptError(f"nbopt could not copy the model ({one_line(exc)}); it must be "
                             "deep-copyable so that the original stays untouched.") from exc
        model = model.cpu().eval()
        # a transformers Conv1D is a Linear in disguise: as nn.Linear, quantizers and pruners see it
        note = "; ".join(filter(None, [cache_off(model), conv1d_note(conv1d_to_linear(model))]))
        inputs = data.example(1)
        names = list(data.input_names)
        ordered = {k: inputs[k] for k in names}
        module = Positional.wrap(model, names, data.single_input)
        try:
            with torch.no_grad(), quiet():
                first_output(module(*to_tensors(ordered)))
        except CandidateError as exc:
            raise NboptError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001
            raise NboptError(_mismatch(model, ordered, data.single_input, exc)) from exc
        return TorchPrepared(model, names, data.single_input, ordered, module, note, dir=scratch_dir("torch"))

    def fingerprint(self, prepared: TorchPrepared) -> str:
        with quiet():
            program = export_static(prepared.module, prepared.args)
        return hash_exported_program(program, "torch")

    def warm_imports(self) -> None:
        """Import the runtimes (the memory probe subtracts what they cost before loading an artifact)."""
        import_torch()
        import_torchao()
        with quiet():
            from executorch.runtime import Runtime

            Runtime.get()

    # -- artifacts -----------------------------------------------------------------------------------
    def baseline(self, prepared: TorchPrepared, ctx: Context) -> Artifact:
        return build(prepared.module, prepared, ctx, notes=["fp32", *filter(None, [prepared.note])],
                     info={"quantized": "none (fp32)"})

    def load(self, artifact: Artifact):
        return load(artifact)

    def default_recipes(self, prepared: TorchPrepared) -> list[Recipe]:
        return [
            Recipe("fp16"),
            Recipe("int8-dynamic"),
            Recipe("int8-static"),
            Recipe("int8-weight-only"),
            Recipe("prune-structured", {"amount": 0.3}),
            Recipe("prune-structured", {"amount": 0.5}),
            *(Recipe(name) for name in ("qat", "distill") if name in self.handlers),  # skipped without train=
        ]

    def size_breakdown(self, artifact: Artifact) -> dict:
        from .reports import size_breakdown

        return size_breakdown(artifact)

    def versions(self) -> dict[str, str]:
        return versions("torch", "torchao", "executorch", "torch-pruning")

    # -- sensitivity ----------------------------------------------------------------------------------
    def sensitivity(self, prepared: TorchPrepared, calib, mode: str = "dynamic"):
        """Per-layer sensitivity as a DataFrame (node, op_type, params, rel_error, cosine, max_abs_diff,
        rank, error): how far the output moves (vs fp32, on up to 64 calibration examples) when only that
        Linear/Conv module is quantized int8 by XNNPACKQuantizer (per-channel weights; ``mode`` 'static':
        histogram-calibrated activations, 'dynamic': activations quantized at run time). rank 1 = most
        sensitive. One export and one calibration pass for all layers (see ``mixed``); cached on ``prepared``."""
        from .mixed import sensitivity

        if calib is None:
            raise NboptError("Sensitivity analysis needs calibration data: pass calib=....")
        if mode not in ("dynamic", "static"):
            raise NboptError(f"Sensitivity mode is {mode!r}; allowed: 'dynamic', 'static'.")
        return sensitivity(prepared, calib, mode)

    def sensitivity_cost(self, prepared: TorchPrepared, calib, mode: str = "dynamic") -> tuple[bool, int]:
        """(already cached, how many layers ``sensitivity`` quantizes one at a time: each costs one
        prepare_pt2e/convert_pt2e and one run on 64 examples, after one export and one calibration pass)."""
        from .mixed import cached
        from .quant import quantizable_modules

        return cached(prepared, calib, mode), len(quantizable_modules(prepared.module))


def build(module, prepared: TorchPrepared, ctx: Context, *, notes: list[str], info: dict,
          pte: bool = True, program=None) -> Artifact:
    """The verified artifact for ``module`` (see ``convert.build_artifact``), any failure a CandidateError."""
    torch = import_torch()
    with torch.no_grad(), library_failure("torch.export of the model"):
        return build_artifact(module, prepared.args, ctx.workdir, notes=notes, info=info, pte=pte,
                             program=program, reference=run_eager(module, prepared))


def run_eager(module, prepared: TorchPrepared):
    """The module's output on the prepared example, in eager torch (the reference for verification)."""
    torch = import_torch()
    with torch.no_grad(), quiet():
        return first_output(module(*prepared.args))


def load_pt2_module(path: Path):
    """The module of a saved ``torch.export`` program (``torch.export.save``), loaded without pickles."""
    torch = import_torch()
    import_torchao()  # a quantized program calls torch.ops.torchao.*
    try:
        with quiet():
            return torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001
        raise NboptError(f"Cannot load '{path.name}' as a torch.export program ({one_line(exc, 200)}): save it "
                         "with torch.export.save(torch.export.export(model, example_inputs), path).") from exc


def _mismatch(model, inputs: dict[str, np.ndarray], single: bool, exc: BaseException) -> str:
    """One sentence: what the model's first layer expects and what the data gives."""
    torch = import_torch()
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
