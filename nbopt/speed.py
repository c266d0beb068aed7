"""Why a candidate is not faster, and where its bytes go: pure Python, no framework imports.

Three parts:

* **size breakdowns** (``SizeTally``, ``recipe_check``): every backend's ``reports.size_breakdown(artifact)``
  reads its artifact file and fills a ``SizeTally``; the result is one JSON-safe dict of the same shape for
  every format::

      {"total_bytes": int,                       # the artifact's files on disk
       "by_dtype": {"fp32", "fp16", "int8", "int4", "other": int},   # bytes of stored tensors by type
       "largest": [{"name", "dtype", "shape", "bytes"}, ...],        # the 10 largest stored tensors
       "segments": {name: bytes},                # format-specific parts of the file; they sum to total_bytes
       "notes": [str]}                           # what the reader saw that the numbers alone do not say

  ``recipe_check(recipe, breakdown)`` says when a recipe did not do what its name says (an fp16 file whose
  weight bytes are mostly fp32, an int8 recipe that left most weights in float, int4 with no 4-bit weight).

* **the machine** (``cpu_features``): the instruction-set features that decide whether int8 or fp16 can be
  faster than fp32, read from ``/proc/cpuinfo`` (``parse_cpuinfo`` takes the text, for tests).

* **the rule table** (``RULES``, ``no_speedup_reasons``): when a compressed candidate is not faster than its
  baseline, each rule that applies gives one sentence naming the cause and what to do about it.
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

# ---------------------------------------------------------------------------------------------------------
# size breakdowns
# ---------------------------------------------------------------------------------------------------------
DTYPES = ("fp32", "fp16", "int8", "int4", "other")
WEIGHT_DTYPES = ("fp32", "fp16", "int8", "int4")  # "other" holds int32 biases, scales, int64 shapes, ...
LARGEST = 10

_BUCKETS = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "pfp32": "fp32",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
    "int8": "int8", "uint8": "int8", "qint8": "int8", "quint8": "int8", "qcint8": "int8", "qdint8": "int8",
    "char": "int8", "byte": "int8",
    "int4": "int4", "uint4": "int4", "qcint4": "int4", "qbint4": "int4", "quint4x2": "int4",
}


def dtype_bucket(name: str) -> str:
    """'fp32', 'fp16', 'int8', 'int4' or 'other' for a dtype name of any of the formats (lower case)."""
    return _BUCKETS.get(str(name).lower(), "other")


@dataclass
class SizeTally:
    """Collects stored tensors and file segments while a backend reads its artifact."""

    total_bytes: int
    by_dtype: dict = field(default_factory=lambda: dict.fromkeys(DTYPES, 0))
    tensors: list = field(default_factory=list)
    segments: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def tensor(self, name: str, dtype: str, shape, nbytes: int, bucket: str | None = None) -> None:
        """One stored tensor. ``dtype`` is the format's own type name; ``bucket`` overrides the grouping."""
        nbytes = int(nbytes)
        b = bucket or dtype_bucket(dtype)
        self.by_dtype[b] += nbytes
        shown = b if b != "other" else str(dtype).lower()
        self.tensors.append({"name": str(name), "dtype": shown, "shape": [int(d) for d in (shape or [])],
                             "bytes": nbytes})

    def segment(self, name: str, nbytes: int) -> None:
        self.segments[name] = self.segments.get(name, 0) + int(nbytes)

    def note(self, text: str) -> None:
        if text and text not in self.notes:
            self.notes.append(text)

    def result(self, rest: str = "other") -> dict:
        """The breakdown dict; ``rest`` names the segment that takes the bytes no other segment claims."""
        claimed = sum(v for k, v in self.segments.items() if k != rest)
        segments = {k: v for k, v in self.segments.items() if k != rest}
        segments[rest] = max(self.total_bytes - claimed, 0)
        largest = sorted(self.tensors, key=lambda t: -t["bytes"])[:LARGEST]
        notes = list(self.notes)
        other: dict[str, int] = {}
        for t in self.tensors:
            if dtype_bucket(t["dtype"]) == "other" and t["dtype"] not in DTYPES:
                other[t["dtype"]] = other.get(t["dtype"], 0) + t["bytes"]
        if other:
            parts = sorted(other.items(), key=lambda kv: -kv[1])
            notes.append("'other' is " + ", ".join(f"{k} {v:,} B" for k, v in parts))
        return {"total_bytes": int(self.total_bytes), "by_dtype": {k: int(v) for k, v in self.by_dtype.items()},
                "largest": largest, "segments": segments, "notes": notes}


