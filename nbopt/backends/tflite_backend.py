"""TensorFlow Lite / LiteRT backend: Keras, SavedModel, .tflite (as is) and PyTorch (through litert-torch).

Recipes go through the TFLite converter (``tf.lite.TFLiteConverter``): the fp32 baseline, ``fp16``,
``int8-dynamic`` (dynamic range), ``int8-static`` (full integer, calibrated on ``ctx.calib``; float or
integer I/O; int8 or int16x8 activations) and, for Keras models, ``prune-unstructured`` (one-shot
magnitude pruning of a clone's kernels; the compressed size is reported because zeros only shrink a
compressed file). Every artifact is run in the LiteRT interpreter (``ai_edge_litert``, else
``tf.lite.Interpreter``) with the XNNPACK CPU delegate, and gets a delegate-compatibility report
(GPU delegate, int8-only accelerators) written beside it (see ``tflite_delegates``).

TensorFlow, Keras and torch are imported inside functions only: ``import nbopt`` stays light.
Data is fed as given: Keras / TFLite models take channels-last (NHWC) images.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import io
import logging
import os
import re
import shutil
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CandidateError, NboptError
from ..recipes import Recipe
from .base import Artifact, Backend, Context, Param, hash_arrays, hash_file

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL")
PRUNABLE = ("kernel", "depthwise_kernel", "pointwise_kernel")


# --------------------------------------------------------------------------------------------------
# lazy imports and quiet calls
# --------------------------------------------------------------------------------------------------
def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ INFO lines out
    import tensorflow as tf

    return tf


def interpreter_class():
    """(Interpreter class, description): LiteRT's ``ai_edge_litert`` if installed, else ``tf.lite``."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {_version('ai-edge-litert')}"
    except ImportError:
        tf = _tf()
        return tf.lite.Interpreter, f"tf.lite.Interpreter (TensorFlow {tf.__version__})"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_threads() -> int:
    env = os.environ.get("NBOPT_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


@contextlib.contextmanager
def _quiet():
    """Keep the converter's prints (Keras export summary, litert-torch progress) out of the notebook."""
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def converter_reason(exc: BaseException) -> str:
    """One readable reason out of a TFLite converter error (which prints pages of MLIR)."""
    text = str(exc)
    m = re.search(r"TF Select ops: ([^\n]+)", text)
    if m:
        return (f"op(s) {m.group(1).strip()} are not TFLite builtin ops (they would need TF Select / Flex "
                "kernels, which a plain LiteRT runtime does not have)")
    m = re.search(r"error: ([^\n]+)", text)
    if m and "failed while converting" not in m.group(1):
        return m.group(1).strip()[:300]
    for line in text.splitlines():
        if line.strip() and not line.startswith(("loc(", "<unknown>", "error: failed while")):
            return line.strip()[:300]
    return type(exc).__name__


def _convert(converter, what: str) -> bytes:
    try:
        with _quiet():
            return converter.convert()
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"The TFLite converter could not make the {what} model: "
                             f"{converter_reason(exc)}.") from exc


# --------------------------------------------------------------------------------------------------
# inputs and the runner
# --------------------------------------------------------------------------------------------------
@dataclass
class TensorSpec:
    name: str  # signature input name (what the data's names are matched against)
    index: int
    shape: tuple  # shape_signature: -1 where dynamic
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0


