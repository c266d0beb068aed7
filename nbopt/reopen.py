"""Reopen after a restart: the studies kept in a store, listed and redrawn without running anything.

``nbopt.open(".nbopt")`` lists the studies of a store (a DataFrame, newest first); ``load_study(store, id)``
returns a ``StoredStudy``, a read-only view with what ``Study`` offers to read (``results``, ``pareto``,
``best``, ``plot``, ``to_html``, ``candidates[i].export``); ``nbopt.Panel.open`` draws one in the panel and
``nbopt report`` renders one. The rows are those the study showed when it last ran (its metric included);
running the same ``optimize()`` again measures what is missing and updates the record.

The Study writes the record (``study_record`` gives its id and meta): ``Store.record_study`` when it starts,
``Store.update_study_rows`` after each candidate and when it ends. Reading opens the database read-only.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .candidate import Candidate, StudyResults
from .errors import NboptError
from .metrics import METRICS, Metric
from .schema import OK
from .store import candidate_key, read_only, read_studies, read_study

DB_NAME = "nbopt.sqlite"
SHORT = 8  # characters of a study id shown (longer where needed to tell two apart)
COLUMNS = ("study", "model", "data", "metric", "backends", "rows", "ok", "finished", "created", "updated")
_PATH_KEYS = ("artifact_path", "outputs_path", "log")


# -- what the Study records ---------------------------------------------------------------------------------
def study_record(study, model: str) -> tuple[str, dict]:
    """``(study id, meta)`` of a constructed ``Study``; ``model`` describes the model in a few words.

    The id hashes what makes it "the same study": each backend's model fingerprint, the data fingerprints,
    the metric, the planned candidates and the deployed batch size. Running the same ``optimize()`` again
    gives the same id (its record is updated); another model, data, metric or recipe list gives a new one."""
    calib = study.calib_data
    plan = [item.name for item in study.plan]
    sid = candidate_key(kind="study", model=dict(study._model_fp), eval=study.eval_data.fingerprint,
                        calib=getattr(calib, "fingerprint", None), metric=study.metric.name, plan=plan,
                        batch_size=study.latency.batch_size)
    from ._version import __version__

    meta = {
        "model": str(model),
        "data": {"eval": _data_meta(study.eval_data), "calib": _data_meta(calib) if calib is not None else None},
        "metric": study.metric.name,
        "higher_is_better": bool(study.metric.greater_is_better),
        "backends": list(study.backends),
        "recipes": list(dict.fromkeys(item.recipe.label for item in study.plan)),
        "candidates": plan,
        "total": study.total,
        "objectives": list(study.objectives),
        "max_accuracy_drop": study.max_accuracy_drop,
        "batch_size": study.latency.batch_size,
        "versions": {name: _versions(b) for name, b in study.backends.items()},
        "nbopt": __version__,
    }
    return sid, meta


def _data_meta(data) -> dict:
    return {"fingerprint": data.fingerprint, "examples": data.num_examples, "labels": bool(data.has_labels)}


def _versions(backend) -> dict:
    try:
        return {str(k): str(v) for k, v in backend.versions().items()}
    except Exception:  # noqa: BLE001 - a version probe must not stop a study
        return {}


# -- listing ------------------------------------------------------------------------------------------------
def open(store: Any = ".nbopt"):  # noqa: A001 - nbopt.open, as the contract names it
    """The studies kept in ``store`` (a folder or a ``Store``): a DataFrame, one row per study, most
    recently updated first: ``study`` (its id, shortened: any unique prefix selects it), ``model``,
    ``data``, ``metric``, ``backends``, ``rows``, ``ok``, ``finished``, ``created``, ``updated``
    (local time). Redraw one with ``nbopt.Panel.open(store, study=...)``."""
    import pandas as pd

    folder, found = studies_in(store)
    if not found:
        _say_if_legacy(folder)
    short = _short_ids([s["id"] for s in found])
    records = [{"study": short[s["id"]], "model": s["meta"].get("model", ""), "data": _data_text(s["meta"]),
                "metric": s["meta"].get("metric", ""), "backends": ", ".join(s["meta"].get("backends") or []),
                "rows": s["rows"], "ok": s["ok"], "finished": s["finished"], "created": s["created"],
                "updated": s["updated"]} for s in found]
    df = pd.DataFrame(records, columns=list(COLUMNS))
    for col in ("created", "updated"):
        df[col] = _local_times(df[col])
    df.attrs["store"] = str(folder)
    return df


def studies_in(store: Any) -> tuple[Path, list[dict]]:
    """``(folder, Store.studies()-like summaries)`` of a store, read-only."""
    folder = _folder(store)
    db = folder / DB_NAME
    return folder, read_studies(read_only(db), db)


def _folder(store: Any) -> Path:
    store = getattr(store, "folder", store)  # a Store (study.store) or a path
    if not isinstance(store, (str, os.PathLike)):
        raise NboptError(f"store must be a store folder (a path, default .nbopt), got {type(store).__name__}.")
    folder = Path(store)
    if not folder.is_dir():
        raise NboptError(f"There is no store folder '{folder}': give the folder passed as store=... "
                         "(default .nbopt).")
    if not (folder / DB_NAME).is_file():
        raise NboptError(f"'{folder}' is not an nbopt store: it has no {DB_NAME} (give the folder passed as "
                         "store=..., default .nbopt).")
    return folder


def _say_if_legacy(folder: Path) -> None:
    import sqlite3
    from contextlib import closing

    try:
        with closing(read_only(folder / DB_NAME)()) as con:
            n = con.execute("SELECT COUNT(*) FROM candidates").fetchone()[0]
    except sqlite3.Error:
        return
    if n:
        warnings.warn(f"nbopt: the store {folder} holds {n} measured candidates but no study record (they were "
                      "stored by an older nbopt): run the study again to record it; `nbopt report` can still "
                      "render the candidates.", stacklevel=3)


def _short_ids(ids: Sequence[str]) -> dict[str, str]:
    out = {}
    for sid in ids:
        n = SHORT
        while n < len(sid) and any(o != sid and o.startswith(sid[:n]) for o in ids):
            n += 1
        out[sid] = sid[:n]
    return out


def _data_text(meta: dict) -> str:
    data = meta.get("data") or {}
    parts = []
    for role in ("eval", "calib"):
        d = data.get(role)
        if d:
            n = d.get("examples")
            parts.append(f"{role} {n if n is not None else '?'} examples")
    return ", ".join(parts)


def _local_times(col):
    import pandas as pd

    times = pd.to_datetime(col, utc=True, format="ISO8601")
    return times.dt.tz_convert(_local_tz()).dt.tz_localize(None).dt.floor("s")


def _local_tz():
    from datetime import datetime

    return datetime.now().astimezone().tzinfo


# -- one study ----------------------------------------------------------------------------------------------
def load_study(store: Any = ".nbopt", study: str | None = None) -> "StoredStudy":
    """The study ``study`` of ``store`` (its id or a unique prefix of it, as git takes commit ids; None: the
    most recently updated one), read-only. An unknown or ambiguous prefix is one ``NboptError``."""
    folder, found = studies_in(store)
    if not found:
        raise NboptError(f"The store '{folder}' holds no recorded study yet: run nbopt.optimize(..., "
                         f"store='{folder}') first (a store written by an older nbopt has none).")
    if study is None:
        chosen = found[0]["id"]
    else:
        if not isinstance(study, str) or not study.strip():
            raise NboptError(f"study must be a study id (or the start of one), got {study!r}.")
        prefix = study.strip().lower()
        exact = [s["id"] for s in found if s["id"] == prefix]
        matches = exact or [s["id"] for s in found if s["id"].startswith(prefix)]
        short = _short_ids([s["id"] for s in found])
        if len(matches) > 1:
            raise NboptError(f"'{study}' is the start of {len(matches)} studies in '{folder}' "
                             f"({', '.join(short[m] for m in matches)}): give more of the id.")
        if not matches:
            known = "; ".join(f"{short[s['id']]} ({s['meta'].get('model', '?')}, {s['meta'].get('metric', '?')})"
                              for s in found)
            raise NboptError(f"The store '{folder}' has no study '{study}'; its studies: {known}.")
        chosen = matches[0]
    db = folder / DB_NAME
    record = read_study(read_only(db), db, chosen)
    if record is None:  # removed between the two reads
        raise NboptError(f"The study '{chosen}' is no longer in the store '{folder}'.")
    return StoredStudy(folder, record)


@dataclass(frozen=True)
class _StoredBackend:
    """A backend as the model card needs it: the library versions that built the study's artifacts."""

    recorded: dict

    def versions(self) -> dict:
        return dict(self.recorded)


