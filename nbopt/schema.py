"""The result row, its statuses, the study's events and the ``Artifact.info`` keys that become columns.

One definition for every reader: ``Study.results``, the report, the model card, the command line and the
panel (whose TypeScript ``Row`` type lists the same fields; a test checks it). A column that is not
measured for a row stays ``None``: it is never estimated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "str", "int", "float", "bool", "dict", "list"
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("name", "str", "backend:recipe(parameters the user set or that differ from the defaults)"),
    Column("backend", "str", "the backend that built the artifact (torch, onnx, tflite, coreml)"),
    Column("recipe", "str", "the canonical recipe name, 'baseline' for the model as given"),
    Column("params", "dict", "every parameter of the recipe, defaults filled in"),
    Column("format", "str", "the artifact's format (pte, pt2, onnx, tflite, mlpackage)"),
    Column("status", "str", "ok, failed or skipped"),
    Column("error", "str", "why a row failed or was skipped (one line; the full output is in the log)"),
    Column("size_bytes", "int", "bytes on disk of the artifact's files, external data included"),
    Column("size_ratio", "float", "size against the same backend's baseline"),
    Column("size_compressed_bytes", "int", "the artifact zlib-compressed (shown where zeros only shrink a "
                                           "compressed file: pruning)"),
    Column("accuracy", "float", "the study's metric on the evaluation data, whatever the metric is"),
    Column("accuracy_drop", "float", "drop against the same backend's baseline (positive = worse)"),
    Column("accuracy_drop_low", "float", "lower end of the drop's 95 % paired bootstrap interval over the "
                                         "evaluation examples"),
    Column("accuracy_drop_high", "float", "upper end of that interval; best(budget_on='upper') holds it to "
                                          "the budget"),
    Column("latency_ms", "float", "median of timed runs after warm-up, in the artifact's own runtime"),
    Column("latency_p90_ms", "float", "90th percentile of the same runs"),
    Column("peak_memory_mb", "float", "peak RSS growth of loading and running the artifact, fresh process"),
    Column("threads", "int", "the runtime's thread count during the latency runs"),
    Column("batch_size", "int", "the batch of the latency runs"),
    Column("notes", "str", "what the recipe really did: layers quantized, exporter, fallbacks"),
    Column("artifact_path", "str", "the deployable file in the store"),
    Column("log", "str", "the candidate's captured library output (converters, runtimes)"),
    Column("build_seconds", "float", "seconds to build and measure the candidate"),
    Column("per_class", "list", "per class of integer labels: class, n, accuracy, baseline, drop; biggest loss "
                                "first (top 50)"),
    Column("size_breakdown", "dict", "bytes by dtype, the largest tensors, the file's segments, notes"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)

# ``Artifact.info`` keys a backend may set; each becomes a column of the same name.
INFO_COLUMNS: tuple[Column, ...] = (
    Column("quantized", "str", "which layers were quantized, e.g. '2/2 Linear (int8), 0/2 Conv2d (fp32)'"),
    Column("runtime", "str", "the runtime that runs the artifact (executorch, torch.export, ...)"),
    Column("delegates", "str", "which ops a phone's GPU delegate / int8-only accelerators would take"),
    Column("sparsity", "float", "fraction of weights that are zero"),
    Column("params_before", "int", "parameters before structured pruning"),
    Column("params_after", "int", "parameters after structured pruning"),
    Column("quantizer", "str", "the PT2E quantizer used"),
    Column("kept_float", "int", "nodes mixed precision kept in float"),
    Column("calib_rel_error", "float", "relative output error on calibration data (mixed precision)"),
    Column("delegate_report", "str", "path of the JSON delegate report beside the artifact"),
    Column("unmeasured", "str", "why accuracy and latency are empty (e.g. Core ML needs macOS)"),
    Column("train_seconds", "float", "seconds spent training (training-based recipes: qat, distill, fine-tunes)"),
    Column("train_epochs", "int", "epochs the training ran (fewer than asked when max_train_seconds ran out)"),
    Column("student", "str", "the distilled student's architecture, e.g. 'MobileNetV3-style, width 0.5'"),
    Column("preprocessing", "str", "what the app must do to an input before this artifact takes it "
                                   "(e.g. 'resize 28x28 -> 21x21, area interpolation')"),
    Column("input_shape", "str", "the artifact's input shape when it differs from the model's"),
)
INFO_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in INFO_COLUMNS)
# internal row keys that never reach a view
PRIVATE_KEYS = frozenset({"artifact_files", "outputs_path"})

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
STATUSES = (OK, FAILED, SKIPPED)

# event name -> the payload keys it carries (callbacks get ``(event, payload)``)
EVENTS: dict[str, tuple[str, ...]] = {
    "study_started": ("total",),
    "candidate_started": ("index", "name", "backend", "recipe", "params", "cached"),
    "candidate_finished": ("row",),  # an ok or skipped row
    "candidate_failed": ("row",),
    # a training candidate's progress, after every epoch and every few seconds within one
    "training_progress": ("name", "phase", "epoch", "epochs", "batch", "loss", "holdout_loss", "seconds"),
    "study_finished": ("stopped",),
}

# the columns the report's table and the command line's table show, in order
TABLE_COLUMNS = ("name", "status", "format", "size_bytes", "size_ratio", "size_compressed_bytes", "accuracy",
                 "accuracy_drop", "latency_ms", "latency_p90_ms", "peak_memory_mb", "threads", "notes", "error")
# what a model card records about the candidate's measurements
CARD_METRICS = ("size_bytes", "size_ratio", "size_compressed_bytes", "accuracy", "accuracy_drop",
                "accuracy_drop_low", "accuracy_drop_high", "latency_ms", "latency_p90_ms", "peak_memory_mb",
                "threads", "batch_size")


def empty_row(name: str, backend: str, recipe: str, params: dict) -> dict:
    row: dict[str, Any] = {c: None for c in COLUMN_NAMES}
    row.update(name=name, backend=backend, recipe=recipe, params=dict(params), error="")
    return row


def public(row: dict) -> dict:
    """The row as views see it (no internal keys)."""
    return {k: v for k, v in row.items() if k not in PRIVATE_KEYS}


_FROM_INFO = frozenset(INFO_COLUMN_NAMES) | {"size_compressed_bytes"}  # the one main column a backend fills


def info_columns(info: dict) -> dict:
    """The ``Artifact.info`` entries that become columns (declared keys, plain values only)."""
    return {k: v for k, v in info.items()
            if k in _FROM_INFO and (isinstance(v, (str, int, float, bool)) or v is None)}
