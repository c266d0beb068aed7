"""Torch backend: what a candidate holds, counted from the module or graph (shown as ``quantized``).

Every recipe counts what it really quantized, so a row never calls a network int8 while its
convolutions stayed fp32. ``size_breakdown(artifact)`` says where the bytes of a ``.pte`` / ``.pt2`` go, read
from the file alone.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from ...quiet import quiet
from .runner import import_torch

LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def layer_counts(model) -> Counter:
    """How many Linear / ConvNd modules the model has, by type name."""
    torch = import_torch()
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return Counter(type(m).__name__ if type(m).__name__ in LAYER_TYPES else layer_type(m, kinds)
                   for m in model.modules() if isinstance(m, kinds))


def layer_type(module, kinds) -> str:
    for k in kinds:
        if isinstance(module, k):
            return k.__name__
    return type(module).__name__


def describe(quantized: Counter, total: Counter, dtype: str) -> str:
    """'2/2 Linear (int8), 0/2 Conv2d (fp32)'."""
    parts = []
    for kind in LAYER_TYPES:
        if total.get(kind):
            q = quantized.get(kind, 0)
            label = dtype if q == total[kind] else (f"{dtype}, rest fp32" if q else "fp32")
            parts.append(f"{q}/{total[kind]} {kind} ({label})")
    return ", ".join(parts) or "no Linear or Conv layers"



def pt2e_counts(graph_module) -> Counter:
    """Conv / linear nodes whose weight comes out of a dequantize node (i.e. stored as int8)."""
    kinds = {"conv1d": "Conv1d", "conv2d": "Conv2d", "conv3d": "Conv3d", "linear": "Linear",
             "convolution": "Conv2d"}
    found = Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
        if op in kinds and len(node.args) > 1:
            w = node.args[1]
            if hasattr(w, "target") and "dequantize" in str(w.target):
                found[kinds[op]] += 1
    return found


# -- where the bytes go --------------------------------------------------------------------------------
# Read from the artifact file alone: the .pte with ExecuTorch's own flatbuffer tooling (program header,
# segments) and each XNNPACK blob's graph with the delegate's schema (flatc, shipped with ExecuTorch);
# the .pt2 with torch.export.load plus its zip directory.

# element sizes of ExecuTorch ScalarType names (executorch.exir.scalar_type)
_ET_SIZES = {"BYTE": 1, "CHAR": 1, "SHORT": 2, "INT": 4, "LONG": 8, "HALF": 2, "FLOAT": 4, "DOUBLE": 8,
             "BOOL": 1, "QINT8": 1, "QUINT8": 1, "QINT32": 4, "BFLOAT16": 2, "QUINT4X2": 0.5, "QUINT2X4": 0.25,
             "BITS16": 2, "UINT16": 2, "UINT32": 4, "UINT64": 8}
_ET_NAMES = {"BYTE": "uint8", "CHAR": "int8", "SHORT": "int16", "INT": "int32", "LONG": "int64", "HALF": "fp16",
             "FLOAT": "fp32", "DOUBLE": "fp64", "BOOL": "bool", "QINT8": "int8", "QUINT8": "uint8",
             "QINT32": "int32", "BFLOAT16": "bf16", "QUINT4X2": "int4", "QUINT2X4": "int2"}
# XNNPACK datatypes (backends/xnnpack/serialization/schema.fbs) as nbopt names
_XNN_NAMES = {"fp32": "fp32", "pfp32": "fp32", "fp16": "fp16", "bf16": "bf16", "qint8": "int8",
              "quint8": "uint8", "qcint8": "int8", "qdint8": "int8", "qpint8": "int8", "qint32": "int32",
              "qcint32": "int32", "int32": "int32", "qcint4": "int4", "qbint4": "int4"}


def size_breakdown(artifact) -> dict:
    """Bytes of a .pte / .pt2 artifact by tensor dtype, its largest tensors and its file segments."""
    from ...speed import SizeTally

    path = Path(artifact.path)
    tally = SizeTally(int(artifact.size_bytes))
    if artifact.format == "pt2":
        _pt2_breakdown(path, tally)
        return tally.result("program/other")
    try:
        _pte_breakdown(path, tally)
    except Exception as exc:  # noqa: BLE001 - a file this reader does not understand: say so, keep the total
        tally = SizeTally(int(artifact.size_bytes))
        tally.note(f"the .pte could not be read with ExecuTorch's serializer ({type(exc).__name__}: "
                   f"{str(exc)[:120]}); only the total is known")
    return tally.result("program/other")


def _pte_breakdown(path: Path, tally) -> None:
    with quiet():
        from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program
        from executorch.exir._serialize._program import _get_extended_header
        from executorch.exir.schema import DataLocation

    with open(path, "rb") as f:
        head = f.read(64)
        header = _get_extended_header(head)
        program_size = header.program_size if header else path.stat().st_size
        base = header.segment_base_offset if header else 0
        f.seek(0)
        program = _flatbuffer_to_program(f.read(program_size))

        def segment(index: int) -> bytes:
            s = program.segments[index]
            f.seek(base + s.offset)
            return f.read(s.size)

        named_sizes = {e.key: program.segments[e.segment_index].size for e in program.named_data}
        for index in {e.segment_index for e in program.named_data}:
            tally.segment("delegate weights (named data)", program.segments[index].size)
        seen_keys: set[str] = set()
        for plan in program.execution_plan:
            for d, delegate in enumerate(plan.delegates):
                label = "XNNPACK" if "xnnpack" in delegate.id.lower() else delegate.id
                ref = delegate.processed
                if ref.location == DataLocation.SEGMENT:
                    blob = segment(ref.index)
                else:
                    blob = bytes(program.backend_delegate_data[ref.index].data)
                tally.segment(f"delegate blobs ({label})", len(blob))
                prefix = f"{label}[{d}] " if len(plan.delegates) > 1 else f"{label} "
                if label == "XNNPACK":
                    _xnnpack_constants(blob, prefix, named_sizes, seen_keys, tally)
                else:
                    tally.note(f"delegate {delegate.id}: blob counted as a segment, its tensors are not read")
        for key, size in named_sizes.items():
            if key not in seen_keys:
                tally.tensor(f"named data {key[:12]}", "unknown", [], size)
                seen_keys.add(key)
        cs = program.constant_segment
        if cs is not None and len(cs.offsets) > 1:
            tally.segment("constant segment", program.segments[cs.segment_index].size)
        else:
            tally.segment("constant segment", 0)
        inline = sum(len(b.storage) for b in program.constant_buffer)
        if inline:
            tally.segment("constant buffer (inline)", inline)
        for m in program.mutable_data_segments or []:
            tally.segment("mutable data", program.segments[m.segment_index].size)

    # constants of the program itself (ops outside the delegate: portable kernels)
    counted: set[int] = set()
    outside = 0
    for plan in program.execution_plan:
        readers = _kernel_readers(plan)
        for v, value in enumerate(plan.values):
            t = value.val
            if type(t).__name__ != "Tensor" or not t.data_buffer_idx or t.allocation_info is not None:
                continue
            if t.data_buffer_idx in counted:
                continue
            counted.add(t.data_buffer_idx)
            kind = getattr(t.scalar_type, "name", str(t.scalar_type)).upper()
            numel = math.prod(t.sizes) if t.sizes else 1
            info = t.extra_tensor_info
            name = (info.fully_qualified_name if info is not None and info.fully_qualified_name
                    else readers.get(v, f"program constant #{t.data_buffer_idx}"))
            nbytes = math.ceil(numel * _ET_SIZES.get(kind, 1))
            tally.tensor(name, _ET_NAMES.get(kind, kind.lower()), list(t.sizes), nbytes)
            outside += 1
    if outside:
        tally.note(f"{outside} constant tensors live outside the delegate, in the program's constant segment "
                   "(used by ops on ExecuTorch's portable kernels)")


def _kernel_readers(plan) -> dict[int, str]:
    """Value index -> 'mm #1 arg 1': the first portable-kernel call that reads the value."""
    readers: dict[int, str] = {}
    counts: dict[str, int] = {}
    for chain in plan.chains:
        for instr in chain.instructions:
            call = instr.instr_args
            if type(call).__name__ != "KernelCall" or call.op_index >= len(plan.operators):
                continue
            op = plan.operators[call.op_index].name.split("::")[-1]
            counts[op] = counts.get(op, 0) + 1
            for j, arg in enumerate(call.args):
                readers.setdefault(arg, f"{op} #{counts[op]} arg {j}")
    return readers


def _xnnpack_constants(blob: bytes, prefix: str, named_sizes: dict, seen: set, tally) -> None:
    """Tensors of one XNNPACK blob: the graph (XNNGraph flatbuffer) says each constant's datatype, shape and
    where its bytes are (the blob's own constant data, or a named-data segment of the .pte)."""
    graph = _xnnpack_graph(blob)
    if graph is None:
        tally.note("an XNNPACK blob could not be decoded; its bytes count as a segment only")
        return
    values = graph.get("xvalues") or []
    consts = graph.get("constant_data") or []
    users = _xnnpack_users(graph.get("xnodes") or [])
    fp16_compute = False
    fp32_consts: list[tuple[str, int]] = []
    for v in values:
        kind = v.get("xvalue_union_type", "")
        body = v.get("xvalue_union") or {}
        tv = body.get("tensor_value", body) if kind == "XNNQuantizedTensorValue" else body
        dtype = _XNN_NAMES.get(str(tv.get("datatype", "")).replace("xnn_datatype_", ""), "other")
        idx = int(tv.get("constant_buffer_idx") or 0)
        vid = int(tv.get("id_out") or 0)
        if not idx:
            fp16_compute |= dtype == "fp16"
            continue
        name = prefix + users.get(vid, f"value {vid}")
        nbytes = _const_bytes(consts, idx, named_sizes, seen)
        if nbytes is None:
            continue
        tally.tensor(name, dtype, tv.get("dims") or [], nbytes)
        if dtype == "fp32":
            fp32_consts.append((name, nbytes))
        qp = (body.get("quant_params") or {}) if kind == "XNNQuantizedTensorValue" else {}
        sidx = int(qp.get("scale_buffer_idx") or 0) if isinstance(qp, dict) else 0
        if sidx:
            sbytes = _const_bytes(consts, sidx, named_sizes, seen)
            if sbytes:
                tally.tensor(name + " scales", "scales", [int(qp.get("num_scales") or 0)], sbytes)
    if fp16_compute and fp32_consts:
        total = sum(b for _, b in fp32_consts)
        ops = sorted({n.removeprefix(prefix).split(" #")[0] for n, _ in fp32_consts})
        why = "XNNPACK converts them to fp16 when it packs the weights at load"
        if all("Conv" in op for op in ops):
            why = ("ExecuTorch's XNNPACK serializer writes convolution filters and biases in fp32 (force_fp32 in "
                   "op_conv2d.py) and " + why)
        tally.note(f"the XNNPACK graph computes in fp16, but {len(fp32_consts)} of its constant tensors "
                   f"({total:,} B: {', '.join(ops)} weights/biases) are stored as fp32: {why}, so on disk they keep "
                   f"their fp32 size")


def _const_bytes(consts: list, idx: int, named_sizes: dict, seen: set) -> int | None:
    """Bytes of one constant of an XNNPACK graph, None when already counted (shared named data)."""
    if idx >= len(consts):
        return 0
    entry = consts[idx]
    key = entry.get("named_key") or ""
    if key:
        if key in seen:
            return None
        seen.add(key)
        return int(named_sizes.get(key, entry.get("size") or 0))
    return int(entry.get("size") or 0)


def _xnnpack_users(nodes: list) -> dict[int, str]:
    """Value id -> 'Conv2d #2 filter': the first node that reads the value, and as what."""
    users: dict[int, str] = {}
    counts: dict[str, int] = {}
    for node in nodes:
        kind = str(node.get("xnode_union_type", "node")).removeprefix("XNN")
        counts[kind] = counts.get(kind, 0) + 1
        for key, val in (node.get("xnode_union") or {}).items():
            if key.endswith("_id") and key != "output_id" and isinstance(val, int):
                users.setdefault(val, f"{kind} #{counts[kind]} {key[:-3]}")
    return users


def _xnnpack_graph(blob: bytes) -> dict | None:
    """The XNNGraph of an XNNPACK blob as a dict, decoded by flatc (ExecuTorch's) with the delegate's schema."""
    import importlib.resources
    import json
    import re
    import subprocess
    import tempfile

    with quiet():
        from executorch.exir._serialize._flatbuffer import _get_flatc_path

    if blob[4:8] == b"XH00":  # XNNHeader: flatbuffer offset / size
        start = int.from_bytes(blob[10:14], "little")
        size = int.from_bytes(blob[14:18], "little")
        fb = blob[start:start + size]
    else:
        fb = blob
    schema = importlib.resources.files("executorch.backends.xnnpack.serialization").joinpath("schema.fbs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "schema.fbs").write_bytes(schema.read_bytes())
        (tmp_path / "graph.bin").write_bytes(fb)
        done = subprocess.run([_get_flatc_path(), "--json", "--strict-json", "--raw-binary", "--defaults-json",
                               "-o", tmp, str(tmp_path / "schema.fbs"), "--", str(tmp_path / "graph.bin")],
                              capture_output=True, text=True, timeout=120)
        out = tmp_path / "graph.json"
        if done.returncode or not out.exists():
            return None
        text = out.read_text()
    # flatc writes non-finite floats (clamp bounds) bare: inf, -inf, nan
    text = re.sub(r"(?<=[:\[,\s])(-?inf|\+inf|-?nan)(?=[\s,\]}])", "null", text)
    return json.loads(text)


def _pt2_breakdown(path: Path, tally) -> None:
    """A torch.export archive: its weights / constants entries as segments, tensors from torch.export.load."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if "weights" in parts and not info.filename.endswith(".json"):
                    tally.segment("weights", info.compress_size)
                elif "constants" in parts and not info.filename.endswith(".json"):
                    tally.segment("constants", info.compress_size)
    except zipfile.BadZipFile:
        tally.note("the .pt2 is not a zip archive; segments unknown")
    torch = import_torch()
    from .runner import import_torchao

    import_torchao()  # quantized programs call torch.ops.torchao.*
    try:
        with quiet():
            program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        tally.note(f"torch.export.load failed ({type(exc).__name__}); tensors unknown")
        return
    seen: set[int] = set()
    int4_like = 0
    for name, t in list(program.state_dict.items()) + list(program.constants.items()):
        if not isinstance(t, torch.Tensor):
            continue
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        dtype = str(t.dtype).replace("torch.", "")
        tally.tensor(name, dtype, list(t.shape), t.numel() * t.element_size())
        if t.dtype == torch.int8 and t.numel() >= 256 and int(t.min()) >= -8 and int(t.max()) <= 7:
            int4_like += 1
    if int4_like:
        tally.note(f"{int4_like} int8 tensors hold only values in [-8, 7]: int4 weights stored one value per byte "
                   "(torchao's unpacked layout), counted as int8")