@dataclass(frozen=True)
class _StoredData:
    fingerprint: str | None
    num_examples: int | None


@dataclass(frozen=True)
class _Latency:
    batch_size: int


class StoredStudy(StudyResults):
    """A study as its store recorded it: read it like a ``Study`` (nothing is run or measured again)."""

    def __init__(self, folder: Path, record: dict):
        meta = record["meta"]
        self.store, self.id, self.meta = Path(folder), record["id"], meta
        self.created, self.updated, self.started = record["created"], record["updated"], record.get("started")
        self.finished = bool(record["finished"])
        self.stopped = not self.finished
        self.model = meta.get("model", "")
        self.metric = _metric(meta)
        self.objectives = tuple(meta.get("objectives") or ("size", "accuracy"))
        self.max_accuracy_drop = meta.get("max_accuracy_drop")
        self.latency = _Latency(int(meta.get("batch_size") or 1))
        names = list(meta.get("backends") or dict.fromkeys(r.get("backend") for r in record["rows"]))
        versions = meta.get("versions") or {}
        self.backends = {n: _StoredBackend(versions.get(n) or {}) for n in names}
        data = meta.get("data") or {}
        self.eval_data = _StoredData(*_data_fields(data.get("eval")))
        self.calib_data = _StoredData(*_data_fields(data["calib"])) if data.get("calib") else None
        rows = _with_files(record["rows"], self.store)
        self.candidates = [Candidate(_relocated(r, self.store), self) for r in rows]
        self.total = max(int(meta.get("total") or 0), len(self.candidates))

    @property
    def short_id(self) -> str:
        return self.id[:SHORT]

    def size_table(self, name: str) -> dict:
        """Where candidate ``name``'s bytes go, as stored with its row."""
        cand = next((c for c in self.candidates if c.name == name), None)
        if cand is None:
            raise NboptError(f"This study has no candidate '{name}'; its candidates: "
                             f"{', '.join(c.name for c in self.candidates)}.")
        if cand.row.get("status") != OK:
            raise NboptError(f"Candidate '{name}' has no artifact ({cand.row.get('status')}: {cand.row.get('error')}).")
        if not cand.row.get("size_breakdown"):
            raise NboptError(f"The store has no size breakdown of '{name}': the {cand.row.get('backend')} backend "
                             "cannot read where its bytes go.")
        return cand.row["size_breakdown"]

    def describe(self) -> str:
        """One line: id, model, metric, how many rows, finished or stopped."""
        state = "finished" if self.finished else f"stopped after {len(self.candidates)} of {self.total} candidates"
        return (f"study {self.short_id} ({self.model}; metric {self.metric.name}; "
                f"{', '.join(self.backends)}): {len(self.candidates)} rows, {state}, last run {self.updated[:19]} UTC")

    def __repr__(self) -> str:
        ok = sum(c.row.get("status") == OK for c in self.candidates)
        return (f"<nbopt.StoredStudy {self.short_id} {len(self.candidates)} rows ({ok} ok) metric={self.metric.name}"
                f"{'' if self.finished else ' (stopped)'}>")


