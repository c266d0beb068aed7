"""The study store: finished candidates survive re-runs, interruptions, crashes and a second process.

Layout of the store folder::

    nbopt.sqlite        one row per finished candidate (key -> result row as JSON), written in a transaction;
                        and one row per study (id -> what it was run on, its scored rows, finished or not)
    artifacts/<key>/    the candidate's files, moved into place atomically once complete
    logs/<key>.log      what the libraries printed while the candidate was built and measured
    locks/<key>.lock    one lock file per candidate key (``fcntl.flock``): one process builds, the others wait
    tmp/<pid>-t<start>-<uuid>/   scratch: candidates being built, backends' scratch work; owned by process
                        <pid> (started <start> clock ticks after boot, so that a reused pid is not taken
                        for the owner)

A key hashes everything that decides a result: model weights, data, metric, backend, recipe, params and
library versions. The same study run again finds every key and measures nothing twice; only ``ok`` rows
are reused (failed and skipped candidates are built again).

A study is recorded next to its candidates (``record_study`` when it starts, ``update_study_rows`` after each
candidate), so that it can be listed and redrawn after a restart without running anything
(``nbopt.open``, ``nbopt.Panel.open``, ``nbopt report``): the candidates table keeps measurements, whose
metric is recomputed on every run; the studies table keeps each study's rows as it last showed them.

What survives:

- a corrupt ``nbopt.sqlite`` is moved aside (``nbopt.sqlite.corrupt-<time>``) with a warning, and a fresh
  one is started;
- a folder that cannot be written is one ``NboptError`` when the store is opened; a row that cannot be
  written is one ``StoreWriteError`` from ``put`` (the transaction leaves nothing half-written);
- two processes on one store coordinate per key: ``with store.lock(key): row = store.get(key); ...``.
  A folder is deleted only under its key's lock and only when no ``ok`` row uses it;
- scratch folders of processes that died are removed when the store is next opened; those this
  ``Store`` created are removed by ``close()`` (and at garbage collection / interpreter exit).
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import NboptError, one_line

try:  # Linux, macOS
    import fcntl
except ImportError:  # Windows: no flock; locks degrade to no-ops (one process per store is then the rule)
    fcntl = None

OK = "ok"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS candidates (key TEXT PRIMARY KEY, row TEXT NOT NULL, "
           "created TEXT DEFAULT CURRENT_TIMESTAMP)")
_STUDIES_SCHEMA = ("CREATE TABLE IF NOT EXISTS studies (id TEXT PRIMARY KEY, meta TEXT NOT NULL, "
                   "rows TEXT NOT NULL DEFAULT '[]', n_rows INTEGER NOT NULL DEFAULT 0, "
                   "n_ok INTEGER NOT NULL DEFAULT 0, finished INTEGER NOT NULL DEFAULT 0, "
                   "created TEXT NOT NULL, started TEXT NOT NULL, updated TEXT NOT NULL)")
_STUDY_COLUMNS = frozenset({"id", "meta", "rows", "n_rows", "n_ok", "finished", "created", "started", "updated"})
_STUDY_SUMMARY = "id, meta, n_rows, n_ok, finished, created, started, updated"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_FIX = "pass store=... a folder you can write, or store=None for a temporary one"
_OLD_SCRATCH_AGE_S = 3600.0  # tmp entries without an owner pid (older nbopt) are removed once this old
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_TAG: tuple[int, str] = (-1, "")  # (pid, owner tag) of this process, see _owner_tag


class StoreWriteError(NboptError):
    """A result row could not be written to the store (read-only database, disk full, ...).

    Nothing was written: the caller keeps the row in memory and goes on."""


class StoreLockTimeout(NboptError, TimeoutError):
    """Another process held a candidate's lock longer than the ``timeout`` given to ``Store.lock``."""