def weight_bytes(breakdown: dict) -> int:
    return sum(int(breakdown.get("by_dtype", {}).get(k, 0)) for k in WEIGHT_DTYPES)


def _share(part: int, whole: int) -> str:
    """Floored percentage ('99%' is never rounded up to '100%'), '<1%' for a non-zero sliver."""
    if not whole:
        return "0%"
    pct = math.floor(100 * part / whole)
    return "<1%" if part and not pct else f"{pct:d}%"


def recipe_name(recipe: str) -> str:
    """'int8-static' from 'int8-static(calibration=entropy)' or 'int8-static'."""
    return re.split(r"[({\s]", str(recipe or "").strip(), maxsplit=1)[0]


def recipe_check(recipe: str, breakdown: dict | None) -> str:
    """'' or one sentence when the artifact's stored weights contradict the recipe's name.

    fp16: fp16 bytes under half of the weight bytes; int8-*: int8 (or smaller) bytes under half of the weight
    bytes; int4-weight-only: (almost) no 4-bit weight bytes. Weight bytes are the fp32 + fp16 + int8 + int4
    tensors (int32 biases, scales and shape constants are "other")."""
    if not breakdown:
        return ""
    name = recipe_name(recipe)
    by = breakdown.get("by_dtype", {})
    total = weight_bytes(breakdown)
    if not total:
        return ""
    fp32, fp16, int8, int4 = (int(by.get(k, 0)) for k in WEIGHT_DTYPES)

    def biggest(kind: str) -> str:
        top = [t for t in breakdown.get("largest", []) if t.get("dtype") == kind][:2]
        return "; largest: " + ", ".join(f"{t['name']} {t['bytes']:,} B" for t in top) if top else ""

    if name == "fp16" and fp16 < 0.5 * total:
        return (f"fp16 in name, but {_share(fp32, total)} of the weight bytes are still fp32 ({fp32:,} of "
                f"{total:,} B{biggest('fp32')})")
    if name.startswith("int8-") and int8 + int4 < 0.5 * total:
        floats = fp32 + fp16
        kind = "fp32" if fp32 >= fp16 else "fp16"
        return (f"int8 in name, but only {_share(int8 + int4, total)} of the weight bytes are int8; "
                f"{_share(floats, total)} are still float ({floats:,} of {total:,} B{biggest(kind)})")
    if name == "int4-weight-only" and int4 < 0.01 * total:
        kinds = sorted(((k, int(by.get(k, 0))) for k in ("fp32", "fp16", "int8") if by.get(k)), key=lambda kv: -kv[1])
        parts = ", ".join(f"{_share(n, total)} {k}" for k, n in kinds)
        few = "no weight is stored in 4 bits" if not int4 else f"only {int4:,} B of weights are stored in 4 bits"
        return (f"int4 in name, but {few}: the weight bytes are {parts} ({total:,} B{biggest(kinds[0][0])})")
    return ""


# ---------------------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------------------
def parse_cpuinfo(text: str) -> dict:
    """CPU features that decide int8 / fp16 speed, from the text of ``/proc/cpuinfo``.

    ``{}`` when the text names no flags. Keys: ``arch`` ('x86' or 'arm'), ``avx2``, ``avx512f``,
    ``avx512_vnni``, ``avx_vnni``, ``amx`` (AMX-INT8 tiles), ``dotprod`` (ARM SDOT/UDOT, 'asimddp'),
    ``i8mm`` (ARM int8 matrix multiply), ``fp16_arith`` (x86 'avx512_fp16' or ARM 'asimdhp'), and the summaries
    ``int8_dot`` (any int8 dot-product instruction) and ``model`` (the CPU's name, when given).
    """
    flags: set[str] = set()
    arch = ""
    model = ""
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "flags":
            flags |= set(value.split())
            arch = arch or "x86"
        elif key == "features":
            flags |= set(value.split())
            arch = arch or "arm"
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    if not flags:
        return {}
    if arch == "x86":
        feats = {
            "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags,
            "avx_vnni": "avx_vnni" in flags,
            "amx": bool({"amx_int8", "amx_tile"} & flags),
            "dotprod": False, "i8mm": False,
            "fp16_arith": "avx512_fp16" in flags,
        }
        feats["int8_dot"] = feats["avx512_vnni"] or feats["avx_vnni"] or feats["amx"]
    else:
        feats = {
            "avx2": False, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "amx": False,
            "dotprod": bool({"asimddp", "dotprod"} & flags),
            "i8mm": "i8mm" in flags,
            "fp16_arith": bool({"asimdhp", "fphp"} & flags),
        }
        feats["int8_dot"] = feats["dotprod"] or feats["i8mm"]
    return {"arch": arch, **feats, "model": model}


