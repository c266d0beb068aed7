"""ONNX backend: quantize with onnxruntime.quantization, run every candidate in onnxruntime.

Takes a torch.nn.Module (exported here: dynamo exporter, TorchScript as fallback), a path to an .onnx
file (external data included) or an ``onnx.ModelProto``. Recipes: fp16, int8-dynamic, int8-static
(QDQ; minmax / entropy / percentile calibration), int4-weight-only (MatMulNBits) and mixed-precision
(per-node sensitivity on the calibration data, most sensitive nodes kept in float).
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CandidateError, NboptError
from ..recipes import Recipe
from .base import Artifact, Backend, Context, Param, hash_arrays, hash_file
from .onnx_export import (ORT_TO_NUMPY, _first_line, export_torch, load_user_file, model_files, new_tempdir,
                          save_model)
from .onnx_sensitivity import fidelity, keep_float_steps, sensitivity_table, weight_nodes

SENS_EXAMPLES = 64  # calibration examples used to measure sensitivity and to steer the search


# --------------------------------------------------------------------------------------------------
# prepared model and input mapping
# --------------------------------------------------------------------------------------------------
@dataclass
class GraphInput:
    name: str
    dtype: Any
    shape: tuple  # ints or None (dynamic)


@dataclass
class OnnxPrepared:
    dir: Path  # private folder holding the fp32 model and cached intermediates
    path: Path  # the fp32 model as given / exported
    inputs: list[GraphInput]
    source: str  # "torch", "file", "proto"
    note: str  # exporter / source note, repeated on the baseline row
    _pre: tuple[Path, str] | None = None  # quant_pre_process output and its note
    _cache: dict = field(default_factory=dict)  # sensitivity tables, reference outputs, calib ranges

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]


def _graph_inputs(path: Path) -> list[GraphInput]:
    """The real inputs of the graph (initializers listed as inputs by old opsets are left out)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.float32
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        out.append(GraphInput(vi.name, np.dtype(dtype), shape))
    return out


def map_feeds(inputs: dict[str, np.ndarray], graph: list[GraphInput]) -> dict[str, np.ndarray]:
    """Data names -> graph input names (one array feeds the one input; otherwise by name), dtypes cast."""
    names = [g.name for g in graph]
    if len(inputs) == 1 and len(graph) == 1:
        pairs = [(graph[0], next(iter(inputs.values())))]
    elif set(inputs) >= set(names):
        pairs = [(g, inputs[g.name]) for g in graph]
    else:
        raise NboptError(f"The data's inputs ({', '.join(sorted(inputs)) or 'none'}) do not match the ONNX "
                         f"model's inputs ({', '.join(names)}): name the data's arrays or columns after "
                         "the model's inputs.")
    feeds = {}
    for g, arr in pairs:
        arr = np.asarray(arr)
        if arr.dtype != g.dtype:
            arr = arr.astype(g.dtype)
        feeds[g.name] = arr
    return feeds


def _static_batch(graph: list[GraphInput]) -> int | None:
    sizes = {g.shape[0] for g in graph if g.shape}
    if not sizes or None in sizes or len(sizes) != 1:
        return None
    return sizes.pop()


