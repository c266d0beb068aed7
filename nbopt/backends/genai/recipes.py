"""genai recipes: one registered handler per recipe name, each a precision of onnxruntime-genai's model
builder and its ``--extra_options``.

``fp16`` is the builder's fp16; ``int8-weight-only`` and ``int4-weight-only`` its MatMulNBits weight-only
quantization: ``group_size`` is its ``block_size`` (16 to 256, no per-channel form), ``activations`` its
``accuracy_level`` (float: 1, fp32 compute; int8: 4, activations quantized on the fly, the builder's own
default on the CPU), and the own ``algorithm`` / ``symmetric`` its ``algo_config`` / ``is_symmetric``.
"""
from __future__ import annotations

from ..base import Artifact, Context, Param
from .backend import GenAIBackend, genai_artifact
from .convert import Source

_GROUPS = (16, 32, 64, 128, 256)  # the builder's block sizes
_SYMMETRIC = Param(True, choices=(True, False), help="symmetric weight ranges (no zero point; the builder's default)")
_ALGORITHM = Param("rtn", choices=("rtn", "k_quant"),
                   help="how the builder chooses the weight values: rtn (round to nearest) or k_quant")
_EMBEDDING = Param("int4", choices=("int4", "float"),
                   help="int4: the token embedding is stored in 4 bits too (GatherBlockQuantized); float: as the "
                        "builder leaves it by default")
_LEVEL = {"float": 1, "int8": 4}  # MatMulNBits accuracy_level: 1 computes in fp32, 4 in int8


def _weight_only(params: dict, activations: str) -> dict:
    options = {"block_size": params["group_size"], "accuracy_level": _LEVEL[activations],
               "is_symmetric": params["symmetric"]}
    # rtn is the builder's default (algo_config unset); an explicit algo_config=rtn config would leave the
    # embedding's Gather unquantized
    if params["algorithm"] != "rtn":
        options["algo_config"] = params["algorithm"]
    return options


@GenAIBackend.recipe("fp16")
def _fp16(backend, prepared: Source, params: dict, ctx: Context) -> Artifact:
    return genai_artifact(prepared, ctx, "fp16", {}, "fp16 weights and compute")


@GenAIBackend.recipe("int8-weight-only", honours={"group_size": _GROUPS}, defaults={"group_size": 32},
                     symmetric=_SYMMETRIC, algorithm=_ALGORITHM)
def _int8_weight_only(backend, prepared: Source, params: dict, ctx: Context) -> Artifact:
    # the builder quantizes Gather (the embedding) in 4 bits only: it stays float here
    return genai_artifact(prepared, ctx, "int8", _weight_only(params, "float"),
                          "int8 MatMul weights in blocks (MatMulNBits), float activations, embedding float")


@GenAIBackend.recipe("int4-weight-only", symmetric=_SYMMETRIC, algorithm=_ALGORITHM, embedding=_EMBEDDING)
def _int4_weight_only(backend, prepared: Source, params: dict, ctx: Context) -> Artifact:
    options = _weight_only(params, params["activations"])
    if params["embedding"] == "int4":
        options["op_types_to_quantize"] = "MatMul/Gather"
    return genai_artifact(prepared, ctx, "int4", options,
                          f"4-bit weights in blocks (MatMulNBits), {params['activations']} activations")
