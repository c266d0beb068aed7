"""ONNX backend: quantize with onnxruntime.quantization, run every candidate in onnxruntime.

Takes a torch.nn.Module (exported here: dynamo exporter, TorchScript as fallback), a path to an .onnx
file (external data included) or an ``onnx.ModelProto``. Recipes: fp16, int8-dynamic, int8-static
(QDQ; minmax / entropy / percentile calibration), int4-weight-only (MatMulNBits) and mixed-precision
(per-node sensitivity on the calibration data, most sensitive nodes kept in float).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CandidateError, NboptError, one_line
from ...quiet import quiet
from ...recipes import Recipe
from ..base import Artifact, Backend, Context
from ..common import cache_off, hash_files, versions
from .convert import export_torch, load_user_file, model_files, new_tempdir, save_user_proto
from .graph import normalize, weight_nodes_meta
from .preprocess import decide, load_decision, save_decision
from .quant import CALIBRATION_METHODS, QUANT_TYPES, make_reader, node_aliases, ort_call
from .runner import GraphInput, OrtRunner, graph_inputs, map_feeds, rebatch, static_batch
from .sensitivity import sensitivity_table, weight_nodes

SENS_EXAMPLES = 64  # calibration examples used to measure sensitivity and to steer the search


@dataclass
class OnnxPrepared:
    dir: Path  # private folder holding the fp32 model and cached intermediates
    path: Path  # the fp32 model as given / exported
    inputs: list[GraphInput]
    source: str  # "torch", "file", "proto"
    note: str  # exporter / source note, repeated on the baseline row
    _pre: tuple[Path, str] | None = None  # quant_pre_process output and its note
    _raw: Path | None = None  # the graph before quant_pre_process (normalized), for quant_source
    _cache: dict = field(default_factory=dict)  # sensitivity tables, reference outputs, calib ranges
    # the torch module the graph was exported from (a copy, eval mode): training recipes (qat, distill,
    # resolution) train it in torch and export the result; None for an .onnx file or ModelProto
    module: Any = field(default=None, repr=False)
    single_input: bool = True

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]


def onnx_artifact(path: Path, notes: str, **info) -> Artifact:
    files = model_files(path)
    return Artifact(path=path, format="onnx", files=files, notes=notes, info=info)


class OnnxBackend(Backend):
    name = "onnx"
    supports_sensitivity = True

    # -- protocol -----------------------------------------------------------------------------------
    @classmethod
    def accepts(cls, model: Any) -> bool:
        if isinstance(model, (str, Path)):
            return str(model).endswith(".onnx")
        mods = [c.__module__ for c in type(model).__mro__]
        return any(m.startswith(("onnx", "torch.nn")) for m in mods)

    def prepare(self, model: Any, example: Any) -> OnnxPrepared:
        workdir = new_tempdir()
        try:
            prepared = self._prepare(model, example, workdir)
            # quant_pre_process once, here: worker processes then share its output read-only
            self.preprocessed(prepared)
            return prepared
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _prepare(self, model: Any, example: Any, workdir: Path) -> OnnxPrepared:
        """``prepare`` in ``workdir``. The user's objects are left as they were: a file is only read (and only
        inside its folder), a ModelProto is saved as is, a torch module is exported from a copy in eval mode."""
        import onnx

        if isinstance(model, (str, Path)):
            path = load_user_file(Path(model), workdir)
            source, note = "file", f"ONNX file {Path(model).name}"
        elif isinstance(model, onnx.ModelProto):
            path = workdir / "model.onnx"
            try:
                save_user_proto(model, path)
            except NboptError:
                raise
            except Exception as exc:
                raise NboptError(f"Cannot save this onnx.ModelProto ({one_line(exc)}); "
                                 "if its weights live in external files, pass the .onnx path instead.") from exc
            source, note = "proto", "onnx.ModelProto"
        elif any(c.__module__.startswith("torch.nn") for c in type(model).__mro__):
            if example is None:
                raise NboptError("Exporting a torch model to ONNX needs example inputs: pass eval=... (or "
                                 "calib=...) data with the model's inputs.")
            ex = example.example(2 if getattr(example, "num_examples", 2) >= 2 else 1)
            module = _torch_copy(model)  # nbopt's own copy: the cache is turned off there, never on the user's
            cache_note = cache_off(module) if module is not None else ""
            path, note = export_torch(module if module is not None else model, ex, bool(example.single_input),
                                      workdir)
            note = ", ".join(filter(None, [note, cache_note]))
            source = "torch"
        else:
            raise NboptError(f"The ONNX backend takes a torch.nn.Module, an onnx.ModelProto or a path to an "
                             f".onnx file, not a {type(model).__name__}.")
        try:
            graph = graph_inputs(path)
        except Exception as exc:
            raise NboptError(f"Cannot read the ONNX model's inputs ({one_line(exc, with_type=False)}).") from exc
        prepared = OnnxPrepared(dir=workdir, path=path, inputs=graph, source=source, note=note,
                                module=module if source == "torch" else None,
                                single_input=bool(getattr(example, "single_input", True)))
        # Check the model loads in onnxruntime and that the data's names fit, now, with one sentence.
        try:
            runner = OrtRunner(path, threads=1)
        except CandidateError as exc:
            # an old opset onnxruntime no longer implements: try the same graph upgraded
            upgraded, how = normalize(path, workdir / "upgraded" / "model.onnx", force=True)
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
                                 f"({one_line(exc, 300)}).") from exc
        return prepared

    def fingerprint(self, prepared: OnnxPrepared) -> str:
        return hash_files(model_files(prepared.path), "onnx")

    def baseline(self, prepared: OnnxPrepared, ctx: Context) -> Artifact:
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        out = ctx.workdir / prepared.path.name
        for f in model_files(prepared.path):
            target = ctx.workdir / f.relative_to(prepared.path.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        return onnx_artifact(out, f"fp32, {prepared.note}")

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
        if prepared.module is not None:  # training recipes train the torch source (skipped without train=)
            recipes += [Recipe(name) for name in ("qat", "distill") if name in self.handlers]
        return [self.validate(r) for r in recipes]

    def size_breakdown(self, artifact: Artifact) -> dict:
        from .reports import size_breakdown

        return size_breakdown(artifact)

    def versions(self) -> dict[str, str]:
        return versions("onnx", "onnxruntime", "onnxscript", "torch")

    # -- shared pieces --------------------------------------------------------------------------------
    def preprocessed(self, prepared: OnnxPrepared) -> tuple[Path, str]:
        """quant_pre_process (shape inference + graph optimization) once; the raw model if it fails."""
        if prepared._pre is None:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            out = prepared.dir / "pre" / "model.onnx"
            out.parent.mkdir(exist_ok=True)
            src, how = normalize(prepared.path, prepared.dir / "norm" / "model.onnx")
            note, reasons = "", []
            attempts = [("", {}), (" without symbolic shape inference", {"skip_symbolic_shape": True}),
                        (" without graph optimization", {"skip_symbolic_shape": True, "skip_optimization": True})]
            big = sum(f.stat().st_size for f in model_files(prepared.path)) > 1_800_000_000
            for label, kw in attempts:
                try:
                    with quiet():
                        quant_pre_process(str(src), str(out), save_as_external_data=big,
                                          all_tensors_to_one_file=True, **kw)
                    OrtRunner(out, threads=1)
                    note = "quant_pre_process" + label + (f" ({reasons[-1]})" if reasons else "")
                    break
                except Exception as exc:  # noqa: BLE001
                    reasons.append(f"{one_line(exc, 120)}")
            else:
                out = src
                note = f"quantized without quant_pre_process (it failed: {reasons[0]})"
            prepared._pre = (out, f"{how}; {note}" if how else note)
            prepared._raw = src
        return prepared._pre

    def quant_source(self, prepared: OnnxPrepared, calib) -> tuple[Path, str]:
        """The graph every recipe quantizes, and its note: quant_pre_process's output where it helps this
        model (``preprocess.decide``, once per model and calibration set, shared by worker processes
        through a file), else the model as exported."""
        pre, note = self.preprocessed(prepared)
        raw = prepared._raw
        if raw is None or pre == raw:
            return pre, note
        path = prepared.dir / f"pre_decision_{getattr(calib, 'fingerprint', 'nocalib')}.json"
        decision = load_decision(path)
        if decision is None:
            feeds = self.calib_feeds(prepared, calib, limit=SENS_EXAMPLES) if calib is not None else None
            with quiet():
                cache = (prepared.dir, f"calib{getattr(calib, 'fingerprint', os.getpid())}")
                decision = decide(raw, pre, prepared.dir / f"pre_check_{os.getpid()}",
                                  lambda s, d: self.quantize_dynamic(s, d, per_channel=True, cache=prepared.dir),
                                  (lambda p: self.outputs(p, feeds, cache=cache)) if feeds else None)
            save_decision(path, *decision)
        keep, why = decision
        return (pre, f"{note} ({why})") if keep else (raw, why)

    def calib_feeds(self, prepared: OnnxPrepared, calib, limit: int | None = None,
                    batch_size: int = 16) -> list[dict[str, np.ndarray]]:
        static = static_batch(prepared.inputs)
        feeds, seen = [], 0
        for inputs, _ in calib.batches(batch_size=static or batch_size):
            f = map_feeds(inputs, prepared.inputs)
            n = len(next(iter(f.values())))
            if limit is not None and seen + n > limit:
                f = {k: v[: limit - seen] for k, v in f.items()}
                n = limit - seen
            if n <= 0:
                break
            feeds.extend(p for p, _ in rebatch(f, static))
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

    def outputs(self, path: Path, feeds: list[dict[str, np.ndarray]], cache: tuple[Path, str] | None = None
                ) -> np.ndarray:
        """The model's first output on ``feeds``. ``cache`` = (folder, name of the feeds): kept on disk by the
        model file's content, so the same int8 model built twice (the pre-processing check, int8-dynamic,
        mixed-precision's everything-int8 trial) is run once."""
        hit = _output_cache(path, cache)
        if hit is not None and hit.exists():
            return np.load(hit)
        runner = OrtRunner(path)
        out = np.concatenate([runner.session.run([runner.output_name], f)[0] for f in feeds])
        if hit is not None:
            _save_atomic(hit, lambda f: np.save(f, out))
        return out

    def reference_outputs(self, prepared: OnnxPrepared, calib) -> tuple[list, np.ndarray]:
        key = ("ref", getattr(calib, "fingerprint", id(calib)))
        if key not in prepared._cache:
            feeds = self.calib_feeds(prepared, calib, limit=SENS_EXAMPLES)
            prepared._cache[key] = (feeds, self.outputs(self.quant_source(prepared, calib)[0], feeds))
        return prepared._cache[key]

    def quantize_dynamic(self, src: Path, dst: Path, per_channel=False, reduce_range=False, weight_type="int8",
                 exclude=None, only=None, cache: Path | None = None):
        """onnxruntime's quantize_dynamic. With ``cache`` (a folder of the prepared model), a build with the
        same source and options is copied from there: the pre-processing check, ``int8-dynamic`` and
        mixed-precision's trials ask for the same one (per-channel quantization is a Python loop per
        channel in onnxruntime: about a second on MiniLM)."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        opts = (per_channel, reduce_range, weight_type, sorted(exclude or []), sorted(only or []))
        hit = _build_cache(cache, src, opts)
        if hit is not None and hit.exists():
            shutil.copyfile(hit, dst)
            return
        with private_source(src, dst.parent) as src:
            ort_call("onnxruntime.quantization.quantize_dynamic", quantize_dynamic, str(src), str(dst),
                     per_channel=per_channel, reduce_range=reduce_range,
                     weight_type=getattr(QuantType, QUANT_TYPES[weight_type]),
                     nodes_to_exclude=node_aliases(exclude), nodes_to_quantize=node_aliases(only),
                     extra_options={"MatMulConstBOnly": True})
        if hit is not None and model_files(dst) == [dst]:  # one file: models with external data are not kept
            _save_atomic(hit, lambda f: f.write(dst.read_bytes()))

    def quantize_static(self, prepared, src: Path, dst: Path, calib, calibration="minmax", per_channel=True,
                activations="uint8", reduce_range=False, op_types="weights", exclude=None, only=None):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        # one cache per process: onnxruntime writes it in place, and worker processes share prepared.dir
        cache = prepared.dir / (f"calib_{calibration}_{op_types}_{getattr(calib, 'fingerprint', id(calib))}"
                                f"_{os.getpid()}.json")
        reader = None
        if not cache.exists():
            reader = make_reader(self.calib_feeds(prepared, calib))
        # Gather: embedding tables, a third of a small transformer's bytes (QDQ keeps them int8 on disk)
        kinds = ["Conv", "MatMul", "Gemm", "ConvTranspose", "Gather"] if op_types == "weights" else None
        extra = {"MatMulConstBOnly": op_types == "weights"}
        if calibration == "percentile":
            extra["CalibPercentile"] = 99.99
        with private_source(src, dst.parent) as src:
            ort_call("onnxruntime.quantization.quantize_static", quantize_static, str(src), str(dst), reader,
                     quant_format=QuantFormat.QDQ, op_types_to_quantize=kinds, per_channel=per_channel,
                     reduce_range=reduce_range, activation_type=getattr(QuantType, QUANT_TYPES[activations]),
                     weight_type=QuantType.QInt8, nodes_to_exclude=node_aliases(exclude),
                     nodes_to_quantize=node_aliases(only), extra_options=extra, calibration_cache_path=str(cache),
                     calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration]))

    # -- sensitivity ----------------------------------------------------------------------------------
    def sensitivity_cost(self, prepared: OnnxPrepared, calib, mode: str = "dynamic") -> tuple[bool, int]:
        """(already measured, how many nodes ``sensitivity`` ranks: one float pass over calibration data,
        then milliseconds per node)."""
        import onnx

        src, _ = self.preprocessed(prepared)
        n = len(weight_nodes(onnx.load(str(src), load_external_data=False)))
        return self._cached_sensitivity(prepared, calib, mode) is not None, n

    def sensitivity(self, prepared: OnnxPrepared, calib, mode: str = "dynamic"):
        """Per-node sensitivity as a DataFrame (node, op_type, params, rel_error, cosine, max_abs_diff,
        rank, error): how far each node's own output moves (vs fp32, on up to 32 calibration examples)
        when only it is quantized to int8 (``sensitivity.py``). rank 1 = most sensitive. Cached on
        ``prepared`` and in its folder, which the worker processes of a sweep share."""
        import onnx

        if calib is None:
            raise NboptError("Sensitivity analysis needs calibration data: pass calib=....")
        if mode not in ("dynamic", "static"):
            raise NboptError(f"Sensitivity mode is {mode!r}; allowed: 'dynamic', 'static'.")
        df = self._cached_sensitivity(prepared, calib, mode)
        if df is None:
            src, _ = self.quant_source(prepared, calib)
            feeds, _ = self.reference_outputs(prepared, calib)
            with quiet():
                df = sensitivity_table(onnx.load(str(src)), feeds, mode)
            prepared._cache[_sens_key(mode, calib)] = df
            _write_atomic(_sens_file(prepared, mode, calib), df.to_json(orient="records"))
        return df.copy()

    @staticmethod
    def _cached_sensitivity(prepared: OnnxPrepared, calib, mode: str):
        import pandas as pd

        key = _sens_key(mode, calib)
        if key not in prepared._cache:
            path = _sens_file(prepared, mode, calib)
            if not path.exists():
                return None
            prepared._cache[key] = pd.read_json(io.StringIO(path.read_text()), orient="records")
        return prepared._cache[key]


def _sens_key(mode: str, calib) -> tuple:
    return ("sens", mode, getattr(calib, "fingerprint", id(calib)))


def _sens_file(prepared: OnnxPrepared, mode: str, calib) -> Path:
    return prepared.dir / f"sensitivity_{mode}_{getattr(calib, 'fingerprint', os.getpid())}.json"


def _build_cache(folder: Path | None, src: Path, opts: tuple) -> Path | None:
    """Where a quantizer build of ``src`` with ``opts`` is kept in ``folder`` (None: no cache)."""
    if folder is None:
        return None
    st = src.stat()
    key = hashlib.sha1(repr((str(src.resolve()), st.st_mtime_ns, st.st_size, opts)).encode()).hexdigest()[:20]
    return folder / "builds" / f"{key}.onnx"


def _output_cache(path: Path, cache: tuple[Path, str] | None) -> Path | None:
    """Where a single-file model's outputs on the named feeds are kept (None: no cache)."""
    if cache is None or model_files(path) != [path]:
        return None
    folder, feeds_name = cache
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:20]  # ~30 ms for MiniLM's 23 MB
    return folder / "outputs" / f"{digest}_{feeds_name}.npy"


def _save_atomic(path: Path, write) -> None:
    """``write(file)`` beside ``path``, then rename: concurrent workers see no file or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _write_atomic(path: Path, text: str) -> None:
    """Write beside, then rename: a worker reading at the same time sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def private_source(src: Path, folder: Path):
    """The quantizer's input as links in a folder of this build: onnxruntime writes ``<src>-inferred.onnx``
    beside its input and deletes it after, and worker processes building at the same time share ``src``."""
    own = folder / f".src-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    own.mkdir(parents=True)
    try:
        for f in model_files(src):
            target = own / f.relative_to(src.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                if f != src:  # onnx refuses external data with several hard links ("hardlink attack")
                    raise OSError
                os.link(f, target)  # same filesystem (the store): instant, no copy
            except OSError:
                shutil.copyfile(f, target)
        yield own / src.name
    finally:
        shutil.rmtree(own, ignore_errors=True)


def _torch_copy(model: Any) -> Any:
    """A CPU eval-mode copy of the user's torch module, for the training recipes (None if it cannot be copied)."""
    try:
        return copy.deepcopy(model).cpu().eval()
    except Exception:  # noqa: BLE001 - training recipes then fail with their own sentence
        return None
