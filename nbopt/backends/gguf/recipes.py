"""GGUF recipes: one registered handler per recipe name, each a GGML storage type for the matrices.

``fp16`` stores them F16, ``int8-weight-only`` Q8_0 and ``int4-weight-only`` Q4_0 (``gguf.quants``, the
same rounding as llama.cpp's reference quantizer). GGML's Q8_0 and Q4_0 blocks are 32 weights along a row
with one fp16 scale each: ``group_size`` is fixed at 32 (1.0625 and 0.5625 bytes per weight). Norms and
biases stay F32, as llama.cpp computes them. Compute is llama.cpp's own (its CPU kernels multiply
quantized blocks directly), so there is no activation choice.
"""
from __future__ import annotations

from ..base import Artifact, Context
from .backend import GGUFBackend, gguf_artifact
from .convert import Source

_BLOCK = "blocks of 32 weights along each row, one fp16 scale per block (group_size 32, fixed by GGML)"


@GGUFBackend.recipe("fp16")
def _fp16(backend, prepared: Source, params: dict, ctx: Context) -> Artifact:
    return gguf_artifact(prepared, ctx, "F16", "f16", "F16 matrices")


@GGUFBackend.recipe("int8-weight-only", honours={"group_size": (32,)}, defaults={"group_size": 32})
def _int8_weight_only(backend, prepared: Source, params: dict, ctx: Context) -> Artifact:
    return gguf_artifact(prepared, ctx, "Q8_0", "q8_0", f"Q8_0 matrices (int8, {_BLOCK})")


@GGUFBackend.recipe("int4-weight-only", honours={"group_size": (32,), "activations": ("float",)})
def _int4_weight_only(backend, prepared: Source, params: dict, ctx: Context) -> Artifact:
    return gguf_artifact(prepared, ctx, "Q4_0", "q4_0", f"Q4_0 matrices (symmetric 4-bit, {_BLOCK})")