def _metric(meta: dict) -> Metric:
    """The stored metric by name (its direction as recorded); a callable one cannot be called again."""
    name = str(meta.get("metric") or "metric")
    known = METRICS.get(name)
    higher = meta.get("higher_is_better", known.greater_is_better if known else True)

    def not_stored(outputs, labels):
        raise NboptError(f"The metric '{name}' of a reopened study cannot be computed again: run the study.")

    if known is None:
        return Metric(name, not_stored, greater_is_better=bool(higher), needs_labels=False)
    return Metric(name, known.fn, bool(higher), known.needs_labels, known.vs_baseline)


def _data_fields(d: dict | None) -> tuple[str | None, int | None]:
    d = d or {}
    return d.get("fingerprint"), d.get("examples")


def _with_files(rows: list[dict], folder: Path) -> list[dict]:
    """Rows recorded without their ``artifact_files`` (public rows) get them from the candidate's own row in
    the store (its key is the artifact's folder name): an export needs every file (ONNX external data)."""
    keys = {Path(r["artifact_path"]).parent.name for r in rows
            if r.get("status") == OK and r.get("artifact_path") and "artifact_files" not in r}
    if not keys:
        return rows
    import json
    import sqlite3
    from contextlib import closing

    marks = ", ".join("?" * len(keys))
    try:
        with closing(read_only(folder / DB_NAME)()) as con:
            found = dict(con.execute(f"SELECT key, row FROM candidates WHERE key IN ({marks})", sorted(keys)))
    except sqlite3.Error:
        return rows
    out = []
    for r in rows:
        try:
            files = json.loads(found[Path(r["artifact_path"]).parent.name]).get("artifact_files")
        except (KeyError, TypeError, ValueError, AttributeError):
            files = None
        out.append({**r, "artifact_files": files} if isinstance(files, list) and "artifact_files" not in r else r)
    return out


def _relocated(row: dict, folder: Path) -> dict:
    """The row, its store paths (artifacts/..., logs/...) pointed at the same files under ``folder``, the
    store being read, where they are there: a store that was moved or copied reads its own files."""
    row = dict(row)
    for key in _PATH_KEYS:
        if row.get(key):
            row[key] = _relocate(row[key], folder)
    if isinstance(row.get("artifact_files"), list):
        row["artifact_files"] = [_relocate(f, folder) for f in row["artifact_files"]]
    return row


def _relocate(path: Any, folder: Path) -> Any:
    if not isinstance(path, str):
        return path
    parts = Path(path).parts
    for top in ("artifacts", "logs"):
        if top in parts:
            i = len(parts) - 1 - parts[::-1].index(top)
            moved = folder.joinpath(*parts[i:])
            if ".." not in parts[i:] and moved.exists():
                return str(moved)
    return path