def _signature_io(it) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs in signature order (names from the signature when the file has one)."""
    details = {int(d["index"]): d for d in it.get_input_details() + it.get_output_details()}
    sigs = {}
    try:
        sigs = it._get_full_signature_list() or {}
    except Exception:  # noqa: BLE001  (old runtimes)
        sigs = {}
    if sigs:
        key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
        ins = list(sigs[key]["inputs"].items())
        outs = sorted(sigs[key]["outputs"].items(), key=lambda kv: _natural(kv[0]))
    else:
        ins = [(d["name"], int(d["index"])) for d in it.get_input_details()]
        outs = [(d["name"], int(d["index"])) for d in it.get_output_details()]

    def spec(name, idx):
        d = details[int(idx)]
        scale, zp = d.get("quantization", (0.0, 0))
        return TensorSpec(name, int(idx), tuple(int(s) for s in d.get("shape_signature", d["shape"])),
                          np.dtype(d["dtype"]), float(scale), int(zp))

    return [spec(n, i) for n, i in ins], [spec(n, i) for n, i in outs]


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _clean(name: str) -> str:
    name = name.split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


def map_inputs(inputs: dict[str, np.ndarray], specs: list[TensorSpec]) -> list[tuple[TensorSpec, np.ndarray]]:
    """Pair the data's named arrays with the model's inputs (by name; positionally for one input)."""
    if len(specs) == 1 and len(inputs) == 1:
        return [(specs[0], next(iter(inputs.values())))]
    pairs, missing = [], []
    for s in specs:
        key = s.name if s.name in inputs else _clean(s.name) if _clean(s.name) in inputs else None
        if key is None:
            missing.append(s.name)
        else:
            pairs.append((s, inputs[key]))
    if missing:
        have = ", ".join(map(repr, inputs)) or "none"
        raise NboptError(f"The TFLite model needs input(s) {', '.join(map(repr, missing))}, but the data has "
                         f"{have}: name the data's columns after the model's inputs.")
    return pairs


def _to_model_dtype(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    """Quantize floats for an integer-I/O model with the tensor's scale / zero-point; else cast."""
    arr = np.asarray(arr)
    if spec.dtype.kind in "iu" and spec.scale > 0 and arr.dtype.kind == "f":
        info = np.iinfo(spec.dtype)
        q = np.round(arr / spec.scale) + spec.zero_point
        return np.clip(q, info.min, info.max).astype(spec.dtype)
    return np.ascontiguousarray(arr, dtype=spec.dtype)