def candidate_key(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Store:
    """A store folder. ``Store(folder)`` creates it if needed, checks it can be written (else one
    ``NboptError``), repairs what a crash left (corrupt database, scratch of dead processes, artifact
    folders of candidates that never got a row) and is then ready for ``get`` / ``put``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).absolute()  # workers run in other folders: paths must not depend on cwd
        self.db = self.folder / "nbopt.sqlite"
        self._created: set[Path] = set()  # scratch / work folders this object made and has not handed on
        self._held: dict[tuple[int, str], list] = {}  # (thread, key) -> [fd, depth]: lock() is re-entrant
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _remove_all, self._created, self._pid)
        self._check_writable()
        with self._store_lock():
            self._open_db()
            self._clean_stale_scratch()
            self._clean_orphan_artifacts()

    # -- opening ------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db, timeout=30)

    def _check_writable(self) -> None:
        probe = self.folder / "tmp" / f"{_owner_tag()}-probe-{uuid.uuid4().hex}"
        try:
            for sub in ("artifacts", "tmp", "locks", "logs"):
                (self.folder / sub).mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as fh:
                fh.write(b"nbopt write probe\n")
                fh.flush()
                os.fsync(fh.fileno())
            probe.unlink()
        except OSError as exc:
            raise NboptError(f"nbopt cannot write to the store folder '{self.folder}' "
                             f"({_os_reason(exc)}): {_FIX}.") from None

    def _open_db(self) -> None:
        """Open (or create) nbopt.sqlite; a corrupt one is moved aside once and a fresh one started."""
        for attempt in range(2):
            try:
                reason = self._db_problem()
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise NboptError(f"nbopt cannot use the store database '{self.db}' ({one_line(exc)}): "
                                     f"{_FIX}.") from None
                reason = one_line(exc)
            if reason is None:
                return
            if attempt:
                raise NboptError(f"nbopt cannot start a fresh store database '{self.db}' ({reason}): {_FIX}.")
            self._move_aside(reason)

    def _db_problem(self) -> str | None:
        """Why the database is unusable (corrupt), or None; sqlite errors propagate."""
        with closing(self._connect()) as con:
            check = con.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                return f"integrity check: {check[0][0] if check else 'no answer'}"
            with con:
                con.execute(_SCHEMA)
                con.execute(_STUDIES_SCHEMA)
            columns = {r[1] for r in con.execute("PRAGMA table_info(candidates)")}
            if not {"key", "row"} <= columns:
                return "its candidates table has no key/row columns"
            missing = _STUDY_COLUMNS - {r[1] for r in con.execute("PRAGMA table_info(studies)")}
            if missing:
                return f"its studies table has no {'/'.join(sorted(missing))} columns"
            # A write that is rolled back: a read-only database or a full disk shows up now, not mid-sweep.
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("INSERT OR REPLACE INTO candidates (key, row) VALUES (?, ?)", ("\x00probe", "{}"))
            finally:
                con.rollback()
        return None

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.db.with_name(f"{self.db.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.db.with_name(f"{self.db.name}.corrupt-{stamp}-{n}")
        try:
            os.replace(self.db, target)
            for suffix in ("-journal", "-wal", "-shm"):  # a hot journal must not be replayed into the fresh db
                companion = Path(f"{self.db}{suffix}")
                if companion.exists():
                    os.replace(companion, f"{target}{suffix}")
        except OSError as exc:
            raise NboptError(f"nbopt found the store database '{self.db}' corrupt ({reason}) and could not move "
                             f"it aside ({_os_reason(exc)}): {_FIX}.") from None
        warnings.warn(f"nbopt: the store database {self.db} was corrupt ({reason}); moved aside to {target}; "
                      "starting a fresh one", stacklevel=4)

    def _clean_stale_scratch(self) -> None:
        """Remove tmp/ entries of processes that are gone (interrupted candidates, killed kernels)."""
        now = time.time()
        for entry in _listdir(self.folder / "tmp"):
            try:
                st = entry.lstat()
            except OSError:
                continue
            owner = _owner(entry.name)
            if owner is None:
                stale = now - st.st_mtime > _OLD_SCRATCH_AGE_S  # written by an older nbopt: no owner recorded
            else:
                pid, started = owner
                # Gone, or its pid now belongs to a later process (containers restart with the same pids):
                # the start time since boot, recorded in the name, tells them apart without any wall clock.
                stale = not _pid_alive(pid) or (started is not None and _start_ticks(pid) not in (None, started))
            if stale:
                _remove(entry)

    def _clean_orphan_artifacts(self) -> None:
        """Remove artifacts/<key> folders that never got a row (a candidate interrupted after its commit);
        only under the key's lock, taken without waiting: a folder being built elsewhere is left alone."""
        folders = [p for p in _listdir(self.folder / "artifacts") if _SAFE_NAME.fullmatch(p.name)]
        if not folders:
            return
        keys = self._keys()
        if keys is None:
            return
        for folder in folders:
            if folder.name in keys:
                continue
            try:
                with self.lock(folder.name, timeout=0):
                    if not self._has_row(folder.name):
                        shutil.rmtree(folder, ignore_errors=True)
            except StoreLockTimeout:
                continue

    def _keys(self) -> set[str] | None:
        try:
            with closing(self._connect()) as con:
                return {k for (k,) in con.execute("SELECT key FROM candidates")}
        except sqlite3.Error:
            return None

    def _has_row(self, key: str) -> bool:
        try:
            with closing(self._connect()) as con:
                return con.execute("SELECT 1 FROM candidates WHERE key = ?", (key,)).fetchone() is not None
        except sqlite3.Error:
            return True  # when in doubt, keep the folder

    # -- rows ---------------------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        """The stored row of a finished candidate: only an ``ok`` row whose artifact files all exist.

        A failed or skipped row, an unreadable row or an unreadable database is a miss (built again)."""
        try:
            with closing(self._connect()) as con:
                hit = con.execute("SELECT row FROM candidates WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            warnings.warn(f"nbopt: could not read the store database {self.db} ({one_line(exc)}); "
                          "the candidate is built again", stacklevel=2)
            return None
        if hit is None:
            return None
        try:
            row = json.loads(hit[0])
        except (TypeError, ValueError):
            return None
        if not isinstance(row, dict) or row.get("status") != OK:
            return None  # failures are retried
        if not all(Path(f).exists() for f in row.get("artifact_files") or []):
            return None  # artifact deleted by hand: measure again rather than show a dead row
        return row

    def put(self, key: str, row: dict) -> None:
        """Store a row in one transaction; on any failure nothing is written and ``StoreWriteError`` says why."""
        try:
            text = json.dumps(row, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise StoreWriteError(f"nbopt could not save candidate {key} in the store: its row cannot be "
                                  f"written as JSON ({one_line(exc)}).") from None
        try:
            with closing(self._connect()) as con, con:
                con.execute("INSERT OR REPLACE INTO candidates (key, row) VALUES (?, ?)", (key, text))
        except (sqlite3.Error, OSError) as exc:
            reason = _os_reason(exc) if isinstance(exc, OSError) else one_line(exc)
            raise StoreWriteError(f"nbopt could not save candidate {key} in the store database '{self.db}' "
                                  f"({reason}); the result is kept in memory only: free disk space or make the "
                                  "store writable, and it will be built again on the next run.") from None

    # -- studies ------------------------------------------------------------------------------------
    def record_study(self, study_id: str, meta: dict) -> None:
        """Record a study as it starts (its id and what it runs on: ``meta``), or, for an id already
        recorded (the same study run again), replace its meta and mark it started now; its rows and
        ``finished`` stay until ``update_study_rows``. ``StoreWriteError`` when it cannot be written."""
        _safe_name(study_id)
        text = self._study_json(study_id, meta, "its description")
        now = _now()
        self._write_study(study_id, "INSERT INTO studies (id, meta, created, started, updated) VALUES (?, ?, ?, ?, ?) "
                          "ON CONFLICT(id) DO UPDATE SET meta = excluded.meta, started = excluded.started, "
                          "updated = excluded.updated", (study_id, text, now, now, now))

    def update_study_rows(self, study_id: str, rows: list[dict], finished: bool) -> None:
        """Replace a recorded study's rows (the scored rows, in order) in one transaction; ``finished`` is
        False while it runs and when it was stopped. ``StoreWriteError`` when it cannot be written, or when
        ``study_id`` was never recorded."""
        _safe_name(study_id)
        rows = list(rows)
        text = self._study_json(study_id, rows, "its rows")
        n_ok = sum(isinstance(r, dict) and r.get("status") == OK for r in rows)
        found = self._write_study(study_id, "UPDATE studies SET rows = ?, n_rows = ?, n_ok = ?, finished = ?, "
                                  "updated = ? WHERE id = ?",
                                  (text, len(rows), n_ok, int(bool(finished)), _now(), study_id))
        if not found:
            raise StoreWriteError(f"nbopt could not save the rows of study {study_id} in the store '{self.folder}': "
                                  "the study was never recorded there (record_study failed or was not called).")

    def studies(self) -> list[dict]:
        """Every recorded study, most recently updated first: ``{"id", "meta", "rows" (count), "ok" (count),
        "finished", "created", "started", "updated"}`` (times: UTC ISO 8601). A record whose meta cannot be
        read is left out with a warning; an unreadable database is one ``NboptError``."""
        return read_studies(self._connect, self.db)

    def study(self, study_id: str) -> dict | None:
        """One recorded study: ``{"id", "meta", "rows" (list of row dicts), "finished", "created", "started",
        "updated"}``; None when there is no such id. An unreadable record or database is one ``NboptError``."""
        return read_study(self._connect, self.db, study_id)

    def _study_json(self, study_id: str, value: Any, what: str) -> str:
        try:
            return json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise StoreWriteError(f"nbopt could not save study {study_id} in the store: {what} cannot be written "
                                  f"as JSON ({one_line(exc)}).") from None

    def _write_study(self, study_id: str, sql: str, params: tuple) -> int:
        try:
            with closing(self._connect()) as con, con:
                return con.execute(sql, params).rowcount
        except (sqlite3.Error, OSError) as exc:
            reason = _os_reason(exc) if isinstance(exc, OSError) else one_line(exc)
            raise StoreWriteError(f"nbopt could not save study {study_id} in the store database '{self.db}' "
                                  f"({reason}); its results are kept in memory only, and it cannot be reopened "
                                  "after a restart until it is run again with a writable store.") from None

    # -- locks --------------------------------------------------------------------------------------
    @contextmanager
    def lock(self, key: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the exclusive lock of one candidate key (``locks/<key>.lock``) for the ``with`` block.

        Blocks until the lock is free, or raises ``StoreLockTimeout`` after ``timeout`` seconds (``0``: do
        not wait). Re-entrant within one thread of one ``Store``. Other processes (and other ``Store``
        objects) wait. On Windows (no ``fcntl``) this is a no-op."""
        name = _safe_name(key)
        slot = (threading.get_ident(), name)
        held = self._held.get(slot)
        if held is not None:
            held[1] += 1
            try:
                yield
            finally:
                held[1] -= 1
            return
        if fcntl is None:  # Windows: no advisory locks here; a store must then serve one process at a time
            yield
            return
        path = self.folder / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock(fd, timeout, f"candidate {key} in the store '{self.folder}'")
            self._held[slot] = [fd, 1]
            try:
                yield
            finally:
                del self._held[slot]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """The whole store's lock, held while opening (moving a corrupt database aside, cleaning)."""
        with self.lock(".store"):
            yield

    # -- files --------------------------------------------------------------------------------------
    def workdir(self) -> Path:
        """A fresh scratch folder for a candidate being built (inside the store: same filesystem).

        Hand it on with ``commit_files`` or ``discard``; ``close()`` removes any left."""
        return self.scratch("")

    def scratch(self, prefix: str = "scratch") -> Path:
        """A new scratch folder under ``tmp/`` (a backend's exported model, caches, ...), removed by
        ``close()``, or on the next opening of the store if this process dies first."""
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", prefix).strip("-")
        path = self.folder / "tmp" / f"{_owner_tag()}-{label + '-' if label else ''}{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        self._created.add(path)
        return path

    def commit_files(self, key: str, workdir: Path) -> Path:
        """Move a finished candidate's folder into place in one rename, under the key's lock.

        When an ``ok`` row of this key already has its files in place (another process built it), that
        folder is kept and returned, and ``workdir`` is discarded: a folder in use is never deleted. A stale
        folder (failed or interrupted candidate) is replaced."""
        workdir = Path(workdir)
        final = self.folder / "artifacts" / _safe_name(key)
        trash = None
        with self.lock(key):  # a no-op re-entry when the caller holds it, as it should
            if final.exists() and self.get(key) is not None:
                self.discard(workdir)
                return final
            if final.exists() or final.is_symlink():
                trash = self.folder / "tmp" / f"{_owner_tag()}-trash-{uuid.uuid4().hex}"
                os.replace(final, trash)
                self._created.add(trash)
            try:
                os.replace(workdir, final)
            except OSError:
                if trash is not None:
                    os.replace(trash, final)
                    self._created.discard(trash)
                raise
            self._created.discard(workdir)
        if trash is not None:
            self.discard(trash)
        return final

    def discard(self, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        self._created.discard(Path(workdir))

    def log_path(self, name: str) -> Path:
        """Where the captured library output of a candidate (or a backend's preparation) is kept."""
        path = self.folder / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        """Remove every scratch / work folder this object created and has not committed. Idempotent; the
        store stays usable. Also runs when the object is garbage-collected or the interpreter exits."""
        _remove_all(self._created, self._pid)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict:  # a copy in another process owns no scratch and holds no lock
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.folder = Path(state["folder"])
        self.db = self.folder / "nbopt.sqlite"
        self._created, self._held, self._pid = set(), {}, os.getpid()
        self._finalizer = weakref.finalize(self, _remove_all, self._created, self._pid)

    def __repr__(self) -> str:
        return f"Store({str(self.folder)!r})"


# -- helpers ----------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


# -- reading studies (also without a Store: read-only, for nbopt.open and nbopt report) ---------------------
def read_only(db: Path):
    """A connection factory that opens ``db`` read-only (nothing is created, a read-only folder works)."""
    uri = Path(db).resolve().as_uri() + "?mode=ro"
    return lambda: sqlite3.connect(uri, uri=True, timeout=30)


def read_studies(connect, db: Path) -> list[dict]:
    """The study summaries of a store database, most recently updated first (see ``Store.studies``)."""
    found = _query(connect, db, f"SELECT {_STUDY_SUMMARY} FROM studies ORDER BY updated DESC, rowid DESC", ())
    out = []
    for rec in found:
        item = _study_dict(rec)
        if item is None:
            warnings.warn(f"nbopt: the record of study {rec[0]} in {db} cannot be read; it is left out",
                          stacklevel=3)
            continue
        item["rows"], item["ok"] = item.pop("n_rows"), item.pop("n_ok")
        out.append(item)
    return out


def read_study(connect, db: Path, study_id: str) -> dict | None:
    """One study with its rows (see ``Store.study``); None when there is no such id."""
    found = _query(connect, db, f"SELECT {_STUDY_SUMMARY}, rows FROM studies WHERE id = ?", (study_id,))
    if not found:
        return None
    item = _study_dict(found[0][:-1])
    try:
        rows = json.loads(found[0][-1])
    except (TypeError, ValueError):
        rows = None
    if item is None or not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise NboptError(f"The record of study {study_id} in the store database '{db}' cannot be read; run the "
                         "study again to record it afresh.")
    del item["n_rows"], item["n_ok"]
    item["rows"] = rows
    return item


def _query(connect, db: Path, sql: str, params: tuple) -> list[tuple]:
    try:
        with closing(connect()) as con:
            return con.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # a store written before studies were recorded
            return []
        problem = exc
    except sqlite3.Error as exc:
        problem = exc
    hint = (" (nbopt moves a corrupt database aside the next time a study runs on this store)"
            if isinstance(problem, sqlite3.DatabaseError) and _is_corrupt(problem) else "")
    raise NboptError(f"Cannot read the studies in the store database '{db}' ({one_line(problem)}){hint}.")


def _study_dict(rec: tuple) -> dict | None:
    names = [n.strip() for n in _STUDY_SUMMARY.split(",")]
    item = dict(zip(names, rec))
    try:
        item["meta"] = json.loads(item["meta"])
    except (TypeError, ValueError):
        return None
    if not isinstance(item["meta"], dict):
        return None
    item["finished"] = bool(item["finished"])
    return item


def _safe_name(key: str) -> str:
    if not isinstance(key, str) or not _SAFE_NAME.fullmatch(key) or key in (".", ".."):
        raise ValueError(f"not a store key: {key!r}")
    return key


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    # Without error codes: "file is not a database" / "malformed" are plain DatabaseErrors, while "locked",
    # "unable to open", "readonly" are OperationalErrors.
    return not isinstance(exc, sqlite3.OperationalError)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or one_line(exc)


def _flock(fd: int, timeout: float | None, what: str) -> None:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreLockTimeout(f"Another nbopt process held the lock of {what} for more than {timeout:g} s; "
                                       "wait for it to finish, or use another store folder.") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.25)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _owner_tag() -> str:
    """``<pid>-t<start>`` of this process (``<pid>`` where the start time is unknown): the prefix of every
    tmp/ entry it makes."""
    global _TAG
    pid = os.getpid()
    if _TAG[0] != pid:  # computed once per process (again after a fork)
        started = _start_ticks(pid)
        _TAG = (pid, f"{pid}-t{started}" if started is not None else str(pid))
    return _TAG[1]


def _owner(name: str) -> tuple[int, int | None] | None:
    """(pid, start ticks or None) of a tmp/ entry's owner, from its name; None for a name without one."""
    parts = name.split("-")
    if len(parts) < 2 or not parts[0].isdigit():
        return None
    tick = parts[1]
    return int(parts[0]), int(tick[1:]) if len(parts) > 2 and tick[:1] == "t" and tick[1:].isdigit() else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume alive (kept, never deleted)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def _start_ticks(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (/proc/<pid>/stat field 22, Linux); None where
    unknown. Fixed for the life of a process, independent of the wall clock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # the fields after "pid (comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        try:
            entry.unlink()
        except OSError:
            pass


def _remove_all(paths: set[Path], owner: int) -> None:
    if os.getpid() != owner:  # a forked child leaves its parent's folders alone
        return
    while paths:
        try:
            path = paths.pop()
        except KeyError:
            break
        shutil.rmtree(path, ignore_errors=True)


# -- scratch space for code that has no store at hand (a backend's prepare, data loading) ----------------
_scratch_store: contextvars.ContextVar[Store | Path | None] = contextvars.ContextVar("nbopt_scratch", default=None)


@contextlib.contextmanager
def scratch_in(where: Store | Path):
    """Inside this block, ``scratch_dir()`` makes its folders under ``where``: a study's store (removed with
    it), or a folder the study's process owns (what a worker process is given)."""
    token = _scratch_store.set(where)
    try:
        yield where
    finally:
        _scratch_store.reset(token)


def scratch_dir(prefix: str) -> Path:
    """A fresh scratch folder: under the running study's store, or (outside a study) in the system temp
    folder, removed when the process exits."""
    where = _scratch_store.get()
    if isinstance(where, Store):
        return where.scratch(prefix)
    if where is not None:
        path = Path(where) / f"{prefix}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path
    path = Path(tempfile.mkdtemp(prefix=f"nbopt-{prefix}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
