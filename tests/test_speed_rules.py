"""Why no speed-up: the rule table of ``nbopt.speed`` on crafted rows, the CPU-feature parser on fake
/proc/cpuinfo texts, and ``recipe_check`` on crafted size breakdowns. Fast: no framework is imported."""
from __future__ import annotations

import sys

import pytest

from nbopt import speed
from nbopt.speed import (FALLBACK, RULES, SizeTally, cpu_features, no_speedup_reasons, no_speedup_rules, parse_cpuinfo,
                         recipe_check)

X86_OLD = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c

processor\t: 1
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c
"""
X86_VNNI = ("model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8 avx512_fp16\n")
ARM_A53 = """processor\t: 0
BogoMIPS\t: 38.40
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
"""
ARM_A76 = ("processor\t: 0\n"
           "Features\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n")

OLD_X86, NEW_X86, OLD_ARM, NEW_ARM = (parse_cpuinfo(t) for t in (X86_OLD, X86_VNNI, ARM_A53, ARM_A76))


# ------------------------------------------------------------------------------------------- cpuinfo
def test_parse_cpuinfo_x86():
    assert OLD_X86["arch"] == "x86" and OLD_X86["avx2"] and not OLD_X86["avx512f"]
    assert not OLD_X86["int8_dot"] and not OLD_X86["fp16_arith"] and not OLD_X86["amx"]
    assert OLD_X86["model"].startswith("Intel(R) Xeon(R) CPU E5")
    assert NEW_X86["avx512f"] and NEW_X86["avx512_vnni"] and NEW_X86["avx_vnni"] and NEW_X86["amx"]
    assert NEW_X86["int8_dot"] and NEW_X86["fp16_arith"] and not NEW_X86["dotprod"]


def test_parse_cpuinfo_arm():
    assert OLD_ARM["arch"] == "arm" and not OLD_ARM["dotprod"] and not OLD_ARM["int8_dot"]
    assert not OLD_ARM["fp16_arith"] and not OLD_ARM["avx2"]
    assert NEW_ARM["dotprod"] and NEW_ARM["int8_dot"] and NEW_ARM["fp16_arith"] and not NEW_ARM["i8mm"]


def test_parse_cpuinfo_without_flags_is_empty():
    assert parse_cpuinfo("") == {} and parse_cpuinfo("processor : 0\nmodel name : x\n") == {}


def test_cpu_features_is_cached_and_reads_this_machine(monkeypatch):
    speed._read_cpuinfo.cache_clear()
    calls = []
    real = open

    def counting_open(path, *a, **k):
        if path == "/proc/cpuinfo":
            calls.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr("builtins.open", counting_open)
    first, second = cpu_features(), cpu_features()
    assert first == second and len(calls) <= 1
    if sys.platform.startswith("linux"):
        assert first.get("arch") in ("x86", "arm")
    speed._read_cpuinfo.cache_clear()


def test_cpu_features_unreadable_is_empty(monkeypatch):
    speed._read_cpuinfo.cache_clear()

    def broken(*a, **k):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", broken)
    assert cpu_features() == {}
    speed._read_cpuinfo.cache_clear()


# ------------------------------------------------------------------------------------------- rules
BASE = {"recipe": "baseline", "latency_ms": 2.0, "format": "pte",
        "notes": "ExecuTorch .pte, XNNPACK delegate; 1 ops on ExecuTorch portable kernels (aten.mean); fp32"}


def _row(recipe, latency=2.0, **kw):
    return {"recipe": recipe, "latency_ms": latency, "format": "pte", "params": {}, "notes": "", **kw}


def _breakdown(largest_shape=(64, 32, 3, 3), **by):
    t = SizeTally(100_000)
    t.tensor("w", by.pop("dtype", "fp32"), list(largest_shape), 4 * 64 * 32 * 9)
    for k, v in by.items():
        t.by_dtype[k] += v
    return t.result()


# Each case: rule name, a row / baseline / breakdown / cpu where it applies.
CASES = {
    "portable-kernels": (_row("fp16", notes="ExecuTorch .pte, XNNPACK delegate; 3 ops on ExecuTorch portable "
                                            "kernels (aten.mean, dim_order_ops._to_dim_order_copy); fp16"),
                         BASE, None, NEW_X86),
    "no-delegate": (_row("int4-weight-only", format="pt2", params={"activations": "float", "group_size": 32},
                         notes="torch.export .pt2 (ExecuTorch fallback: RuntimeError: Missing out variants)"),
                    BASE, None, NEW_X86),
    "partial-quantization": (_row("int8-dynamic", notes="torchao ...: 1/1 Linear (int8), 0/2 Conv2d (fp32)"),
                             BASE, None, NEW_X86),
    "dynamic-quant-small-tensors": (_row("int8-dynamic", notes="2/2 Conv, 2/2 Gemm", format="onnx"),
                                    {**BASE, "format": "onnx", "notes": ""}, _breakdown(dtype="int8"), NEW_X86),
    "int8-without-dot-product": (_row("int8-static", format="onnx"), {**BASE, "format": "onnx", "notes": ""},
                                 None, OLD_X86),
    "fp16-dequantized-at-load": (_row("fp16", format="tflite",
                                      notes="fp16 weights (dequantized to fp32 at load on CPU; GPU runs fp16)"),
                                 {**BASE, "format": "tflite", "notes": "fp32"}, None, NEW_X86),
    "zeros-in-dense-kernels": (_row("prune-unstructured", notes="global L1 pruning zeroed 50% of the weights"),
                               {**BASE, "notes": ""}, None, NEW_X86),
    "weight-only-float-compute": (_row("int8-weight-only", format="onnx", notes="int8 weight-only MatMulNBits"),
                                  {**BASE, "format": "onnx", "notes": ""}, None, NEW_X86),
}


def test_every_rule_has_a_case():
    assert {r.name for r in RULES} == set(CASES)
    assert len({r.name for r in RULES + FALLBACK}) == len(RULES) + len(FALLBACK)


def test_tiny_model_is_the_fallback_when_nothing_else_explains():
    """An int8-static row on a CPU with VNNI and nothing odd in its notes: only the model's size is left."""
    row = _row("int8-static", latency=0.033, format="onnx", notes="quantize_static QDQ: 2/2 Conv, 1/1 Gemm")
    base = {**BASE, "latency_ms": 0.028, "format": "onnx", "notes": ""}
    assert no_speedup_rules(row, base, None, NEW_X86) == ["tiny-model"]
    assert "0.028 ms" in no_speedup_reasons(row, base, None, NEW_X86)[0]
    assert no_speedup_rules({**row, "latency_ms": 0.02}, base, None, NEW_X86) == []  # faster: silent
    slow = {**base, "latency_ms": 30.0}
    assert no_speedup_rules({**row, "latency_ms": 31.0}, slow, None, NEW_X86) == []  # unexplained, not tiny
    # another rule applies: the fallback stays out
    assert no_speedup_rules(row, base, None, OLD_X86) == ["int8-without-dot-product"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_fires_when_not_faster(name):
    row, base, breakdown, cpu = CASES[name]
    fired = no_speedup_rules(row, base, breakdown, cpu)
    assert name in fired
    reasons = no_speedup_reasons(row, base, breakdown, cpu)
    assert len(reasons) == len(fired) and all(r.endswith(".") for r in reasons)
    sentence = reasons[fired.index(name)]
    assert len(sentence) > 60  # names the cause and what to do


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_is_silent_when_faster(name):
    row, base, breakdown, cpu = CASES[name]
    faster = {**row, "latency_ms": 0.9 * base["latency_ms"]}
    assert no_speedup_rules(faster, base, breakdown, cpu) == []
    assert no_speedup_reasons(faster, base, breakdown, cpu) == []
    # at 95% of the baseline a candidate counts as "not faster"
    assert name in no_speedup_rules({**row, "latency_ms": 0.95 * base["latency_ms"]}, base, breakdown, cpu)


def test_no_latency_no_reasons():
    row, base, breakdown, cpu = CASES["zeros-in-dense-kernels"]
    assert no_speedup_reasons({**row, "latency_ms": None}, base, breakdown, cpu) == []
    assert no_speedup_reasons(row, {**base, "latency_ms": float("nan")}, breakdown, cpu) == []
    assert no_speedup_reasons({**row, "recipe": "baseline"}, base, breakdown, cpu) == []


def test_portable_kernels_counts_only_ops_beyond_the_baseline():
    same = _row("int8-static", notes="ExecuTorch .pte, XNNPACK delegate; 1 ops on ExecuTorch portable kernels "
                                     "(aten.mean); PT2E")
    assert "portable-kernels" not in no_speedup_rules(same, BASE, None, NEW_X86)
    ref = _row("int8-static", format="tflite", notes="2 ops on TFLite reference kernels (GATHER)")
    assert "portable-kernels" in no_speedup_rules(ref, {**BASE, "notes": ""}, None, NEW_X86)
    text = no_speedup_reasons(CASES["portable-kernels"][0], BASE, None, NEW_X86)[0]
    assert "3 ops run on ExecuTorch's portable kernels (1 in the baseline: aten.mean, dim_order" in text


def test_dynamic_quant_needs_small_weights_or_a_fast_model():
    row, base, _, cpu = CASES["dynamic-quant-small-tensors"]
    big = _breakdown(largest_shape=(4096, 4096), dtype="int8")
    slow_base = {**base, "latency_ms": 20.0}
    assert "dynamic-quant-small-tensors" not in no_speedup_rules({**row, "latency_ms": 20.0}, slow_base, big, cpu)
    assert "dynamic-quant-small-tensors" in no_speedup_rules({**row, "latency_ms": 0.5}, {**base, "latency_ms": 0.5},
                                                             big, cpu)  # sub-millisecond: overhead dominates
    text = no_speedup_reasons(row, base, _breakdown(dtype="int8"), cpu)
    assert any("18,432 elements" in t and "int8-static" in t for t in text)
    int4_dyn = _row("int4-weight-only", params={"activations": "int8", "group_size": 32})
    assert "dynamic-quant-small-tensors" in no_speedup_rules(int4_dyn, base, _breakdown(dtype="int4"), cpu)
    assert "dynamic-quant-small-tensors" not in no_speedup_rules(int4_dyn, base, None, cpu)  # sizes unknown


def test_int8_without_dot_product_depends_on_the_cpu():
    row, base, _, _ = CASES["int8-without-dot-product"]
    assert "int8-without-dot-product" in no_speedup_rules(row, base, None, OLD_ARM)
    assert "int8-without-dot-product" not in no_speedup_rules(row, base, None, NEW_ARM)
    assert "int8-without-dot-product" not in no_speedup_rules(row, base, None, NEW_X86)
    assert "int8-without-dot-product" not in no_speedup_rules(row, base, None, {})  # unknown CPU: no claim
    x86 = no_speedup_reasons(row, base, None, OLD_X86)
    assert any("VNNI" in t for t in x86)
    arm = no_speedup_reasons(row, base, None, OLD_ARM)
    assert any("dot-product" in t and "asimddp" in t for t in arm)


def test_fp16_rule_reads_notes_and_cpu():
    onnx_fp16 = _row("fp16", format="onnx", notes="fp16 weights and compute")
    base = {**BASE, "format": "onnx", "notes": ""}
    assert "fp16-dequantized-at-load" in no_speedup_rules(onnx_fp16, base, None, OLD_X86)
    assert "fp16-dequantized-at-load" not in no_speedup_rules(onnx_fp16, base, None, NEW_ARM)
    text = no_speedup_reasons(onnx_fp16, base, None, OLD_X86)
    assert any("Cast" in t and "AVX512-FP16" in t for t in text)
    tfl = no_speedup_reasons(*CASES["fp16-dequantized-at-load"])
    assert any("TFLite" in t and "load" in t for t in tfl)


def test_weight_only_covers_int4_with_float_activations():
    base = {**BASE, "notes": ""}
    float_acts = _row("int4-weight-only", params={"activations": "float", "group_size": 32})
    int8_acts = _row("int4-weight-only", params='{"activations": "int8", "group_size": 32}')  # JSON text too
    assert "weight-only-float-compute" in no_speedup_rules(float_acts, base, None, NEW_X86)
    assert "weight-only-float-compute" not in no_speedup_rules(int8_acts, base, None, NEW_X86)


def test_partial_quantization_from_the_breakdown():
    base = {**BASE, "notes": ""}
    mostly_float = SizeTally(100_000)
    mostly_float.tensor("conv", "fp32", [64, 32, 3, 3], 73_728)
    mostly_float.tensor("fc", "int8", [10, 64], 640)
    b = mostly_float.result()
    assert "partial-quantization" in no_speedup_rules(_row("int8-static"), base, b, NEW_X86)
    assert "partial-quantization" not in no_speedup_rules(_row("int8-static"), base, None, NEW_X86)


# ------------------------------------------------------------------------------------------- recipe_check
def _by(**by):
    t = SizeTally(sum(by.values()) + 1000)
    for k, v in by.items():
        t.tensor(f"{k} weight", k, [v], v)
    return t.result()


def test_recipe_check_fp16():
    assert recipe_check("fp16", _by(fp16=900, fp32=100)) == ""
    text = recipe_check("fp16", _by(fp32=77_568, fp16=1_300))
    assert text.startswith("fp16 in name, but 98% of the weight bytes are still fp32 (77,568 of 78,868 B")
    assert "fp32 weight 77,568 B" in text


def test_recipe_check_int8_and_int4():
    assert recipe_check("int8-static", _by(int8=900, fp32=100)) == ""
    assert recipe_check("int8-dynamic(per_channel=true)", _by(int8=300, fp32=700)).startswith(
        "int8 in name, but only 30% of the weight bytes are int8; 70% are still float")
    assert recipe_check("int8-weight-only", _by(int8=10, fp16=990)).startswith("int8 in name")
    assert recipe_check("int4-weight-only", _by(int4=500, fp32=500)) == ""
    text = recipe_check("int4-weight-only", _by(int8=600, fp32=400))
    assert text.startswith("int4 in name, but no weight is stored in 4 bits: the weight bytes are 60% int8, 40% fp32")


def test_recipe_check_is_silent_without_weights_or_for_other_recipes():
    assert recipe_check("fp16", None) == "" and recipe_check("fp16", {}) == ""
    assert recipe_check("fp16", _by(other=1000)) == ""
    assert recipe_check("prune-structured", _by(fp32=1000)) == ""
    assert recipe_check("baseline", _by(fp32=1000)) == ""


def test_size_tally_result_shape():
    t = SizeTally(1000)
    for i in range(12):
        t.tensor(f"t{i}", "float32" if i % 2 else "int32", [i + 1], 10 * (i + 1))
    t.segment("weights", 600)
    t.note("hello")
    t.note("hello")
    r = t.result("program/other")
    assert r["total_bytes"] == 1000 and sum(r["segments"].values()) == 1000
    assert r["segments"] == {"weights": 600, "program/other": 400}
    assert len(r["largest"]) == 10 and r["largest"][0] == {"name": "t11", "dtype": "fp32", "shape": [12], "bytes": 120}
    assert r["by_dtype"]["fp32"] == sum(10 * (i + 1) for i in range(12) if i % 2)
    assert r["by_dtype"]["other"] == sum(10 * (i + 1) for i in range(12) if not i % 2)
    assert r["notes"][0] == "hello" and r["notes"][1].startswith("'other' is int32")


def test_fp16_reason_names_weights_still_stored_as_fp32():
    """The torch fp16 .pte of a CNN: the breakdown shows fp32 convolution weights, and the reason says so."""
    b = SizeTally(90_000)
    b.tensor("XNNPACK Conv2d #2 filter", "fp32", [64, 3, 3, 32], 73_728)
    b.tensor("XNNPACK FullyConnected #1 filter", "fp16", [10, 64], 1_280)
    row = _row("fp16", notes="ExecuTorch .pte, all ops in the XNNPACK delegate; fp16 weights and activations")
    text = no_speedup_reasons(row, {**BASE, "notes": "ExecuTorch .pte, all ops in the XNNPACK delegate"},
                              b.result(), OLD_X86)
    assert len(text) == 1
    assert "98% of the weight bytes are still fp32" in text[0] and "AVX512-FP16" in text[0]


def test_recipe_check_shares_are_floored_and_slivers_shown():
    text = recipe_check("int8-dynamic", _by(int8=640, fp32=77_608))
    assert text.startswith("int8 in name, but only <1% of the weight bytes are int8; 99% are still float")