def _from_model_dtype(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    if spec.dtype.kind in "iu" and spec.scale > 0:
        return ((arr.astype(np.float32) - spec.zero_point) * spec.scale).astype(np.float32)
    return arr


class TFLiteRunner:
    """Runs a .tflite file in the LiteRT interpreter (XNNPACK CPU delegate, ``threads`` threads).

    Float data in, float outputs out: for an integer-I/O model the inputs are quantized and the first
    output dequantized with the tensors' own scale / zero-point. Batches are fed by resizing the input
    tensors when the model has a dynamic batch dimension; otherwise ``max_batch == 1``.
    """

    delegate = "XNNPACK"

    def __init__(self, path: Path, threads: int | None = None):
        Interp, self.runtime = interpreter_class()
        self.threads = int(threads or default_threads())
        try:
            # The default op resolver applies the XNNPACK delegate to the float and int8 ops it supports.
            self.it = Interp(model_path=str(path), num_threads=self.threads)
            self.inputs, self.outputs = _signature_io(self.it)
            self.it.allocate_tensors()
        except (NboptError, CandidateError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise CandidateError(f"The LiteRT interpreter cannot load this model "
                                 f"({type(exc).__name__}: {_first_line(exc)[:300]}).") from exc
        dynamic = all(len(s.shape) > 0 and s.shape[0] == -1 for s in self.inputs)
        self.max_batch = None if dynamic else 1
        self._shapes = {s.index: None for s in self.inputs}
        self.output = self.outputs[0]

    def _run(self, pairs: list[tuple[TensorSpec, np.ndarray]]) -> np.ndarray:
        feeds = [(s, _to_model_dtype(s, a)) for s, a in pairs]
        if any(self._shapes[s.index] != a.shape for s, a in feeds):
            for s, a in feeds:
                self.it.resize_tensor_input(s.index, list(a.shape), strict=False)
                self._shapes[s.index] = a.shape
            self.it.allocate_tensors()
        for s, a in feeds:
            self.it.set_tensor(s.index, a)
        self.it.invoke()
        return _from_model_dtype(self.output, self.it.get_tensor(self.output.index))

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        pairs = map_inputs(inputs, self.inputs)
        n = len(pairs[0][1])
        if self.max_batch is None or n <= self.max_batch:
            return self._run(pairs)
        return np.concatenate([self._run([(s, a[i:i + 1]) for s, a in pairs]) for i in range(n)])


def check_data(data, specs: list[TensorSpec], what: str) -> dict[str, np.ndarray]:
    """Raise one NboptError if the data's examples do not fit the model's inputs; return one example."""
    ex = data.example(1)
    for spec, arr in map_inputs(ex, specs):
        got, want = tuple(arr.shape[1:]), spec.shape[1:]
        fits = len(got) == len(want) and all(w in (-1, g) for g, w in zip(got, want))
        if not fits:
            shown = tuple(None if w == -1 else w for w in want)
            raise NboptError(f"The {what} input '{spec.name}' has examples of shape {got} but the model expects "
                             f"{shown} (Keras/TFLite models take channels-last NHWC images): give the data in "
                             "the model's own layout.")
    return ex


# --------------------------------------------------------------------------------------------------
# the prepared model
# --------------------------------------------------------------------------------------------------
@dataclass
class TFLitePrepared:
    kind: str  # "keras", "saved_model", "tflite", "torch"
    source: Any  # the Keras model, the SavedModel folder, the .tflite path, or the torch module
    note: str
    fp32: bytes = b""  # the baseline .tflite, converted once
    inputs: list[TensorSpec] = field(default_factory=list)
    dir: Path | None = None


def _is_keras(model: Any) -> bool:
    return any(c.__module__.startswith(("keras", "tf_keras")) for c in type(model).__mro__)


def _is_torch(model: Any) -> bool:
    return any(c.__module__.startswith("torch.nn") for c in type(model).__mro__)


def _keras_converter(model):
    tf = _tf()
    return tf.lite.TFLiteConverter.from_keras_model(model)


def _torch_to_tflite(model, data, workdir: Path) -> tuple[bytes, str]:
    try:
        import litert_torch
    except ImportError as exc:
        raise NboptError("Converting a PyTorch model to TFLite needs litert-torch, which is not installed "
                         "(pip install litert-torch==0.10.0; it accepts torch 2.13 but downgrades "
                         "typing-extensions and pydantic, so nbopt does not install it): use the torch or "
                         "onnx backend, or convert the model yourself and pass the .tflite file.") from exc
    import torch

    if data is None:
        raise NboptError("Converting a PyTorch model to TFLite needs example inputs: pass eval=... data.")
    ex = data.example(1)
    args = tuple(torch.from_numpy(np.ascontiguousarray(ex[n])) for n in data.input_names)
    out = workdir / "torch_fp32.tflite"
    try:
        with _quiet():
            edge = litert_torch.convert(model.eval(), args)
            edge.export(str(out))
    except Exception as exc:  # noqa: BLE001
        raise NboptError(f"litert-torch could not convert this PyTorch model to TFLite "
                         f"({type(exc).__name__}: {_first_line(exc)[:300]}).") from exc
    return out.read_bytes(), f"litert-torch {_version('litert-torch')}"


# --------------------------------------------------------------------------------------------------
# artifacts
# --------------------------------------------------------------------------------------------------
def weight_summary(path: Path) -> str:
    """'weights int8: 4/4 CONV_2D, FULLY_CONNECTED; io float32 -> float32' from the file's own ops."""
    Interp, _ = interpreter_class()
    it = Interp(model_path=str(path))
    types = {int(t["index"]): np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    producers = {}
    ops = it._get_ops_details()
    for op in ops:
        for o in op["outputs"]:
            producers[int(o)] = op["op_name"]
    counts: dict[str, list[int]] = {}
    kinds: dict[str, int] = {}
    for op in ops:
        if op["op_name"] not in WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        w = int(op["inputs"][1])
        wtype = types.get(w, "?")
        if producers.get(w) == "DEQUANTIZE":  # fp16 weights are dequantized at load
            src = [int(p["inputs"][0]) for p in ops if w in [int(x) for x in p["outputs"]]]
            wtype = types.get(src[0], wtype) if src else wtype
        kinds[wtype] = kinds.get(wtype, 0) + 1
        counts.setdefault(op["op_name"], [0])[0] += 1
    total = sum(kinds.values())
    parts = ", ".join(f"{k} {v}/{total}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    ins = ",".join(np.dtype(d["dtype"]).name for d in it.get_input_details())
    outs = ",".join(np.dtype(d["dtype"]).name for d in it.get_output_details())
    return f"weights {parts or 'none'} ({', '.join(sorted(counts))}); io {ins}->{outs}"


def make_artifact(data: bytes, ctx: Context, stem: str, notes: str, **info) -> Artifact:
    """Write the .tflite, add compressed size, weight types and the delegate report (not shipped)."""
    from .tflite_delegates import write_report

    ctx.workdir.mkdir(parents=True, exist_ok=True)
    path = ctx.workdir / f"{stem}.tflite"
    path.write_bytes(data)
    info["size_compressed_bytes"] = len(zlib.compress(data, 6))
    try:
        info["quantized"] = weight_summary(path)
    except Exception as exc:  # noqa: BLE001
        info["quantized"] = f"unknown ({type(exc).__name__})"
    try:
        with _quiet():
            summary, report = write_report(path)
        info["delegates"], info["delegate_report"] = summary, str(report)
    except Exception as exc:  # noqa: BLE001  (a report that fails must not fail the candidate)
        info["delegates"] = f"no report ({type(exc).__name__}: {_first_line(exc)[:120]})"
    return Artifact(path=path, format="tflite", files=[path], notes=notes, info=info)


# --------------------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------------------
class TFLiteBackend(Backend):
    name = "tflite"

    def __init__(self, threads: int | None = None):
        self.threads = threads

    @classmethod
    def accepts(cls, model: Any) -> bool:
        if isinstance(model, (str, Path)):
            p = Path(model)
            return p.suffix in (".tflite", ".keras") or (p.is_dir() and (p / "saved_model.pb").exists())
        if _is_keras(model):
            return True
        if _is_torch(model):
            import importlib.util

            return importlib.util.find_spec("litert_torch") is not None
        return False

    def warm_imports(self) -> None:
        interpreter_class()

    # -- prepare -----------------------------------------------------------------------------------
    def prepare(self, model: Any, example: Any) -> TFLitePrepared:
        workdir = Path(tempfile.mkdtemp(prefix="nbopt-tflite-"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # scratch only; artifacts live in the store
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
                    with _quiet():
                        loaded = keras.models.load_model(path)
                except Exception as exc:  # noqa: BLE001
                    raise NboptError(f"Keras cannot load '{path.name}' ({_first_line(exc)[:200]}).") from exc
                prep = self._keras(loaded, example, f"Keras file {path.name}")
            elif path.is_dir() and (path / "saved_model.pb").exists():
                tf = _tf()
                conv = tf.lite.TFLiteConverter.from_saved_model(str(path))
                prep = TFLitePrepared("saved_model", path, f"SavedModel {path.name}",
                                      fp32=self._first_convert(conv))
            else:
                raise NboptError(f"The TFLite backend takes a .tflite or .keras file or a SavedModel folder, "
                                 f"not '{path.name}'.")
        elif _is_keras(model):
            prep = self._keras(model, example, f"Keras {type(model).__name__}")
        elif _is_torch(model):
            data, note = _torch_to_tflite(model, example, workdir)
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
                                 f"({type(exc).__name__}: {_first_line(exc)[:300]}).") from exc
        return prep

    def _keras(self, model, example, note: str) -> TFLitePrepared:
        if not getattr(model, "built", True) or not getattr(model, "weights", None):
            if example is None:
                raise NboptError("This Keras model is not built yet: call it once on an example or pass eval=...")
            with _quiet():
                model(example.example(1)[example.input_names[0]] if example.single_input else example.example(1))
        return TFLitePrepared("keras", model, note, fp32=self._first_convert(_keras_converter(model)))

    @staticmethod
    def _first_convert(conv) -> bytes:
        try:
            return _convert(conv, "fp32")
        except CandidateError as exc:
            raise NboptError(str(exc)) from exc

    def fingerprint(self, model: Any) -> str:
        if isinstance(model, (str, Path)):
            p = Path(model)
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            return hash_arrays([], "tflite-path:" + ":".join(hash_file(f) for f in files))
        if _is_keras(model):
            try:
                structure = model.to_json()
            except Exception:  # noqa: BLE001  (subclassed models)
                structure = type(model).__qualname__ + repr([w.shape for w in model.weights])
            return hash_arrays([np.asarray(w) for w in model.get_weights()], "keras:" + structure)
        state = model.state_dict()
        arrays = [v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
                  for v in state.values()]
        return hash_arrays(arrays, "torch->tflite:" + repr(model))

    def baseline(self, prepared: TFLitePrepared, ctx: Context) -> Artifact:
        how = {"tflite": "", "torch": "fp32, "}.get(prepared.kind, "fp32, TFLite converter; ")
        return make_artifact(prepared.fp32, ctx, "baseline", how + prepared.note)

    def load(self, artifact: Artifact) -> TFLiteRunner:
        return TFLiteRunner(artifact.path, threads=self.threads)

    def default_recipes(self, prepared: TFLitePrepared) -> list[Recipe]:
        if prepared.kind in ("tflite", "torch"):
            return []
        recipes = [Recipe("fp16"), Recipe("int8-dynamic"), Recipe("int8-static")]
        if prepared.kind == "keras":
            recipes.append(Recipe("prune-unstructured"))
        return [self.validate(r) for r in recipes]

    def versions(self) -> dict[str, str]:
        out = {}
        for dist in ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "litert-torch"):
            v = _version(dist)
            if v:
                out[dist] = v
        return out

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
            return _tf().lite.TFLiteConverter.from_saved_model(str(prepared.source))
        return _keras_converter(prepared.source)

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
                    yield {_clean(s.name): a for (s, _), a in zip(pairs, arrays)}
                count += 1
                if count >= limit:
                    return

        return gen


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


@TFLiteBackend.recipe("fp16")
def _fp16(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    tf = _tf()
    conv = backend.converter(prepared, "fp16")
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    data = _convert(conv, "fp16")
    return make_artifact(data, ctx, "fp16", "fp16 weights (dequantized to fp32 at load on CPU; GPU runs "
                         "fp16), TFLite converter")


@TFLiteBackend.recipe("int8-dynamic")
def _int8_dynamic(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    tf = _tf()
    conv = backend.converter(prepared, "int8-dynamic")
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    data = _convert(conv, "int8-dynamic")
    return make_artifact(data, ctx, "int8_dynamic", "dynamic range: int8 weights, float activations "
                         "(quantized on the fly), TFLite converter")


@TFLiteBackend.recipe(
    "int8-static", needs_calib=True,
    io=Param("float", choices=("float", "int8"),
             help="float: float model inputs/outputs; int8: integer I/O (int16 with int16 activations)"),
    activations=Param("int8", choices=("int8", "int16"), help="int16: 16x8 quantization (int8 weights)"),
    per_channel=Param(True, choices=(True, False), help="per-channel weight scales"),
)
def _int8_static(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    tf = _tf()
    conv = backend.converter(prepared, "int8-static")
    calib = ctx.require_calib("int8-static")
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = backend.representative(prepared, calib)
    int16 = params["activations"] == "int16"
    if int16:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    else:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io_type = "float32"
    if params["io"] == "int8":
        conv.inference_input_type = conv.inference_output_type = tf.int16 if int16 else tf.int8
        io_type = "int16" if int16 else "int8"
    if not params["per_channel"]:
        conv._experimental_disable_per_channel = True
    data = _convert(conv, f"int8-static ({_fmt(params)})")
    stem = f"int8_static_{params['activations']}_{params['io']}" + ("" if params["per_channel"] else "_pt")
    acts = "int16 activations / int8 weights" if int16 else "int8 activations and weights"
    scales = "per-channel" if params["per_channel"] else "per-tensor"
    return make_artifact(data, ctx, stem, f"full integer ({acts}, {scales}), "
                         f"{io_type} I/O, calibrated on {min(calib.num_examples or 1024, 1024)} examples, "
                         "TFLite converter")


@TFLiteBackend.recipe("prune-unstructured",
                      amount=Param(0.5, low=0.0, high=0.99, help="fraction of each kernel zeroed"))
def _prune(backend: TFLiteBackend, prepared: TFLitePrepared, params: dict, ctx: Context) -> Artifact:
    if prepared.kind != "keras":
        raise CandidateError("prune-unstructured on TFLite needs a Keras model (its weights are pruned before "
                             "conversion); this model is a " + prepared.kind.replace("_", " ") + ".")
    amount = float(params["amount"])
    model = prepared.source
    try:
        with _quiet():
            import keras

            target = keras.models.clone_model(model)
            target.set_weights(model.get_weights())
        how, saved = "clone", None
    except Exception:  # noqa: BLE001  (subclassed models without get_config cannot be cloned)
        target, how, saved = model, "the model itself, restored afterwards", model.get_weights()
    try:
        zeroed, total = _magnitude_prune(target, amount)
        data = _convert(_keras_converter(target), f"prune-unstructured (amount={amount})")
    finally:
        if saved is not None:
            model.set_weights(saved)
    note = (f"one-shot magnitude pruning of the Keras kernels ({how}): {zeroed}/{total} weights zero "
            f"({zeroed / total:.0%}), no fine-tuning; fp32 TFLite; size_compressed_bytes is the "
            "zlib-compressed file (zeros only shrink a compressed file). tensorflow-model-optimization "
            "prunes only tf_keras (Keras 2) models, during training, so it is not used for Keras 3")
    return make_artifact(data, ctx, f"pruned_{int(round(amount * 100))}", note, sparsity=round(zeroed / total, 4))


def _magnitude_prune(model, amount: float) -> tuple[int, int]:
    """Zero the ``amount`` smallest-|w| entries of every Dense/Conv kernel (per layer); (zeros, total)."""
    zeroed = total = 0
    for var in model.weights:
        name = getattr(var, "path", var.name).split("/")[-1].split(":")[0]
        if name not in PRUNABLE:
            continue
        w = np.array(var.numpy())
        k = int(round(amount * w.size))
        if k > 0:
            flat = w.ravel().copy()
            flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
            w = flat.reshape(w.shape)
            var.assign(w)
        zeroed += int((w == 0).sum())
        total += int(w.size)
    if total == 0:
        raise CandidateError("prune-unstructured found no Dense/Conv kernels to prune in this Keras model.")
    return zeroed, total
