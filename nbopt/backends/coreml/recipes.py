"""Core ML recipes: one registered handler per recipe name.

Weight compression (``coremltools.optimize.coreml``) is applied to the fp16 program: fp16 is how Core ML
models ship (the Neural Engine computes in fp16 only), so int8 / int4 / pruned rows are "compressed
weights, fp16 compute". coremltools leaves weight tensors of 2048 elements or fewer as they are (its
default ``weight_threshold``, kept: they weigh little); the notes say how many tensors were compressed.
"""
from __future__ import annotations

import zlib

from ...errors import CandidateError, library_failure
from ...quiet import quiet
from ..base import Artifact, Context, Param
from .convert import BASE_TARGET, BLOCKWISE_TARGET, artifact, package_files, write_package
from .backend import CoreMLBackend, CoreMLPrepared
from .reports import Report

THRESHOLD = 2048  # coremltools' default weight_threshold, passed explicitly so the notes stay true


def _compress(mlmodel, function: str, op_config):
    """Apply one ``coremltools.optimize.coreml`` function with one config for every op."""
    import coremltools.optimize.coreml as cto

    with library_failure(f"coremltools {function}"), quiet():
        return getattr(cto, function)(mlmodel, config=cto.OptimizationConfig(global_config=op_config))


def _check_compressed(report: Report | None, recipe: str, hint: str = "") -> None:
    if report is not None and report.total and report.compressed == 0:
        raise CandidateError(f"{recipe} compressed no weight tensor: coremltools only compresses tensors with "
                             f"more than {THRESHOLD} elements{hint}.")


def _notes(how: str, report: Report | None, target: str, prepared: CoreMLPrepared) -> str:
    weights = report.text if report else "weights unknown"
    return f"{how}: {weights}; fp16 compute; minimum deployment target {target}; {prepared.note}"


@CoreMLBackend.recipe("fp16")
def _fp16(backend, prepared: CoreMLPrepared, params: dict, ctx: Context) -> Artifact:
    path, report = write_package(prepared.program("fp16"), ctx, "fp16")
    notes = (f"fp16 weights and compute (ct.convert compute_precision=FLOAT16), fp32 inputs/outputs, minimum "
             f"deployment target {BASE_TARGET}; {prepared.note}")
    return artifact(path, notes, report, min_deployment_target=BASE_TARGET, compute_precision="fp16")


@CoreMLBackend.recipe("int8-weight-only")
def _int8_weight_only(backend, prepared: CoreMLPrepared, params: dict, ctx: Context) -> Artifact:
    from coremltools.optimize.coreml import OpLinearQuantizerConfig

    group = params["group_size"]
    if group is None:  # one scale per output channel: runs from iOS16
        target, scales, stem = BASE_TARGET, "per-channel scales", "int8_weight_only"
        config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=THRESHOLD)
    else:  # one scale per block of input channels: iOS18's blockwise format
        target, scales, stem = BLOCKWISE_TARGET, f"one scale per {group} input channels", f"int8_g{group}"
        config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_block",
                                         block_size=int(group), weight_threshold=THRESHOLD)
    model = _compress(prepared.program("fp16", target), "linear_quantize_weights", config)
    path, report = write_package(model, ctx, stem)
    _check_compressed(report, "int8-weight-only", _group_hint(group))
    notes = _notes(f"linear_quantize_weights (symmetric int8, {scales})", report, target, prepared)
    return artifact(path, notes, report, min_deployment_target=target, compute_precision="fp16")


def _group_hint(group) -> str:
    if group is None:
        return ""
    return f" whose input channels are a multiple of group_size={group}; try a smaller group_size"


@CoreMLBackend.recipe("int4-weight-only",
                      honours={"activations": ("float",)},
                      method=Param("linear", choices=("linear", "palettize"),
                                   help="linear: int4 with one scale per group_size input channels (iOS18+); "
                                        "palettize: each weight tensor as 4-bit indices into its own 16-value "
                                        "k-means table (iOS16+; group_size does not apply)"))
def _int4_weight_only(backend, prepared: CoreMLPrepared, params: dict, ctx: Context) -> Artifact:
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OpPalettizerConfig

    group = int(params["group_size"])
    if params["method"] == "palettize":
        target, stem, hint = BASE_TARGET, "int4_palette", ""
        how = "palettize_weights (4-bit k-means lookup table per tensor, fp16 table values; group_size unused)"
        function = "palettize_weights"
        config = OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor", weight_threshold=THRESHOLD)
    else:  # one scale per block of input channels: iOS18's blockwise format
        target, stem, hint = BLOCKWISE_TARGET, f"int4_g{group}", _group_hint(group)
        how = f"linear_quantize_weights (symmetric int4, one scale per {group} input channels)"
        function = "linear_quantize_weights"
        config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=group, weight_threshold=THRESHOLD)
    model = _compress(prepared.program("fp16", target), function, config)
    path, report = write_package(model, ctx, stem)
    _check_compressed(report, "int4-weight-only", hint)
    return artifact(path, _notes(how, report, target, prepared), report, min_deployment_target=target,
                       compute_precision="fp16")


@CoreMLBackend.recipe("prune-unstructured")
def _prune_unstructured(backend, prepared: CoreMLPrepared, params: dict, ctx: Context) -> Artifact:
    from coremltools.optimize.coreml import OpMagnitudePrunerConfig

    amount = float(params["amount"])
    config = OpMagnitudePrunerConfig(target_sparsity=amount, weight_threshold=THRESHOLD)
    model = _compress(prepared.program("fp16"), "prune_weights", config)
    path, report = write_package(model, ctx, f"pruned_{int(round(amount * 100))}")
    _check_compressed(report, "prune-unstructured")
    # zeros also shrink a compressed download; below ~6% sparsity the sparse format is larger than dense fp16
    compressed = sum(len(zlib.compress(f.read_bytes(), 9)) for f in package_files(path))
    info = {"size_compressed_bytes": compressed}
    if report and report.sparsity is not None:
        info["sparsity"] = round(report.sparsity, 4)
    how = (f"prune_weights (one-shot magnitude pruning of {amount:.0%} of each tensor, no fine-tuning; stored in "
           "Core ML's sparse format: a bit mask plus the non-zero values)")
    notes = _notes(how, report, BASE_TARGET, prepared) + (
        "; size is the package in that sparse format, size_compressed_bytes its files zlib-compressed")
    return artifact(path, notes, report, min_deployment_target=BASE_TARGET, compute_precision="fp16", **info)
