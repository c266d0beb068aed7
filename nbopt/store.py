"""The study store: finished candidates survive re-runs, interruptions and crashes.

Layout of the store folder::

    nbopt.sqlite        one row per finished candidate (key -> result row as JSON), written in a transaction
    artifacts/<key>/    the candidate's files, moved into place atomically once complete
    logs/<key>.log      what the libraries printed while the candidate was built and measured

A key hashes everything that decides a result: model weights, data, metric, backend, recipe, params and
library versions. The same study run again finds every key and measures nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any


def candidate_key(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Store:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        (self.folder / "artifacts").mkdir(parents=True, exist_ok=True)
        (self.folder / "tmp").mkdir(exist_ok=True)
        self.db = self.folder / "nbopt.sqlite"
        with closing(self._connect()) as con, con:
            con.execute("CREATE TABLE IF NOT EXISTS candidates (key TEXT PRIMARY KEY, row TEXT NOT NULL, "
                        "created TEXT DEFAULT CURRENT_TIMESTAMP)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db, timeout=30)

    def get(self, key: str) -> dict | None:
        with closing(self._connect()) as con:
            hit = con.execute("SELECT row FROM candidates WHERE key = ?", (key,)).fetchone()
        if hit is None:
            return None
        row = json.loads(hit[0])
        files = [Path(f) for f in row.get("artifact_files", [])]
        if row.get("status") == "ok" and not all(f.exists() for f in files):
            return None  # artifact deleted by hand: measure again rather than show a dead row
        return row

    def put(self, key: str, row: dict) -> None:
        with closing(self._connect()) as con, con:
            con.execute("INSERT OR REPLACE INTO candidates (key, row) VALUES (?, ?)",
                        (key, json.dumps(row, default=_json_default)))

    def workdir(self) -> Path:
        """A fresh scratch folder for a candidate being built (inside the store: same filesystem)."""
        path = self.folder / "tmp" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def commit_files(self, key: str, workdir: Path) -> Path:
        """Move a finished candidate's folder into place in one rename."""
        final = self.folder / "artifacts" / key
        if final.exists():
            shutil.rmtree(final)
        os.replace(workdir, final)
        return final

    def log_path(self, name: str) -> Path:
        """Where the captured library output of a candidate (or a backend's preparation) is kept."""
        path = self.folder / "logs" / f"{name}.log"
        path.parent.mkdir(exist_ok=True)
        return path

    def discard(self, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
