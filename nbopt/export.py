"""Export a candidate: its deployable file(s) copied out of the store, plus a JSON model card.

Export never destroys: every file it would write (the model, its companion files, the card) is checked
before anything is written, an existing one is replaced only with ``overwrite=True``, and the files are
written beside their targets first and then moved into place, so a refused or failed export leaves
nothing behind. ONNX external data is named after the exported file (``name.onnx.data``), so exports
into one folder never share a data file.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import NboptError, one_line
from .schema import CARD_METRICS, OK

# suffixes replaced by the artifact's own (``model.tflite`` for an ONNX candidate gives ``model.onnx``);
# any other suffix is part of the name (``model.v2`` gives ``model.v2.onnx``)
MODEL_SUFFIXES = {".onnx", ".tflite", ".pte", ".pt2", ".mlpackage", ".mlmodel", ".gguf", ".npz", ".keras",
                  ".json", ".data", ".bin"}


@dataclass
class _Write:
    target: Path  # where the file (or package folder) ends up
    what: str  # "model file", "external-data file", "model card", ...


def export_candidate(candidate, path: Path, overwrite: bool = False) -> Path:
    """Write the candidate's deployable file at ``path`` and ``<path stem>.json``, the model card.

    ``path`` may be a file path (the artifact's suffix is added or put in place of another model suffix) or
    an existing folder (the file is then ``<folder>/<candidate name>.<ext>``). ONNX external data is
    written as ``<file name>.data`` beside it. Exporting onto the artifact itself does nothing. Returns the
    model path."""
    row = candidate.row
    if row["status"] != OK:
        raise NboptError(f"Candidate '{row['name']}' has no artifact to export (status {row['status']}: "
                         f"{row['error']}).")
    main = Path(row["artifact_path"])
    files = [Path(f) for f in row.get("artifact_files") or [main]]
    if not main.exists():
        raise NboptError(f"The artifact of '{row['name']}' is gone from the store ({main}); run the study again.")
    target = target_path(Path(path), main, row["name"])
    if _same(target, main):
        return target  # exporting onto the artifact itself: nothing to do
    onnx_data = row.get("format") == "onnx" and not main.is_dir() and any(f != main for f in files)
    writes = [_Write(target, "model package" if main.is_dir() else "model file")]
    if onnx_data:
        writes.append(_Write(target.with_name(target.name + ".data"), "external-data file"))
    elif not main.is_dir():  # another format's companions are referenced by name: they keep it
        writes += [_Write(target.parent / f.name, "companion file") for f in files if f != main]
    writes.append(_Write(target.with_suffix(".json"), "model card"))
    _check(writes, main, files, overwrite)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".nbopt-export-", dir=target.parent))
    except OSError as exc:
        raise NboptError(f"Cannot export to '{target}': the folder cannot be created or written "
                         f"({one_line(exc)}).") from exc
    try:
        staged = [stage / str(i) for i in range(len(writes))]
        if main.is_dir():  # a package format (.mlpackage): the folder is the model
            shutil.copytree(main, staged[0])
        elif onnx_data:
            from .backends.onnx.convert import copy_model  # the onnx backend knows where its data lives

            copy_model(main, staged[0], staged[1], writes[1].target.name)
        else:
            shutil.copyfile(main, staged[0])
            for extra, dst in zip((f for f in files if f != main), staged[1:-1]):
                shutil.copyfile(extra, dst)
        staged[-1].write_text(json.dumps(model_card(candidate, target), indent=2, default=str))
        for src, write in zip(staged, writes):
            _put(src, write.target)
    except OSError as exc:  # a full disk, a read-only folder: one sentence, the store untouched
        raise NboptError(f"Could not write the export to '{target.parent}' ({one_line(exc)}).") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def target_path(path: Path, main: Path, name: str) -> Path:
    """The model file an export to ``path`` writes, for the artifact ``main`` of candidate ``name``."""
    suffix = main.suffix
    package = main.is_dir()
    if path.is_dir() and not (package and path.suffix == suffix):
        return path / f"{safe_name(name)}{suffix}"
    if path.suffix == suffix:
        return path
    if path.suffix.lower() in MODEL_SUFFIXES:
        return path.with_suffix(suffix)
    return path.with_name(path.name + suffix)


def safe_name(name: str) -> str:
    """A candidate name as a file name: ``onnx:int8-static(calibration=entropy)`` ->
    ``onnx_int8-static_calibration_entropy``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(a: Path, b: Path) -> bool:
    try:
        return a.resolve().is_relative_to(b.resolve())
    except (OSError, RuntimeError):
        return False


def _check(writes: list[_Write], main: Path, files: list[Path], overwrite: bool) -> None:
    """Every target, before anything is written: one NboptError for the first that cannot be written."""
    sources = [main, *files]
    for w in writes:
        t = w.target
        if any(_same(t, s) for s in sources) or (main.is_dir() and _inside(t, main)):
            raise NboptError(f"Exporting to '{t}' would write over the candidate's own artifact in the store: "
                             "choose a path outside it.")
        for parent in t.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise NboptError(f"Cannot export to '{t}': '{parent}' is a file, not a folder.")
                break
        if not (t.exists() or t.is_symlink()):
            continue
        if t.is_dir() != (w.what == "model package"):
            kind = "folder" if t.is_dir() else "file"
            raise NboptError(f"Cannot export the {w.what} to '{t}': a {kind} of that name is in the way; "
                             "choose another path.")
        if not overwrite:
            raise NboptError(f"'{t}' already exists: pass overwrite=True to replace it, or choose another path.")


def _put(src: Path, target: Path) -> None:
    """Move a staged file (or package folder) to ``target``, replacing what is there (checked before)."""
    if src.is_dir() and target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.nbopt-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.is_symlink() and src.is_dir():
            target.unlink()
        os.replace(src, target)


def model_card(candidate, path: Path) -> dict:
    study = candidate.study
    row = candidate.row
    backend = study.backends.get(row["backend"])
    metrics = {k: row.get(k) for k in CARD_METRICS}
    return {
        "model_file": path.name,
        "format": row["format"],
        "backend": row["backend"],
        "recipe": row["recipe"],
        "params": row["params"],
        "notes": row.get("notes"),
        # what the app must do to an input before this file takes it (resolution: the resize), and the input
        # shape when it differs from the model's; None: the inputs the model itself was given
        "preprocessing": row.get("preprocessing"),
        "input_shape": row.get("input_shape"),
        "metric": study.metric.name,
        "metrics": metrics,
        "data": {"eval_fingerprint": study.eval_data.fingerprint,
                 "calib_fingerprint": getattr(study.calib_data, "fingerprint", None),
                 "eval_examples": study.eval_data.num_examples},
        "versions": {"nbopt": _nbopt_version(), "python": platform.python_version(),
                     **(backend.versions() if backend else {})},
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _nbopt_version() -> str:
    from ._version import __version__

    return __version__
