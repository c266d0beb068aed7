"""The Core ML backend class: taking a PyTorch or Keras model, the fp32 baseline, loading, defaults.

``prepare`` exports the model once (``convert.torch_source`` / ``convert.keras_source``) and converts it
to an fp32 ML Program, so a model coremltools cannot take fails there, once, with the reason. The
converted programs are cached per (precision, deployment target): recipes compress a cached fp16 program.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ...quiet import quiet
from ...recipes import Recipe
from ..base import Artifact, Backend, Context
from ..common import hash_arrays, hash_exported_program, hash_torch_module, versions
from .convert import (BASE_TARGET, InputSpec, artifact, convert, keras_source, torch_positional, torch_source,
                      write_package)
from .runner import CoreMLRunner, import_ct


@dataclass
class CoreMLPrepared:
    """What ct.convert takes for this model, how it was made, and the programs converted so far."""

    kind: str  # "torch" or "keras"
    source: Any  # a torch ExportedProgram / TorchScript module, or [tf ConcreteFunction]
    inputs: list[InputSpec]
    how: str  # the exporter, and why a fallback was used
    note: str  # "PyTorch Net via torch.export"
    model: Any = field(default=None, repr=False)  # the copy ``source`` was made from: a tf concrete function
    # holds only weak references to the Keras variables, so the model must stay alive beside it
    programs: dict = field(default_factory=dict, repr=False)  # (precision, target) -> MLModel

    def program(self, precision: str, target: str = BASE_TARGET):
        """The model converted at this precision and deployment target (converted once, then cached)."""
        key = (precision, target)
        if key not in self.programs:
            self.programs[key] = convert(self.source, self.kind, self.inputs, precision, target)
        return self.programs[key]


def _is_torch(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)


def _is_keras(model: Any) -> bool:
    return any(c.__module__.startswith(("keras", "tf_keras")) for c in type(model).__mro__)


class CoreMLBackend(Backend):
    name = "coreml"

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return _is_torch(model) or _is_keras(model)

    def warm_imports(self) -> None:
        import_ct()

    # -- preparing -----------------------------------------------------------------------------------
    def prepare(self, model: Any, example: Any) -> CoreMLPrepared:
        if example is None:
            raise NboptError("The Core ML backend needs example inputs to fix the model's input shapes: pass eval=...")
        import_ct()  # first, quietly: importing coremltools also imports torch and TensorFlow, with chatter
        batch = example.example(1)
        inputs = [InputSpec.of(name, batch[name]) for name in example.input_names]
        if _is_torch(model):
            return self._torch(model, batch, inputs, example.single_input)
        if _is_keras(model):
            return self._keras(model, batch, inputs, example.single_input)
        raise NboptError(f"The Core ML backend takes a torch.nn.Module or a Keras model, not a {type(model).__name__}.")

    def _torch(self, model, batch, inputs, single: bool) -> CoreMLPrepared:
        import torch

        try:
            model = copy.deepcopy(model).cpu().eval()
        except Exception as exc:  # noqa: BLE001
            raise NboptError(f"nbopt could not copy the model ({one_line(exc)}); it must be deep-copyable so that "
                             "the original stays untouched.") from exc
        module = torch_positional(model, [s.name for s in inputs], single)
        args = [torch.from_numpy(np.ascontiguousarray(batch[s.name])) for s in inputs]
        with torch.no_grad():
            _check_runs(lambda: module(*args), "PyTorch", batch)
        source, fp32, how = torch_source(
            module, batch, inputs, lambda src: convert(src, "torch", inputs, "fp32", BASE_TARGET))
        prep = CoreMLPrepared("torch", source, inputs, how, f"PyTorch {type(model).__name__} via {how}", module)
        prep.programs[("fp32", BASE_TARGET)] = fp32  # converted while choosing the exporter
        return prep

    def _keras(self, model, batch, inputs, single: bool) -> CoreMLPrepared:
        feed = batch[inputs[0].name] if single else {s.name: batch[s.name] for s in inputs}
        _check_runs(lambda: model(feed, training=False), "Keras", batch)
        model = _keras_copy(model)
        source = keras_source(model, batch, inputs, single)
        how = "tf.function concrete function (ct.convert does not take Keras 3 models directly)"
        prep = CoreMLPrepared("keras", source, inputs, how, f"Keras {type(model).__name__} via {how}", model)
        prep.program("fp32")  # convert now: a model coremltools cannot take fails here, once
        return prep

    def fingerprint(self, prepared: CoreMLPrepared) -> str:
        """What ct.convert is given: the exported torch graph and weights, or the traced Keras graph."""
        source = prepared.source
        if hasattr(source, "graph_module"):  # torch.export program
            return hash_exported_program(source, "coreml")
        if prepared.kind == "torch":  # TorchScript trace
            return hash_torch_module(source, "coreml-ts:" + str(source.inlined_graph))
        graph = b"".join(fn.graph.as_graph_def().SerializeToString(deterministic=True) for fn in source)
        weights = [np.asarray(w) for w in prepared.model.get_weights()]
        return hash_arrays([np.frombuffer(graph, np.uint8), *weights], "coreml-keras")

    # -- artifacts -----------------------------------------------------------------------------------
    def baseline(self, prepared: CoreMLPrepared, ctx: Context) -> Artifact:
        path, report = write_package(prepared.program("fp32"), ctx, "fp32")
        notes = (f"fp32 weights and compute (ct.convert compute_precision=FLOAT32), ML Program, minimum "
                 f"deployment target {BASE_TARGET}; {prepared.note}")
        return artifact(path, notes, report, min_deployment_target=BASE_TARGET, compute_precision="fp32")

    def load(self, artifact: Artifact) -> CoreMLRunner:
        return CoreMLRunner(artifact.path)

    def default_recipes(self, prepared: CoreMLPrepared) -> list[Recipe]:
        return [Recipe("fp16"), Recipe("int8-weight-only"), Recipe("int4-weight-only"),
                Recipe("int4-weight-only", {"method": "palettize"}), Recipe("prune-unstructured")]

    def size_breakdown(self, artifact: Artifact) -> dict:
        from .reports import size_breakdown

        return size_breakdown(artifact)

    def versions(self) -> dict[str, str]:
        return versions("coremltools", "torch", "tensorflow", "tensorflow-cpu", "keras")


def _check_runs(call, framework: str, batch: dict[str, np.ndarray]) -> None:
    """Run the model once on the data in its own framework: a mismatch is the user's, in one sentence."""
    try:
        with quiet():
            call()
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        shapes = ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in batch.items())
        raise NboptError(f"The {framework} model could not run on the evaluation data (examples: {shapes}): "
                         f"{one_line(exc, 300)}.") from exc


def _keras_copy(model):
    """A clone with the same weights, so later edits to the user's model do not change the conversion."""
    try:
        with quiet():
            import keras

            clone = keras.models.clone_model(model)
            clone.set_weights(model.get_weights())
        return clone
    except Exception:  # noqa: BLE001  (subclassed models without get_config cannot be cloned)
        return model
