"""Whether onnxruntime's ``quant_pre_process`` helps this model, decided once per model and calibration set.

``quant_pre_process`` (symbolic shape inference + onnxruntime's graph optimizations) usually makes the
quantizer's job easier, but not always: on GPT-2 it duplicates the tied embedding (int8 files 30 % bigger,
fp16 at 76 % of fp32), and on a BERT it lowered int8-dynamic's agreement from .680 to .582. So nbopt builds
int8-dynamic (per-channel) from both graphs, compares size and the output error on calibration data, and keeps
the pre-processed graph only when it is no bigger and no less accurate. The row notes say which was used.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import one_line
from ...mixed import fidelity
from .convert import model_files

TOLERANCE = 0.02  # relative: closer than this counts as a tie (the optimized graph is kept on a tie)


def decide(raw: Path, pre: Path, workdir: Path, quantize: Callable[[Path, Path], None],
           outputs: Callable[[Path], np.ndarray] | None) -> tuple[bool, str]:
    """(keep the pre-processed graph, why). ``outputs`` runs a model on calibration examples (None: no
    calibration data, decided on size alone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, src in (("raw", raw), ("pre", pre)):
        dst = workdir / f"{name}.onnx"
        try:
            quantize(src, dst)
        except Exception as exc:  # noqa: BLE001 - the check cannot run: keep onnxruntime's recommendation
            return True, f"quant_pre_process kept (the check could not quantize: {one_line(exc, 100)})"
        built[name] = dst
    size = {k: sum(f.stat().st_size for f in model_files(p)) for k, p in built.items()}
    if outputs is None:
        keep = size["pre"] <= size["raw"] * (1 + TOLERANCE)
        why = f"int8 {size['pre']:,} B with it vs {size['raw']:,} B without"
    else:
        ref = outputs(raw)
        outs = {k: outputs(p) for k, p in built.items()}
        err = {k: fidelity(ref, o)["rel_error"] for k, o in outs.items()}
        # top-1 agreement with fp32 as well: a random-init BERT's int8 moved 2.6 % less with pre-processing
        # yet changed one more prediction in 32
        agree = {k: _top1(ref, o) for k, o in outs.items()}
        keep = (size["pre"] <= size["raw"] * (1 + TOLERANCE)
                and err["pre"] <= err["raw"] * (1 + TOLERANCE) + 1e-6
                and (agree["pre"] is None or agree["pre"] >= agree["raw"]))
        top1 = "" if agree["pre"] is None else f", top-1 as fp32 {agree['pre']:.1%} vs {agree['raw']:.1%}"
        why = (f"int8 {size['pre']:,} B / output error {err['pre']:.2%} on calibration data with it vs "
               f"{size['raw']:,} B / {err['raw']:.2%} without{top1}")
    for p in built.values():
        for f in model_files(p):
            f.unlink(missing_ok=True)
    return keep, ("quant_pre_process kept" if keep else "quant_pre_process skipped: it made this model's int8 "
                  "worse") + f" ({why})"


def _top1(ref: np.ndarray, out: np.ndarray) -> float | None:
    """Share of top-1 predictions equal to fp32's (per position for sequences); None for one output value."""
    if ref.ndim < 2 or ref.shape[-1] < 2:
        return None
    a = ref.reshape(-1, ref.shape[-1]) if ref.ndim == 3 else ref.reshape(len(ref), -1)
    b = out.reshape(a.shape)
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def load_decision(path: Path) -> tuple[bool, str] | None:
    try:
        d = json.loads(path.read_text())
        return bool(d["keep"]), str(d["note"])
    except (OSError, ValueError, KeyError):
        return None


def save_decision(path: Path, keep: bool, note: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"keep": keep, "note": note}))
    os.replace(tmp, path)
