"""Export a candidate: its deployable file(s) copied out of the store, plus a JSON model card."""
from __future__ import annotations

import json
import platform
import shutil
from datetime import datetime, timezone
from pathlib import Path

from .errors import NboptError
from .schema import CARD_METRICS, OK


def export_candidate(candidate, path: Path) -> Path:
    """Copy the artifact to ``path`` (companion files, e.g. ONNX external data, beside it, same names)
    and write ``<path stem>.json``, the model card. Returns the written model path."""
    row = candidate.row
    if row["status"] != OK:
        raise NboptError(f"Candidate '{row['name']}' has no artifact to export (status {row['status']}: "
                         f"{row['error']}).")
    files = [Path(f) for f in row.get("artifact_files") or [row["artifact_path"]]]
    main = Path(row["artifact_path"])
    if not main.exists():
        raise NboptError(f"The artifact of '{row['name']}' is gone from the store ({main}); run the study again.")
    suffix = main.suffix
    path = Path(path)
    if path.suffix != suffix:
        path = path.with_name(path.name + suffix) if not path.suffix else path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    if main.is_dir():  # a package format (.mlpackage): the folder is the model
        shutil.copytree(main, path, dirs_exist_ok=True)
    else:
        shutil.copyfile(main, path)
        for extra in files:
            if extra != main:  # referenced by relative name from the main file: keep the name
                shutil.copyfile(extra, path.parent / extra.name)
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(model_card(candidate, path), indent=2, default=str))
    return path


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