@functools.lru_cache(maxsize=1)
def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cpu_features() -> dict:
    """``parse_cpuinfo`` of this machine (cached); ``{}`` where ``/proc/cpuinfo`` cannot be read."""
    return dict(parse_cpuinfo(_read_cpuinfo()))


def _missing_int8(cpu: dict) -> str:
    if cpu.get("arch") == "arm":
        return "no ARMv8.2 dot-product (asimddp / SDOT) or i8mm"
    return "no AVX512-VNNI, AVX-VNNI or AMX"


def _missing_fp16(cpu: dict) -> str:
    if cpu.get("arch") == "arm":
        return "no ARMv8.2 half-precision arithmetic (asimdhp)"
    return "no AVX512-FP16"


# ---------------------------------------------------------------------------------------------------------
# the rule table
# ---------------------------------------------------------------------------------------------------------
NOT_FASTER = 0.95  # a candidate is "not faster" when its latency is at least 95% of its baseline's
SMALL_TENSOR = 256 * 1024  # elements: below this, run-time quantization costs about what int8 saves
SMALL_LATENCY_MS = 1.0

_PORTABLE = re.compile(r"(\d+) ops? on ExecuTorch portable kernels(?: \(([^)]*)\))?")
_REFERENCE = re.compile(r"reference (kernels?|implementation|fallback)", re.I)
_UNQUANTIZED = re.compile(r"\b0/(\d+) (Conv\w*|Linear|Gemm|MatMul)\b")


@dataclass
class Facts:
    """What the rules look at: the two rows, the candidate's size breakdown and the CPU."""

    row: dict
    baseline: dict
    breakdown: dict | None
    cpu: dict

    @property
    def recipe(self) -> str:
        return recipe_name(self.row.get("recipe", ""))

    @property
    def params(self) -> dict:
        p = self.row.get("params") or {}
        if isinstance(p, str):
            try:
                p = json.loads(p)
            except ValueError:
                p = {}
        return p if isinstance(p, dict) else {}

    @property
    def notes(self) -> str:
        return str(self.row.get("notes") or "")

    @property
    def base_notes(self) -> str:
        return str(self.baseline.get("notes") or "")

    @property
    def latency(self) -> float:
        return float(self.row["latency_ms"])

    @property
    def base_latency(self) -> float:
        return float(self.baseline["latency_ms"])

    @property
    def ratio(self) -> float:
        return self.latency / self.base_latency if self.base_latency else float("inf")

    @property
    def largest_weight_elements(self) -> int | None:
        """Elements of the largest stored float/int weight tensor, from the breakdown (None: unknown)."""
        if not self.breakdown or not self.breakdown.get("largest"):
            return None
        sizes = [math.prod(t.get("shape") or [0]) for t in self.breakdown["largest"]
                 if t.get("dtype") in WEIGHT_DTYPES]
        return max(sizes) if sizes else None

    def portable_ops(self, notes: str) -> tuple[int, str]:
        m = _PORTABLE.search(notes)
        return (int(m.group(1)), m.group(2) or "") if m else (0, "")


class Rule(NamedTuple):
    """One entry of the table: a name, when it applies, and the sentence (cause + what to do)."""

    name: str
    applies: Callable[[Facts], bool]
    sentence: Callable[[Facts], str]


# -- predicates and sentences: one small function each --------------------------------------------------
def _portable_applies(f: Facts) -> bool:
    n, _ = f.portable_ops(f.notes)
    base, _ = f.portable_ops(f.base_notes)
    return n > base or bool(_REFERENCE.search(f.notes))