def _rebatch(feeds: dict[str, np.ndarray], batch: int | None) -> list[tuple[dict[str, np.ndarray], int]]:
    """Split / pad a feed so every piece has the model's static batch size; (piece, real rows)."""
    n = len(next(iter(feeds.values())))
    if batch is None or n == batch:
        return [(feeds, n)]
    pieces = []
    for start in range(0, n, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        real = len(next(iter(part.values())))
        if real < batch:
            part = {k: np.concatenate([v, np.repeat(v[-1:], batch - real, axis=0)]) for k, v in part.items()}
        pieces.append((part, real))
    return pieces


# --------------------------------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------------------------------
def default_threads() -> int:
    env = os.environ.get("NBOPT_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


class OrtRunner:
    """Runs an .onnx file in onnxruntime.InferenceSession (CPU); returns the first output."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.threads = threads or default_threads()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CandidateError(f"onnxruntime cannot load this model ({type(exc).__name__}: "
                                 f"{_first_line(exc)[:300]}).") from exc
        self.graph = [GraphInput(i.name, np.dtype(ORT_TO_NUMPY.get(i.type, np.float32)),
                                 tuple(d if isinstance(d, int) else None for d in (i.shape or ())))
                      for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.static_batch = _static_batch(self.graph)
        self.max_batch = self.static_batch

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feeds = map_feeds(inputs, self.graph)
        outs = []
        for piece, real in _rebatch(feeds, self.static_batch):
            outs.append(self.session.run([self.output_name], piece)[0][:real])
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


# --------------------------------------------------------------------------------------------------
# helpers around onnxruntime.quantization
# --------------------------------------------------------------------------------------------------
@contextmanager
def _quiet():
    """Silence onnxruntime.quantization's logging / prints; keep them out of the notebook."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _ort_call(what: str, fn, *args, **kw):
    """Run an onnxruntime.quantization call; any failure becomes a CandidateError that says why."""
    try:
        with _quiet():
            return fn(*args, **kw)
    except (NboptError, CandidateError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise CandidateError(f"{what} failed on this model ({type(exc).__name__}: "
                             f"{_first_line(exc)[:300]}).") from exc


def _artifact(path: Path, notes: str, **info) -> Artifact:
    files = model_files(path)
    return Artifact(path=path, format="onnx", files=files, notes=notes, info=info)


def _quant_summary(float_path: Path, q_path: Path) -> str:
    """'quantized 16/17 MatMul, 1/1 Gemm' from the weight nodes of the float model and the output graph."""
    import onnx

    fm = onnx.load(str(float_path), load_external_data=False)
    qm = onnx.load(str(q_path), load_external_data=False)
    cands = weight_nodes_meta(fm)
    q_inits = [t.name for t in qm.graph.initializer]
    counts: dict[str, list[int]] = {}
    for name, op, idx, weight in cands:
        done = any(t.startswith(weight) and t != weight and ("quantized" in t or "_Q" in t) for t in q_inits)
        c = counts.setdefault(op, [0, 0])
        c[0] += int(done)
        c[1] += 1
    return ", ".join(f"{d}/{t} {op}" for op, (d, t) in counts.items())


def weight_nodes_meta(model) -> list[tuple[str, str, int, str]]:
    """(name, op_type, weight input index, weight name) of nodes with a constant weight."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose", "Gather"):
            idx = 0 if node.op_type == "Gather" else 1
            if len(node.input) > idx and node.input[idx] in inits:
                out.append((node.name, node.op_type, idx, node.input[idx]))
    return out


class _Reader:
    """CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)

    def __len__(self):
        return len(self.feeds)


_CT = {"int8": "QInt8", "uint8": "QUInt8"}
_CALIB = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class OnnxBackend(Backend):
    name = "onnx"

    # -- protocol -----------------------------------------------------------------------------------
    @classmethod
    def accepts(cls, model: Any) -> bool:
        if isinstance(model, (str, Path)):
            return str(model).endswith(".onnx")
        mods = [c.__module__ for c in type(model).__mro__]
        return any(m.startswith(("onnx", "torch.nn")) for m in mods)

    def prepare(self, model: Any, example: Any) -> OnnxPrepared:
        import onnx

        workdir = new_tempdir()
        if isinstance(model, (str, Path)):
            path = load_user_file(Path(model), workdir)
            source, note = "file", f"ONNX file {Path(model).name}"
        elif isinstance(model, onnx.ModelProto):
            path = workdir / "model.onnx"
            try:
                save_model(model, path)
            except Exception as exc:
                raise NboptError(f"Cannot save this onnx.ModelProto ({type(exc).__name__}: {_first_line(exc)}); "
                                 "if its weights live in external files, pass the .onnx path instead.") from exc
            source, note = "proto", "onnx.ModelProto"
        elif any(c.__module__.startswith("torch.nn") for c in type(model).__mro__):
            if example is None:
                raise NboptError("Exporting a torch model to ONNX needs example inputs: pass eval=... (or "
                                 "calib=...) data with the model's inputs.")
            ex = example.example(2 if getattr(example, "num_examples", 2) >= 2 else 1)
            path, note = export_torch(model, ex, bool(example.single_input), workdir)
            source = "torch"
        else:
            raise NboptError(f"The ONNX backend takes a torch.nn.Module, an onnx.ModelProto or a path to an "
                             f".onnx file, not a {type(model).__name__}.")
        try:
            graph = _graph_inputs(path)
        except Exception as exc:
            raise NboptError(f"Cannot read the ONNX model's inputs ({_first_line(exc)}).") from exc
        prepared = OnnxPrepared(dir=workdir, path=path, inputs=graph, source=source, note=note)
        # Check the model loads in onnxruntime and that the data's names fit, now, with one sentence.
        try:
            runner = OrtRunner(path, threads=1)
        except CandidateError as exc:
            # an old opset onnxruntime no longer implements: try the same graph upgraded
            upgraded, how = _normalize(path, workdir / "upgraded" / "model.onnx", force=True)
            try:
                runner = OrtRunner(upgraded, threads=1) if how else None
            except CandidateError:
                runner = None
            if runner is None:
                raise NboptError(f"onnxruntime cannot run this model: {exc}") from exc
            prepared.path, prepared.note = upgraded, f"{note}, {how} because onnxruntime could not load it as given"
        if example is not None:
            ex = example.example(1)
            try:
                runner(ex)
            except NboptError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise NboptError(f"onnxruntime could not run this model on the given data "
                                 f"({type(exc).__name__}: {_first_line(exc)[:300]}).") from exc
        return prepared

    def fingerprint(self, model: Any) -> str:
        if isinstance(model, (str, Path)):
            files = model_files(Path(model))
            return hash_arrays([], "onnx-file:" + ":".join(hash_file(f) for f in files))
        if type(model).__name__ == "ModelProto":
            return hash_arrays([np.frombuffer(model.SerializeToString(deterministic=True), np.uint8)], "onnx-proto")
        state = model.state_dict()
        arrays = [v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
                  for v in state.values()]
        return hash_arrays(arrays, "torch:" + repr(model) + ":" + ",".join(state))

    def baseline(self, prepared: OnnxPrepared, ctx: Context) -> Artifact:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        out = ctx.workdir / prepared.path.name
        for f in model_files(prepared.path):
            target = ctx.workdir / f.relative_to(prepared.path.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        return _artifact(out, f"fp32, {prepared.note}")

    def warm_imports(self) -> None:
        import onnxruntime  # noqa: F401  (the memory probe subtracts the runtime itself)

    def load(self, artifact: Artifact) -> OrtRunner:
        return OrtRunner(artifact.path)

    def default_recipes(self, prepared: OnnxPrepared) -> list[Recipe]:
        import onnx

        proto = onnx.load(str(prepared.path), load_external_data=False)
        ops = {m[1] for m in weight_nodes_meta(proto)}
        recipes = [Recipe("fp16"), Recipe("int8-dynamic"), Recipe("int8-static"), Recipe("mixed-precision")]
        if ops & {"MatMul", "Gemm"}:
            recipes += [Recipe("int8-weight-only"), Recipe("int4-weight-only")]
        return [self.validate(r) for r in recipes]

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        out = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
        try:
            import torch

            out["torch"] = torch.__version__
        except ImportError:
            pass
        return out

    # -- shared pieces --------------------------------------------------------------------------------
    def preprocessed(self, prepared: OnnxPrepared) -> tuple[Path, str]:
        """quant_pre_process (shape inference + graph optimization) once; the raw model if it fails."""
        if prepared._pre is None:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            out = prepared.dir / "pre" / "model.onnx"
            out.parent.mkdir(exist_ok=True)
            src, how = _normalize(prepared.path, prepared.dir / "norm" / "model.onnx")
            note, reasons = "", []
            attempts = [("", {}), (" without symbolic shape inference", {"skip_symbolic_shape": True}),
                        (" without graph optimization", {"skip_symbolic_shape": True, "skip_optimization": True})]
            big = sum(f.stat().st_size for f in model_files(prepared.path)) > 1_800_000_000
            for label, kw in attempts:
                try:
                    with _quiet():
                        quant_pre_process(str(src), str(out), save_as_external_data=big,
                                          all_tensors_to_one_file=True, **kw)
                    OrtRunner(out, threads=1)
                    note = "quant_pre_process" + label + (f" ({reasons[-1]})" if reasons else "")
                    break
                except Exception as exc:  # noqa: BLE001
                    reasons.append(f"{type(exc).__name__}: {_first_line(exc)[:120]}")
            else:
                out = src
                note = f"quantized without quant_pre_process (it failed: {reasons[0]})"
            prepared._pre = (out, f"{how}; {note}" if how else note)
        return prepared._pre

    def calib_feeds(self, prepared: OnnxPrepared, calib, limit: int | None = None,
                    batch_size: int = 16) -> list[dict[str, np.ndarray]]:
        static = _static_batch(prepared.inputs)
        feeds, seen = [], 0
        for inputs, _ in calib.batches(batch_size=static or batch_size):
            f = map_feeds(inputs, prepared.inputs)
            n = len(next(iter(f.values())))
            if limit is not None and seen + n > limit:
                f = {k: v[: limit - seen] for k, v in f.items()}
                n = limit - seen
            if n <= 0:
                break
            feeds.extend(p for p, _ in _rebatch(f, static))
            seen += n
            if limit is not None and seen >= limit:
                break
        if not feeds:
            raise NboptError("The calibration data is empty: pass a few hundred examples as calib=....")
        if static is None and len({len(next(iter(f.values()))) for f in feeds}) > 1:
            # equal batches: onnxruntime's histogram calibrators (entropy, percentile) stack them
            whole = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
            size = max(d for d in range(1, batch_size + 1) if seen % d == 0)
            feeds = [{k: v[i:i + size] for k, v in whole.items()} for i in range(0, seen, size)]
        return feeds

    def _outputs(self, path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
        runner = OrtRunner(path)
        return np.concatenate([runner.session.run([runner.output_name], f)[0] for f in feeds])

    def _reference(self, prepared: OnnxPrepared, calib) -> tuple[list, np.ndarray]:
        key = ("ref", getattr(calib, "fingerprint", id(calib)))
        if key not in prepared._cache:
            feeds = self.calib_feeds(prepared, calib, limit=SENS_EXAMPLES)
            prepared._cache[key] = (feeds, self._outputs(self.preprocessed(prepared)[0], feeds))
        return prepared._cache[key]

    def _dynamic(self, src: Path, dst: Path, per_channel=False, reduce_range=False, weight_type="int8",
                 exclude=None, only=None):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        _ort_call("onnxruntime.quantization.quantize_dynamic", quantize_dynamic, str(src), str(dst),
                  per_channel=per_channel, reduce_range=reduce_range,
                  weight_type=getattr(QuantType, _CT[weight_type]), nodes_to_exclude=_aliases(exclude),
                  nodes_to_quantize=_aliases(only), extra_options={"MatMulConstBOnly": True})

    def _static(self, prepared, src: Path, dst: Path, calib, calibration="minmax", per_channel=True,
                activation_type="uint8", reduce_range=False, op_types="weights", exclude=None, only=None):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        cache = prepared.dir / f"calib_{calibration}_{op_types}_{getattr(calib, 'fingerprint', id(calib))}.json"
        reader = None
        if not cache.exists():
            reader = _make_reader(self.calib_feeds(prepared, calib))
        kinds = ["Conv", "MatMul", "Gemm", "ConvTranspose"] if op_types == "weights" else None
        extra = {"MatMulConstBOnly": op_types == "weights"}
        if calibration == "percentile":
            extra["CalibPercentile"] = 99.99
        _ort_call("onnxruntime.quantization.quantize_static", quantize_static, str(src), str(dst), reader,
                  quant_format=QuantFormat.QDQ, op_types_to_quantize=kinds, per_channel=per_channel,
                  reduce_range=reduce_range, activation_type=getattr(QuantType, _CT[activation_type]),
                  weight_type=QuantType.QInt8, nodes_to_exclude=_aliases(exclude), nodes_to_quantize=_aliases(only),
                  calibrate_method=getattr(CalibrationMethod, _CALIB[calibration]), extra_options=extra,
                  calibration_cache_path=str(cache))

    # -- sensitivity ----------------------------------------------------------------------------------
    def sensitivity_cost(self, prepared: OnnxPrepared, calib, mode: str = "dynamic") -> tuple[bool, int]:
        """(already cached, how many nodes ``sensitivity`` quantizes one at a time: its cost is about one
        quantization and one calibration run per node)."""
        import onnx

        src, _ = self.preprocessed(prepared)
        n = len(weight_nodes(onnx.load(str(src), load_external_data=False)))
        return _sens_key(mode, calib) in prepared._cache, n

    def sensitivity(self, prepared: OnnxPrepared, calib, mode: str = "dynamic"):
        """Per-node sensitivity as a DataFrame (node, op_type, params, rel_error, cosine, max_abs_diff,
        rank, error): how far the first output moves (vs fp32, on up to 64 calibration examples) when
        only that node is quantized. rank 1 = most sensitive. Cached on ``prepared``."""
        import onnx

        if calib is None:
            raise NboptError("Sensitivity analysis needs calibration data: pass calib=....")
        if mode not in ("dynamic", "static"):
            raise NboptError(f"Sensitivity mode is {mode!r}; allowed: 'dynamic', 'static'.")
        key = _sens_key(mode, calib)
        if key in prepared._cache:
            return prepared._cache[key].copy()
        src, _ = self.preprocessed(prepared)
        feeds, ref = self._reference(prepared, calib)
        proto = onnx.load(str(src), load_external_data=False)
        nodes = weight_nodes(proto)
        if mode == "static":
            nodes = [n for n in nodes if n["op_type"] != "Gather"]
        work = prepared.dir / f"sens_{mode}"
        work.mkdir(exist_ok=True)
        if mode == "dynamic":
            def one(node, path):
                self._dynamic(src, path, only=[node])
        else:
            def one(node, path):
                self._static(prepared, src, path, calib, only=[node])
        with _quiet():
            df = sensitivity_table(nodes, one, lambda p: self._outputs(p, feeds), ref, work)
        prepared._cache[key] = df
        return df.copy()


def _sens_key(mode: str, calib) -> tuple:
    return ("sens", mode, getattr(calib, "fingerprint", id(calib)))


def _make_reader(feeds: list[dict[str, np.ndarray]]):
    """A CalibrationDataReader over a list of feed dicts."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Reader, CalibrationDataReader):
        pass

    return Reader(feeds)


# --------------------------------------------------------------------------------------------------
# recipes
# --------------------------------------------------------------------------------------------------
@OnnxBackend.recipe("fp16")
def _fp16(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, pre_note = backend.preprocessed(prepared)
    model = onnx.load(str(src))
    half = _ort_call("onnxruntime.transformers.float16.convert_float_to_float16", convert_float_to_float16,
                     model, keep_io_types=True)
    out = ctx.workdir / "model.onnx"
    save_model(half, out)
    return _artifact(out, f"fp16 weights and compute (inputs/outputs kept float32) via onnxruntime.transformers."
                          f"float16; {pre_note}")


@OnnxBackend.recipe("int8-dynamic", per_channel=Param(False, choices=(True, False)),
                    reduce_range=Param(False, choices=(True, False)),
                    weight_type=Param("int8", choices=("int8", "uint8")))
def _int8_dynamic(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    src, pre_note = backend.preprocessed(prepared)
    out = ctx.workdir / "model.onnx"
    backend._dynamic(src, out, **params)
    summary = _quant_summary(src, out)
    return _artifact(out, f"quantize_dynamic ({_fmt(params)}): {summary}; {pre_note}", quantized=summary)


@OnnxBackend.recipe("int8-static", needs_calib=True,
                    calibration=Param("minmax", choices=("minmax", "entropy", "percentile")),
                    per_channel=Param(True, choices=(True, False)),
                    activation_type=Param("uint8", choices=("uint8", "int8")),
                    reduce_range=Param(False, choices=(True, False)),
                    op_types=Param("weights", choices=("weights", "all"),
                                   help="'weights': Conv/MatMul/Gemm with constant weights only; "
                                        "'all': every op type onnxruntime can quantize (its default)"))
def _int8_static(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    src, pre_note = backend.preprocessed(prepared)
    out = ctx.workdir / "model.onnx"
    backend._static(prepared, src, out, ctx.calib, **params)
    summary = _quant_summary(src, out)
    n = ctx.calib.num_examples if hasattr(ctx.calib, "num_examples") else "?"
    return _artifact(out, f"quantize_static QDQ ({_fmt(params)}), calibrated on {n} calibration examples: "
                          f"{summary}; {pre_note}", quantized=summary)


_NBITS_PARAMS = dict(
    symmetric=Param(False, choices=(True, False)),
    accuracy_level=Param(0, choices=(0, 1, 2, 3, 4), help="MatMulNBits compute precision: 0 unset, 4 int8 compute"))


@OnnxBackend.recipe("int4-weight-only", block_size=Param(32, choices=(16, 32, 64, 128, 256)), **_NBITS_PARAMS)
def _int4(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    return _weight_only(backend, prepared, params, ctx, bits=4)


@OnnxBackend.recipe("int8-weight-only", block_size=Param(128, choices=(16, 32, 64, 128, 256)), **_NBITS_PARAMS)
def _int8_weight_only(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    # Weights int8 in blocks, activations left float: no activation-quantization error, which is what
    # costs transformer encoders their fidelity under quantize_dynamic.
    return _weight_only(backend, prepared, params, ctx, bits=8)


def _weight_only(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context, bits: int) -> Artifact:
    """Block-wise weight-only quantization of MatMul weights with MatMulNBits (Gemm rewritten first)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, pre_note = backend.preprocessed(prepared)
    model = onnx.load(str(src))
    n_gemm = _gemm_to_matmul(model)
    before = sum(1 for n in model.graph.node if n.op_type == "MatMul")

    def run():
        q = MatMulNBitsQuantizer(model, bits=bits, block_size=params["block_size"],
                                 is_symmetric=params["symmetric"], accuracy_level=params["accuracy_level"] or None)
        q.process()
        return q.model.model

    qmodel = _ort_call("onnxruntime.quantization MatMulNBitsQuantizer", run)
    done = sum(1 for n in qmodel.graph.node if n.op_type == "MatMulNBits")
    if done == 0:
        raise CandidateError(f"int{bits}-weight-only quantizes MatMul weights only (MatMulNBits), and no MatMul "
                             "with a constant 2-D weight in this model could be quantized.")
    out = ctx.workdir / "model.onnx"
    save_model(qmodel, out)
    gemm = f" ({n_gemm} Gemm rewritten as MatMul+Add first)" if n_gemm else ""
    return _artifact(out, f"int{bits} weight-only MatMulNBits ({_fmt(params)}): {done}/{before} MatMul{gemm}, "
                          f"activations and other ops float; {pre_note}", quantized=f"{done}/{before} MatMul")


@OnnxBackend.recipe("mixed-precision", needs_calib=True,
                    mode=Param("dynamic", choices=("dynamic", "static")),
                    keep_float=Param("auto", help="'auto' or how many of the most sensitive nodes stay float"),
                    per_channel=Param("auto", choices=("auto", True, False)),
                    reduce_range=Param("auto", choices=("auto", True, False)),
                    max_size_growth=Param(0.1, low=0.0, high=10.0,
                                          help="'auto' keeps float weights up to this fraction of the "
                                               "fully quantized model's size"))
def _mixed(backend: OnnxBackend, prepared: OnnxPrepared, params: dict, ctx: Context) -> Artifact:
    keep = params["keep_float"]
    if keep != "auto" and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise NboptError(f"Recipe 'mixed-precision' parameter 'keep_float' is {keep!r}; give 'auto' or a "
                         "whole number of nodes (0 or more).")
    mode = params["mode"]
    src, pre_note = backend.preprocessed(prepared)
    feeds, ref = backend._reference(prepared, ctx.calib)
    sens = backend.sensitivity(prepared, ctx.calib, mode=mode)
    ranked = sens.dropna(subset=["rel_error"])
    work = ctx.workdir / "search"
    work.mkdir(parents=True, exist_ok=True)
    trials: list[dict] = []

    def build(cfg: dict, k: int, path: Path) -> dict:
        exclude = list(ranked["node"][:k])
        if mode == "dynamic":
            backend._dynamic(src, path, per_channel=cfg["per_channel"], reduce_range=cfg["reduce_range"],
                             exclude=exclude)
        else:
            backend._static(prepared, src, path, ctx.calib, per_channel=cfg["per_channel"],
                            reduce_range=cfg["reduce_range"], exclude=exclude)
        fid = fidelity(ref, backend._outputs(path, feeds))
        row = {**cfg, "k": k, **fid, "size": sum(f.stat().st_size for f in model_files(path)), "path": path}
        trials.append(row)
        return row

    pcs = (False, True) if params["per_channel"] == "auto" else (params["per_channel"],)
    rrs = (False, True) if params["reduce_range"] == "auto" else (params["reduce_range"],)
    i = 0
    # 1) the quantizer's own options, everything quantized
    full = []
    for pc in pcs:
        for rr in rrs:
            full.append(build({"per_channel": pc, "reduce_range": rr}, 0, work / f"t{i}.onnx"))
            i += 1
    best_cfg = min(full, key=lambda r: r["rel_error"])
    cfg = {"per_channel": best_cfg["per_channel"], "reduce_range": best_cfg["reduce_range"]}
    # 2) keep the most sensitive nodes in float, within the size budget
    if keep == "auto":
        budget = params["max_size_growth"] * best_cfg["size"] / 3.0  # a float weight costs ~3 bytes more
        for k in keep_float_steps(ranked, budget):
            build(cfg, k, work / f"t{i}.onnx")
            i += 1
        pool = [t for t in trials if t["per_channel"] == cfg["per_channel"]
                and t["reduce_range"] == cfg["reduce_range"]]
        lowest = min(t["rel_error"] for t in pool)
        chosen = min((t for t in pool if t["rel_error"] <= lowest * 1.05 + 1e-9), key=lambda t: (t["size"], t["k"]))
    else:
        chosen = build(cfg, min(keep, len(ranked)), work / f"t{i}.onnx")
    out = ctx.workdir / "model.onnx"
    for f in model_files(chosen["path"]):
        shutil.move(str(f), str(ctx.workdir / f.name.replace(chosen["path"].name, out.name, 1)))
    _fix_external_location(out, chosen["path"].name)
    shutil.rmtree(work, ignore_errors=True)
    kept = list(ranked["node"][: chosen["k"]])
    ref_row = next((t for t in trials if t["k"] == 0 and not t["per_channel"] and not t["reduce_range"]), None)
    vs = (f" vs {ref_row['rel_error']:.2%} with onnxruntime's defaults"
          if ref_row is not None and ref_row is not chosen else "")
    kept_txt = f"kept {len(kept)} most sensitive node(s) in float ({', '.join(kept[:4])}" \
               f"{', ...' if len(kept) > 4 else ''})" if kept else "kept no node in float"
    summary = _quant_summary(src, out)
    notes = (f"mixed precision ({mode}, {'searched' if keep == 'auto' else 'fixed'}): chose per_channel="
             f"{chosen['per_channel']}, reduce_range={chosen['reduce_range']}, {kept_txt}; relative output "
             f"error on calibration data {chosen['rel_error']:.2%}{vs}; {summary}; {len(trials)} trials; {pre_note}")
    return _artifact(out, notes, quantized=summary, kept_float=len(kept), calib_rel_error=chosen["rel_error"])


# --------------------------------------------------------------------------------------------------
def _aliases(names: list[str] | None) -> list[str] | None:
    """Node names as the quantizer sees them: it rewrites a Gemm 'x' as MatMul 'x_MatMul' + Add first."""
    if not names:
        return None
    return [a for n in names for a in (n, f"{n}_MatMul")]


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())


def _normalize(path: Path, out: Path, opset: int = 13, force: bool = False) -> tuple[Path, str]:
    """Old-style models: drop initializers from the graph inputs (IR < 4) and upgrade opsets below
    ``opset`` with onnx.version_converter, which onnxruntime.quantization needs (QDQ per-channel: 13).
    Returns (path, what was done); (path, "") when nothing needed doing or the upgrade failed."""
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(path))
    done = []
    old = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if old < opset:
        try:
            with _quiet():
                proto = version_converter.convert_version(proto, opset)
            done.append(f"upgraded opset {old} to {opset} with onnx.version_converter")
        except Exception as exc:  # noqa: BLE001
            done.append(f"kept opset {old} (onnx.version_converter failed: {_first_line(exc)[:80]})")
    inits = {t.name for t in proto.graph.initializer}
    real = [i for i in proto.graph.input if i.name not in inits]
    if len(real) != len(proto.graph.input):
        del proto.graph.input[:]
        proto.graph.input.extend(real)
        done.append("moved initializers out of the graph inputs")
    if proto.ir_version < 7:
        proto.ir_version = 7
    if force and not done and len(model_files(path)) > 1:
        done.append("re-saved with small tensors inline (onnxruntime cannot infer shapes from external data)")
    if not done:
        return path, ""
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(proto, out)
    return out, ", ".join(done)


def _fix_external_location(path: Path, old_name: str) -> None:
    """After renaming a model with external data, point its tensors at the renamed data file."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    changed = False
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            for entry in t.external_data:
                if entry.key == "location" and entry.value.startswith(old_name):
                    entry.value = path.name + entry.value[len(old_name):]
                    changed = True
    if changed:
        onnx.save_model(proto, str(path))


def _gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, const B, C) with alpha=beta=1, transA=0 as MatMul(A, B') + Add(C), in place,
    so that MatMulNBits can take Linear layers exported as Gemm. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        wname = node.input[1] + "_nbopt_kn"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
        name = node.name or f"gemm_{count}"
        has_c = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_nbopt_mm" if has_c else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=name + "_matmul"))
        if has_c:
            new_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=name + "_add"))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return count
