"""The store on its own: reuse of ok rows only, a corrupt or unwritable store, locks between processes,
scratch folders of dead processes and of a closed store. Fast: no torch, small JSON rows, fake files."""
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from nbopt.errors import NboptError
from nbopt.store import Store, StoreLockTimeout, StoreWriteError, _owner_tag

ROOT = Path(__file__).resolve().parents[1]
KEY = "0123456789abcdef01234567"


def ok_row(store: Store, key: str = KEY, payload: bytes = b"model") -> dict:
    """Build a fake candidate in a workdir, commit it, and return its ok row (not yet put)."""
    work = store.workdir()
    (work / "model.bin").write_bytes(payload)
    final = store.commit_files(key, work)
    return {"name": key, "status": "ok", "size_bytes": len(payload), "artifact_path": str(final / "model.bin"),
            "artifact_files": [str(final / "model.bin")]}


def one_sentence(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.endswith("."), text
    return text


# ---------------------------------------------------------------------------------------------- reuse
def test_only_ok_rows_with_their_files_are_reused(tmp_path):
    store = Store(tmp_path / "s")
    store.put("failed", {"name": "a", "status": "failed", "error": "boom"})
    store.put("skipped", {"name": "b", "status": "skipped", "error": "no such recipe"})
    assert store.get("failed") is None and store.get("skipped") is None
    assert store.get("missing") is None

    row = ok_row(store)
    store.put(KEY, row)
    assert store.get(KEY) == row
    Path(row["artifact_files"][0]).unlink()  # deleted by hand: built again
    assert store.get(KEY) is None

    # a failed retry replaces the row; a later ok one is reused
    store.put(KEY, {"name": KEY, "status": "failed", "error": "x"})
    assert store.get(KEY) is None
    row = ok_row(store, payload=b"second")
    store.put(KEY, row)
    assert Store(tmp_path / "s").get(KEY)["size_bytes"] == len(b"second")  # and survives a re-open


def test_commit_keeps_an_ok_folder_and_replaces_a_stale_one(tmp_path):
    store = Store(tmp_path / "s")
    # stale: a failed candidate's folder is replaced by the new build
    stale = store.folder / "artifacts" / KEY
    stale.mkdir()
    (stale / "old.bin").write_bytes(b"old")
    store.put(KEY, {"name": KEY, "status": "failed", "error": "x"})
    row = ok_row(store, payload=b"new")
    assert not (stale / "old.bin").exists() and (stale / "model.bin").read_bytes() == b"new"
    store.put(KEY, row)

    # in use: an ok row's folder is never deleted; the second build is discarded instead
    work = store.workdir()
    (work / "model.bin").write_bytes(b"other")
    assert store.commit_files(KEY, work) == stale
    assert (stale / "model.bin").read_bytes() == b"new"
    assert not work.exists()
    assert not any((store.folder / "tmp").iterdir())


# ---------------------------------------------------------------------------------------- corruption
def test_garbage_database_is_moved_aside_with_a_warning(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    garbage = os.urandom(4096)
    (folder / "nbopt.sqlite").write_bytes(garbage)
    with pytest.warns(UserWarning, match=r"nbopt: the store database .* was corrupt .*moved aside to .*"
                                         r"starting a fresh one"):
        store = Store(folder)
    aside = list(folder.glob("nbopt.sqlite.corrupt-*"))
    moved = [p for p in aside if not p.name.endswith("-journal")]
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert len(moved[0].name) == len("nbopt.sqlite.corrupt-YYYYmmdd-HHMMSS")
    row = ok_row(store)
    store.put(KEY, row)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fresh database opens without a warning
        assert Store(folder).get(KEY) == row


def test_a_journal_moves_aside_with_its_database(tmp_path):
    """A hot journal left next to a corrupt database must not be replayed into the fresh one."""
    store = Store(tmp_path / "s")
    store.db.write_bytes(b"corrupt")
    Path(f"{store.db}-journal").write_bytes(b"journal")
    with pytest.warns(UserWarning, match="was corrupt"):
        store._move_aside("test")
    (moved,) = [p for p in store.folder.glob("nbopt.sqlite.corrupt-*") if not p.name.endswith("-journal")]
    assert moved.read_bytes() == b"corrupt" and Path(f"{moved}-journal").read_bytes() == b"journal"
    assert not store.db.exists() and not Path(f"{store.db}-journal").exists()


def test_truncated_database_is_moved_aside_and_a_fresh_store_works(tmp_path):
    folder = tmp_path / "s"
    store = Store(folder)
    store.put("k1", {"name": "k1", "status": "failed", "error": "x"})
    with sqlite3.connect(store.db) as con:  # a few pages more, in one transaction
        con.executemany("INSERT INTO candidates (key, row) VALUES (?, ?)",
                        [(f"k{i}", '{"status": "failed", "error": "%s"}' % ("x" * 300)) for i in range(2, 300)])
    data = (folder / "nbopt.sqlite").read_bytes()
    assert len(data) > 20_000
    (folder / "nbopt.sqlite").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="was corrupt"):
        fresh = Store(folder)
    assert len(list(folder.glob("nbopt.sqlite.corrupt-*"))) == 1
    assert fresh.get("k1") is None
    row = ok_row(fresh)
    fresh.put(KEY, row)
    assert fresh.get(KEY) == row


def test_a_valid_database_is_not_moved(tmp_path):
    store = Store(tmp_path / "s")
    store.put("k", {"status": "failed"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Store(tmp_path / "s")
    assert not list((tmp_path / "s").glob("*.corrupt-*"))


# ----------------------------------------------------------------------------------------- writability
@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_unwritable_folder_is_one_nbopt_error(tmp_path, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    folder = blocker / "store" if where == "under-a-file" else blocker
    with pytest.raises(NboptError) as info:
        Store(folder)
    text = one_sentence(info.value)
    assert str(folder) in text and "store=None" in text and "a folder you can write" in text


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_parent_is_one_nbopt_error(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(NboptError, match="store=None"):
            Store(parent / "store")
    finally:
        parent.chmod(0o700)


def test_read_only_database_fails_when_opened(tmp_path, monkeypatch):
    Store(tmp_path / "s")
    db = tmp_path / "s" / "nbopt.sqlite"
    monkeypatch.setattr(Store, "_connect", lambda self: sqlite3.connect(f"file:{db}?mode=ro", uri=True))
    with pytest.raises(NboptError) as info:
        Store(tmp_path / "s")
    assert "readonly" in one_sentence(info.value) and not list(db.parent.glob("*.corrupt-*"))


def test_put_on_a_read_only_database_raises_store_write_error_and_writes_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    first = ok_row(store)
    store.put(KEY, first)
    monkeypatch.setattr(store, "_connect",
                        lambda: sqlite3.connect(f"file:{store.db}?mode=ro", uri=True))
    with pytest.raises(StoreWriteError) as info:
        store.put(KEY, {**first, "size_bytes": 1})
    assert isinstance(info.value, NboptError)
    assert KEY in one_sentence(info.value) and "readonly" in str(info.value)
    assert store.get(KEY) == first  # reads still work, the old row is intact
    monkeypatch.undo()
    assert Store(tmp_path / "s").get(KEY) == first


def test_put_disk_full_is_a_store_write_error(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")

    def full():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_connect", full)
    with pytest.raises(StoreWriteError, match="No space left on device"):
        store.put(KEY, {"status": "ok"})


# ----------------------------------------------------------------------------------------------- locks
BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from nbopt.store import Store
    folder, key, counter = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = Store(folder)
    with store.lock(key):
        print("locked", flush=True)
        row = store.get(key)
        if row is None:
            with open(counter, "a") as fh:
                fh.write("build\\n")
            time.sleep(1.0)
            work = store.workdir()
            (work / "model.bin").write_bytes(b"built")
            final = store.commit_files(key, work)
            store.put(key, {"status": "ok", "artifact_files": [str(final / "model.bin")]})
            print("built", flush=True)
        else:
            print("reused", flush=True)
    store.close()
""")


def test_two_processes_one_key_build_once(tmp_path):
    folder, counter = tmp_path / "s", tmp_path / "builds.txt"
    Store(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", BUILDER, str(folder), KEY, str(counter)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert first.stdout.readline().strip() == "locked"  # the first one builds (sleeping 1 s) ...
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)  # ... while this one waits
    out1, _ = first.communicate(timeout=60)
    out2, _ = second.communicate(timeout=60)
    assert first.returncode == second.returncode == 0
    assert out1.split() == ["built"] and out2.split() == ["locked", "reused"]
    assert counter.read_text().splitlines() == ["build"]
    assert (folder / "artifacts" / KEY / "model.bin").read_bytes() == b"built"
    assert not any((folder / "tmp").iterdir())


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows: locks are no-ops")
def test_lock_waits_for_its_timeout_and_is_reentrant(tmp_path):
    a, b = Store(tmp_path / "s"), Store(tmp_path / "s")
    with a.lock(KEY):
        with a.lock(KEY):  # same store, same thread: re-entrant
            pass
        t0 = time.monotonic()
        with pytest.raises(StoreLockTimeout) as info:
            with b.lock(KEY, timeout=0.3):
                pass
        assert 0.25 < time.monotonic() - t0 < 5
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, NboptError)
        with b.lock("another-key", timeout=0):  # other keys are free
            pass
    with b.lock(KEY, timeout=0):  # released
        pass


# ----------------------------------------------------------------------------------- scratch folders
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_scratch_of_dead_processes_is_removed_on_open_and_live_ones_are_kept(tmp_path):
    folder = tmp_path / "s"
    Store(folder)
    tmp = folder / "tmp"
    dead = tmp / f"{dead_pid()}-0f1e2d3c"
    dead_scratch = tmp / f"{dead_pid()}-t123-nbopt_onnx_-abcd"
    mine = tmp / f"{os.getpid()}-cafe"  # this process: another study of this kernel may be using it
    mine_tagged = tmp / f"{_owner_tag()}-beef"
    reused = tmp / f"{os.getpid()}-t1-feed"  # this pid, but a process that started at another time
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp / f"{sleeper.pid}-babe"
        for d in (dead, dead_scratch, mine, mine_tagged, live):
            (d / "sub").mkdir(parents=True)
            (d / "sub" / "f.bin").write_bytes(b"x")
        if sys.platform.startswith("linux"):
            reused.mkdir()
        Store(folder)
        assert not dead.exists() and not dead_scratch.exists()
        assert mine.exists() and mine_tagged.exists() and live.exists()
        assert not reused.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    Store(folder)
    assert not live.exists()  # its owner is gone now


def test_artifact_folders_without_a_row_are_removed_unless_being_built(tmp_path):
    store = Store(tmp_path / "s")
    arts = store.folder / "artifacts"
    store.put(KEY, ok_row(store))
    failed = arts / "feedfeedfeed"
    failed.mkdir()
    store.put("feedfeedfeed", {"status": "failed", "error": "x"})
    holder = Store(tmp_path / "s")
    orphan, building = arts / "deadbeef", arts / "abcabc"
    orphan.mkdir()
    building.mkdir()
    with holder.lock("abcabc"):  # another study is building it: committed, not yet put
        Store(tmp_path / "s")
    assert not orphan.exists() and building.exists()
    assert (arts / KEY / "model.bin").exists() and failed.exists()


def test_close_removes_the_scratch_this_store_made(tmp_path):
    store, other = Store(tmp_path / "s"), Store(tmp_path / "s")
    scratch, work, theirs = store.scratch("nbopt_onnx_"), store.workdir(), other.scratch()
    for d in (scratch, work, theirs):
        assert d.parent == store.folder / "tmp" and d.name.startswith(f"{os.getpid()}-")
        (d / "model.onnx").write_bytes(b"x")
    assert "nbopt_onnx_" in scratch.name
    committed = store.workdir()
    (committed / "model.bin").write_bytes(b"x")
    final = store.commit_files(KEY, committed)
    store.close()
    assert not scratch.exists() and not work.exists()
    assert theirs.exists() and (final / "model.bin").exists()
    store.close()  # idempotent
    again = store.scratch()  # and the store stays usable
    with store:
        assert again.exists()
    assert not again.exists()
    other.close()
    assert not any((store.folder / "tmp").iterdir())


def test_scratch_is_removed_when_the_process_ends(tmp_path):
    script = ("import sys; from nbopt.store import Store; s = Store(sys.argv[1]); "
              "print(s.scratch('x'), s.workdir(), sep='\\n')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s")], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert len(out) == 2 and not any(Path(p).exists() for p in out)