def _portable_sentence(f: Facts) -> str:
    n, which = f.portable_ops(f.notes)
    base, _ = f.portable_ops(f.base_notes)
    if n:
        which = f": {which}" if which else ""
        return (f"Ops left the fast kernels: {n} ops run on ExecuTorch's portable kernels ({base} in the "
                f"baseline{which}), plain reference loops outside XNNPACK, with tensors copied in and out of the "
                "delegate around them; find why those ops did not lower (an op or dtype XNNPACK does not take) "
                "or keep the baseline.")
    return ("Ops run on the runtime's reference kernels (see the notes), unoptimized loops outside the "
            "accelerated ones; make those ops supported by the fast path or keep the baseline.")


def _fallback_applies(f: Facts) -> bool:
    return str(f.row.get("format")) == "pt2" and str(f.baseline.get("format")) == "pte"


def _fallback_sentence(f: Facts) -> str:
    return ("This candidate did not lower to ExecuTorch/XNNPACK and fell back to a .pt2 run by eager torch "
            "CPU kernels, while the baseline runs in XNNPACK; the comparison is between runtimes, not precisions: "
            "use a variant that lowers (e.g. int4-weight-only with activations=int8) to get XNNPACK kernels.")


def _dynamic_applies(f: Facts) -> bool:
    dynamic = f.recipe == "int8-dynamic" or (f.recipe == "int4-weight-only" and f.params.get("activations") == "int8")
    if not dynamic:
        return False
    big = f.largest_weight_elements
    return (big is not None and big < SMALL_TENSOR) or f.base_latency < SMALL_LATENCY_MS


def _dynamic_sentence(f: Facts) -> str:
    big = f.largest_weight_elements
    size = f"the largest weight has {big:,} elements" if big is not None else "the weights are small"
    return (f"Dynamic quantization overhead: activations are quantized at run time (a min/max pass, a quantize "
            f"and a dequantize around every layer), and here {size} and the baseline takes "
            f"{f.base_latency:.3g} ms, so that overhead costs about what the int8 arithmetic saves; use "
            "int8-static (scales calibrated once, no run-time quantization) or keep fp32/fp16 for a model this small.")


def _int8_isa_applies(f: Facts) -> bool:
    integer = f.recipe in ("int8-static", "int8-dynamic") or (
        f.recipe == "int4-weight-only" and f.params.get("activations") == "int8")
    return integer and bool(f.cpu) and not f.cpu.get("int8_dot", False)


def _int8_isa_sentence(f: Facts) -> str:
    return (f"This CPU has {_missing_int8(f.cpu)}: integer convolutions and matmuls run as widened 16-bit "
            "multiply-adds, about as fast as fp32 FMA, so int8 saves memory but not time here; measure on the "
            "target device (phones with ARMv8.2 dotprod, x86 with VNNI) before judging its speed.")


def _fp16_applies(f: Facts) -> bool:
    if f.recipe != "fp16":
        return False
    if "dequantized to fp32 at load" in f.notes:
        return True
    return bool(f.cpu) and not f.cpu.get("fp16_arith", False)


def _fp16_sentence(f: Facts) -> str:
    if "dequantized to fp32 at load" in f.notes:
        how = "the TFLite CPU runtime dequantizes fp16 weights to fp32 when it loads the model and computes in fp32"
    elif str(f.row.get("format")) == "onnx":
        how = ("ONNX Runtime's CPU provider has few fp16 kernels, so it runs fp32 kernels with Cast nodes "
               "converting between fp16 and fp32 around them")
    else:
        how = "the runtime converts fp16 weights and activations to fp32 (or emulates fp16) to compute"
    cpu = f" (this CPU has {_missing_fp16(f.cpu)})" if f.cpu and not f.cpu.get("fp16_arith") else ""
    stored = recipe_check("fp16", f.breakdown)
    stored = f"; besides, {stored[len('fp16 in name, but '):]}" if stored else ""
    return (f"Weights dequantized at load: {how}{cpu}{stored}; fp16 halves the file, not the work. Its speed-up "
            "needs fp16 hardware: a phone GPU or NPU, or an ARMv8.2-A CPU with fp16 arithmetic.")


def _zeros_applies(f: Facts) -> bool:
    return f.recipe == "prune-unstructured"


def _zeros_sentence(f: Facts) -> str:
    return ("Zeros in dense kernels: unstructured pruning only sets weights to zero, and the dense kernels "
            "multiply every zero at full cost; use prune-structured (it removes whole channels, so less work) for "
            "speed, or a runtime with sparse kernels; the zeros only shrink a compressed download.")


