"""TensorFlow Lite / LiteRT backend: Keras, SavedModel, .tflite (as is) and PyTorch (through litert-torch).

Recipes go through the TFLite converter (``tf.lite.TFLiteConverter``): the fp32 baseline, ``fp16``,
``int8-dynamic`` (dynamic range), ``int8-static`` (full integer, calibrated on ``ctx.calib``; float or
integer I/O; int8 or int16x8 activations) and, for Keras models, ``prune-unstructured`` (one-shot
magnitude pruning of a clone's kernels; the compressed size is reported because zeros only shrink a
compressed file). Every artifact is run in the LiteRT interpreter (``ai_edge_litert``, else
``tf.lite.Interpreter``) with the XNNPACK CPU delegate, and gets a delegate-compatibility report
(GPU delegate, int8-only accelerators) written beside it (see ``reports``).

TensorFlow, Keras and torch are imported inside functions only: ``import nbopt`` stays light.
Data is fed as given: Keras / TFLite models take channels-last (NHWC) images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ...quiet import quiet
from ...store import scratch_dir
from ...recipes import Recipe
from ..base import Artifact, Backend, Context
from ..common import hash_arrays, versions
from .convert import convert, is_keras, is_torch, keras_converter, make_artifact, torch_to_tflite
from .runner import (TensorSpec, TFLiteRunner, clean_name, check_data, import_tf,
                            interpreter_class, map_inputs)


@dataclass
class TFLitePrepared:
    kind: str  # "keras", "saved_model", "tflite", "torch"
    source: Any  # the Keras model, the SavedModel folder, the .tflite path, or the torch module
    note: str
    fp32: bytes = b""  # the baseline .tflite, converted once
    inputs: list[TensorSpec] = field(default_factory=list)
    dir: Path | None = None
    # calibrated model, reference outputs and sensitivity tables by calibration data (see ``mixed``)
    _cache: dict = field(default_factory=dict, repr=False)


# --------------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------------
class TFLiteBackend(Backend):
    name = "tflite"
    supports_sensitivity = True

    @classmethod
    def accepts(cls, model: Any) -> bool:
        if isinstance(model, (str, Path)):
            p = Path(model)
            return p.suffix in (".tflite", ".keras") or (p.is_dir() and (p / "saved_model.pb").exists())
        if is_keras(model):
            return True
        # PyTorch goes through litert-torch; without it, prepare() says so and the row fails with that reason
        return is_torch(model)

    def warm_imports(self) -> None:
        interpreter_class()

    # -- prepare -----------------------------------------------------------------------------------
    def prepare(self, model: Any, example: Any) -> TFLitePrepared:
        workdir = scratch_dir("tflite")
        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.exists():
                raise NboptError(f"Model file '{path}' does not exist: check the path.")
            if path.suffix == ".tflite":
                prep = TFLitePrepared("tflite", path, f"TFLite file {path.name} (as given)",
                                      fp32=path.read_bytes())
            elif path.suffix == ".keras":
                import keras

                try:
                    with quiet():
                        loaded = keras.models.load_model(path)
                except Exception as exc:  # noqa: BLE001
                    raise NboptError(f"Keras cannot load '{path.name}' ({one_line(exc, 200, with_type=False)}).") from exc
                prep = self._keras(loaded, example, f"Keras file {path.name}")
            elif path.is_dir() and (path / "saved_model.pb").exists():
                tf = import_tf()
                conv = tf.lite.TFLiteConverter.from_saved_model(str(path))
                prep = TFLitePrepared("saved_model", path, f"SavedModel {path.name}",
                                      fp32=self._firstconvert(conv))
            else:
                raise NboptError(f"The TFLite backend takes a .tflite or .keras file or a SavedModel folder, "
                                 f"not '{path.name}'.")
        elif is_keras(model):
            prep = self._keras(model, example, f"Keras {type(model).__name__}")
        elif is_torch(model):
            import copy

            try:  # the converter puts the module in eval mode: convert a copy, the user's stays as it is
                model = copy.deepcopy(model)
            except Exception as exc:  # noqa: BLE001
                raise CandidateError(f"nbopt could not copy the model ({one_line(exc)}); it must be "
                                     "deep-copyable so that the original stays untouched.") from exc
            data, note = torch_to_tflite(model, example, workdir)
            prep = TFLitePrepared("torch", model, f"PyTorch {type(model).__name__} via {note}", fp32=data)
        else:
            raise NboptError(f"The TFLite backend takes a Keras model, a SavedModel folder, a .tflite file or a "
                             f"PyTorch module (through litert-torch), not a {type(model).__name__}.")
        prep.dir = workdir
        fp32 = workdir / "fp32.tflite"
        fp32.write_bytes(prep.fp32)
        runner = TFLiteRunner(fp32, threads=1)
        prep.inputs = runner.inputs
        if example is not None:
            ex = check_data(example, prep.inputs, "evaluation data")
            try:
                runner(ex)
            except (NboptError, CandidateError):
                raise
            except Exception as exc:  # noqa: BLE001
                raise NboptError(f"The LiteRT interpreter could not run this model on the given data "
                                 f"({one_line(exc, 300)}).") from exc
        return prep

    def _keras(self, model, example, note: str) -> TFLitePrepared:
        if not getattr(model, "built", True) or not getattr(model, "weights", None):
            if example is None:
                raise NboptError("This Keras model is not built yet: call it once on an example or pass eval=...")
            with quiet():
                model(example.example(1)[example.input_names[0]] if example.single_input else example.example(1))
        return TFLitePrepared("keras", model, note, fp32=self._firstconvert(keras_converter(model)))

    @staticmethod
    def _firstconvert(conv) -> bytes:
        try:
            return convert(conv, "fp32")
        except CandidateError as exc:
            raise NboptError(str(exc)) from exc

    def fingerprint(self, prepared: TFLitePrepared) -> str:
        # the fp32 flatbuffer holds the whole graph and every weight (the converter is deterministic)
        return hash_arrays([np.frombuffer(prepared.fp32, np.uint8)], "tflite")

    def baseline(self, prepared: TFLitePrepared, ctx: Context) -> Artifact:
        how = {"tflite": "", "torch": "fp32, "}.get(prepared.kind, "fp32, TFLite converter; ")
        return make_artifact(prepared.fp32, ctx, "baseline", how + prepared.note)

    def load(self, artifact: Artifact) -> TFLiteRunner:
        return TFLiteRunner(artifact.path)

    def default_recipes(self, prepared: TFLitePrepared) -> list[Recipe]:
        if prepared.kind in ("tflite", "torch"):
            return []
        recipes = [Recipe("fp16"), Recipe("int8-dynamic"), Recipe("int8-static")]
        if prepared.kind == "keras":
            recipes.append(Recipe("prune-unstructured"))
            recipes += [Recipe(name) for name in ("qat", "distill") if name in self.handlers]  # need train=
        return [self.validate(r) for r in recipes]

    def size_breakdown(self, artifact: Artifact) -> dict:
        from .reports import size_breakdown

        return size_breakdown(artifact)

    def versions(self) -> dict[str, str]:
        return versions("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "litert-torch")

    # -- per-layer sensitivity (mixed.py) --------------------------------------------------------------
    def sensitivity(self, prepared: TFLitePrepared, calib, mode: str = "static"):
        """Per-layer sensitivity as a DataFrame (node, op_type, params, rel_error, cosine, max_abs_diff,
        rank, error): how far the first output moves against float on 64 calibration examples when only
        that layer is int8 (full integer, calibrated once). rank 1 = most sensitive. Cached in memory
        and under ``prepared.dir`` by the calibration data's fingerprint."""
        from .mixed import sensitivity

        if mode != "static":
            raise NboptError(f"Sensitivity mode {mode!r}: the TFLite backend measures 'static' (full integer) "
                             "only; its dynamic-range quantizer cannot keep single layers in float.")
        return sensitivity(self, prepared, calib)

    def sensitivity_cost(self, prepared: TFLitePrepared, calib, mode: str = "static") -> tuple[bool, int]:
        from .mixed import sensitivity_cost

        return sensitivity_cost(self, prepared, calib)

    # -- shared pieces ---------------------------------------------------------------------------------
    def converter(self, prepared: TFLitePrepared, recipe: str):
        """A fresh TFLiteConverter for the source model (the converter object is single-use)."""
        if prepared.kind == "tflite":
            raise CandidateError(f"A .tflite file is evaluated as it is; '{recipe}' needs the source model "
                                 "(a Keras model or a SavedModel folder).")
        if prepared.kind == "torch":
            raise CandidateError(f"'{recipe}' for a PyTorch model is not done on TFLite: nbopt converts PyTorch "
                                 "models with litert-torch to fp32 only; quantize with the torch or onnx backend.")
        if prepared.kind == "saved_model":
            return import_tf().lite.TFLiteConverter.from_saved_model(str(prepared.source))
        return keras_converter(prepared.source)

    def representative(self, prepared: TFLitePrepared, calib, limit: int = 1024):
        """Representative dataset from the calibration data: one example at a time, in model dtypes."""
        check_data(calib, prepared.inputs, "calibration data")
        specs = prepared.inputs

        def gen():
            count = 0
            for inputs, _ in calib.batches(1):
                pairs = map_inputs(inputs, specs)
                arrays = [np.asarray(a, dtype=s.dtype) for s, a in pairs]  # dtypes of the fp32 model
                if len(arrays) == 1:
                    yield arrays
                else:
                    yield {clean_name(s.name): a for (s, _), a in zip(pairs, arrays)}
                count += 1
                if count >= limit:
                    return

        return gen