def _weight_only_applies(f: Facts) -> bool:
    return f.recipe == "int8-weight-only" or (
        f.recipe == "int4-weight-only" and f.params.get("activations", "float") == "float")


def _weight_only_sentence(f: Facts) -> str:
    bits = "int4" if f.recipe.startswith("int4") else "int8"
    return (f"Weights dequantized per call: {f.recipe} stores {bits} weights but computes in float, so every "
            f"inference first expands each weight back to float before a float matmul: more work than the "
            f"baseline, not less. It buys a smaller file; for speed use int8-dynamic or int8-static (integer "
            f"kernels).")


def _partial_applies(f: Facts) -> bool:
    if not (f.recipe.startswith("int8-") or f.recipe.startswith("int4-")):
        return False
    if _UNQUANTIZED.search(f.notes):
        return True
    return bool(recipe_check(f.recipe, f.breakdown)) and f.recipe.startswith("int8-")


def _partial_sentence(f: Facts) -> str:
    m = _UNQUANTIZED.search(f.notes)
    what = f"0/{m.group(1)} {m.group(2)} quantized" if m else recipe_check(f.recipe, f.breakdown)
    todo = ("use int8-static, which quantizes convolutions too" if f.recipe != "int8-static" else
            "see in the notes which layers the quantizer skipped and why")
    return (f"Part of the network stayed in float ({what}): those layers run at float speed, and every "
            f"boundary between them and the quantized ones adds a quantize or dequantize step, so the quantized "
            f"layers cannot make the whole much faster; {todo}.")


RULES: list[Rule] = [
    Rule("portable-kernels", _portable_applies, _portable_sentence),
    Rule("no-delegate", _fallback_applies, _fallback_sentence),
    Rule("partial-quantization", _partial_applies, _partial_sentence),
    Rule("dynamic-quant-small-tensors", _dynamic_applies, _dynamic_sentence),
    Rule("int8-without-dot-product", _int8_isa_applies, _int8_isa_sentence),
    Rule("fp16-dequantized-at-load", _fp16_applies, _fp16_sentence),
    Rule("zeros-in-dense-kernels", _zeros_applies, _zeros_sentence),
    Rule("weight-only-float-compute", _weight_only_applies, _weight_only_sentence),
]


def not_faster(row: dict, baseline: dict) -> bool:
    """True when both latencies are known and the candidate's is at least 95% of the baseline's."""
    try:
        lat, base = float(row.get("latency_ms")), float(baseline.get("latency_ms"))
    except (TypeError, ValueError):
        return False
    if not (math.isfinite(lat) and math.isfinite(base)) or base <= 0:
        return False
    return lat >= NOT_FASTER * base


def _tiny_applies(f: Facts) -> bool:
    return f.base_latency < SMALL_LATENCY_MS


def _tiny_sentence(f: Facts) -> str:
    return (f"Nothing in the artifact explains it, but the baseline takes only {f.base_latency:.3g} ms per "
            "inference: at this size fixed per-call costs (the runtime's dispatch, converting the inputs and "
            "outputs) outweigh the arithmetic any recipe can save, and the timings are close to their noise; "
            "compare on the real input size or a larger model before judging this recipe's speed.")


# Tried only when no rule of the table applies.
FALLBACK: list[Rule] = [Rule("tiny-model", _tiny_applies, _tiny_sentence)]


def _fired(row: dict, baseline: dict, breakdown: dict | None, cpu: dict | None) -> list[tuple[Rule, Facts]]:
    if not not_faster(row, baseline) or recipe_name(row.get("recipe", "")) in ("", "baseline"):
        return []
    facts = Facts(row, baseline, breakdown, cpu or {})
    fired = [(rule, facts) for rule in RULES if rule.applies(facts)]
    return fired or [(rule, facts) for rule in FALLBACK if rule.applies(facts)]


def no_speedup_reasons(row: dict, baseline: dict, breakdown: dict | None = None,
                       cpu: dict | None = None) -> list[str]:
    """The sentences of every rule that applies, when ``row`` is not faster than ``baseline``; else []."""
    return [rule.sentence(facts) for rule, facts in _fired(row, baseline, breakdown, cpu)]


def no_speedup_rules(row: dict, baseline: dict, breakdown: dict | None = None, cpu: dict | None = None) -> list[str]:
    """The names of the rules ``no_speedup_reasons`` applies (for tests and the details view)."""
    return [rule.name for rule, _ in _fired(row, baseline, breakdown, cpu)]
