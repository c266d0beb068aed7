"""``executor="ray"``: the study's jobs as Ray tasks, on a local Ray or on a cluster (``pip install 'nbopt[ray]'``).

The study does not change: it hands ``PrepareJob`` / ``CandidateJob`` objects to ``RayExecutor.submit`` and
collects ``Finished`` results from ``wait()`` as candidates finish, so rows (and the panel) arrive one by one.

What crosses the wire, per task (``_run_job``):

- on a Ray of one node on this machine (what ``ray_address=None`` starts): the job as a local worker gets it,
  cloudpickled (paths into the store; the data as references to its Arrow files);
- on a cluster: the job with its two ``Data`` replaced by references to in-memory copies of their Arrow
  tables (put into Ray's object store once per study), and, as references the task fetches only when it
  needs them, the bytes of the files the job names (the cloudpickled user model, or a model file; the
  prepared model when it stands alone, else each worker prepares its own from the user's model).

A task first looks for a probe file the driver wrote into the job's own folder in the store. Found (a local
Ray, or a store on a filesystem every node mounts): the job runs on the store's paths, and its files are
written into the store directly. Not found: the task writes the blobs into a folder of its own, runs the job
there, and returns the candidate's files as bytes with its log text; the driver writes them into the job's
folder in the store, where the study commits them as usual (``_landed``).

Measurements stay one at a time per machine: each node has a ``MeasureLock`` actor, a readers-writer lock
like ``nbopt.pool.MeasureGate`` (builds share it, a measurement holds it alone and new builds wait behind
it); the lock forgets a holder whose process died. A task running longer than ``timeout_s`` (counted from
when it starts, not while it waits for a free CPU) is cancelled and becomes a timed-out row; a worker that
dies becomes a failed row; ``cancel()`` (KeyboardInterrupt) cancels every task; ``cancel_pending()`` the
ones that have not started.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import NboptError, one_line
from .pool import Finished, _what

INSTALL = "executor='ray' needs Ray: pip install 'nbopt[ray]'."
LOCK_NAMESPACE = "nbopt"  # the measurement locks are shared by every nbopt driver on a cluster
PROBE = ".nbopt-ray-probe"
CONNECT_TIMEOUT_S = 10.0
_ENV_COPIED = ("OMP_NUM_THREADS", "NBOPT_THREADS", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _ray():
    try:
        import ray
    except ImportError:
        raise NboptError(INSTALL) from None
    return ray


# ----------------------------------------------------------------------------------------------------------
# the driver's side
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Task:
    token: Any
    job: Any
    gen: Any  # ObjectRefGenerator: a "started" item, then the result
    probe: Path | None
    key: str  # the task's name at the measurement lock, which counts how long it waited there
    started: float | None = None
    node: str = ""
    waited: float = 0.0  # seconds it waited for this node's measurement lock (not counted against timeout_s)

    def deadline(self, timeout_s: float) -> float:
        return self.started + timeout_s + self.waited


class RayExecutor:
    """Jobs as Ray tasks, ``workers`` at a time. ``address=None`` starts a local Ray (or uses the one this
    process already started); an address (``ray://head:10001``, ``head:6379``, ``"auto"``) joins a cluster."""

    isolated = True
    share_paths = True  # False: always ship files as bytes (what a cluster without a shared filesystem does)
    single_machine: bool | None = None  # None: a Ray of one node on this machine is sent jobs as they are

    def __init__(self, workers: int, timeout_s: float, address: str | None = None):
        self.ray = _ray()
        self.workers, self.timeout_s, self.address = workers, timeout_s, address
        _connect(self.ray, address)
        _new_session(self.ray)
        self._tasks: dict[Any, _Task] = {}
        self._remote = _remote_functions(self.ray)
        self._locks = _node_locks(self.ray, self._remote["lock"])
        self._local = self.share_paths and (_on_this_machine(self.ray) if self.single_machine is None
                                            else self.single_machine)

    # -- the executor protocol -------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.workers - len(self._tasks)

    def busy(self) -> bool:
        return bool(self._tasks)

    def submit(self, job, token) -> None:
        from .jobs import PrepareJob

        folder = job.scratch if isinstance(job, PrepareJob) else job.workdir
        probe, secret = None, None
        if self.share_paths:
            secret = uuid.uuid4().hex
            probe = Path(folder) / PROBE
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text(secret)
        key = uuid.uuid4().hex
        if self._local:  # as a local worker gets it: the store's paths, the data's Arrow files
            import cloudpickle

            payload = {"job": cloudpickle.dumps(job), "data": None, "blobs": None, "probe": (str(probe), secret),
                       "sys_path": [p for p in sys.path if p], "env": _env()}
        else:
            payload = _payload(self.ray, job, (str(probe), secret) if probe else None)
        payload["key"] = key
        gen = self._remote["run"].options(name=f"nbopt {job.name or _what(job)}"[:120]).remote(payload)
        self._tasks[token] = _Task(token, job, gen, probe, key)

    def wait(self, poll: float = 0.5, timeout: float | None = None) -> list[Finished]:
        """Block until at least one task is done (or failed, or timed out); returns every one that is (an
        empty list after ``timeout`` seconds, when given)."""
        ray = self.ray
        end = None if timeout is None else time.monotonic() + timeout
        while self._tasks and (end is None or time.monotonic() < end):
            tasks = list(self._tasks.values())
            gens = [t.gen for t in tasks]
            now = time.monotonic()
            deadlines = [t.deadline(self.timeout_s) - now for t in tasks if t.started is not None]
            timeout = max(0.0, min([poll, *deadlines]))
            ready, rest = ray.wait(gens, num_returns=1, timeout=timeout)
            if ready and rest:  # every other one that is ready too
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            done = []
            for gen in ready:
                finished = self._next(next(t for t in tasks if t.gen is gen or t.gen == gen))
                if finished is not None:
                    done.append(finished)
            done += self._timed_out()
            if done:
                return done
        return []

    def cancel(self) -> None:
        """Cancel every task (their worker processes are killed); nothing comes back for them."""
        for task in list(self._tasks.values()):
            self._drop(task, force=True)

    def cancel_pending(self) -> list:
        """Cancel the tasks that have not started (waiting for a free CPU); returns their tokens."""
        tokens = [t.token for t in self._tasks.values() if t.started is None]
        for token in tokens:
            self._drop(self._tasks[token], force=True)
        return tokens

    # -- results ---------------------------------------------------------------------------------------
    def _next(self, task: _Task) -> Finished | None:
        ray = self.ray
        try:
            item = ray.get(next(task.gen))
        except StopIteration:  # cannot happen: the task yields its result before it ends
            self._drop(task)
            return Finished(task.token, error=f"the Ray task ended without a result while {_what(task.job)}; "
                                              "the sweep went on")
        except Exception as exc:  # noqa: BLE001 - a dead worker or a lost node is this candidate's row
            self._drop(task)
            return Finished(task.token, error=_ray_failure(ray, exc, _what(task.job)))
        if item[0] == "started":
            task.started, task.node = time.monotonic(), item[2]
            return None
        self._drop(task)
        try:
            return Finished(task.token, result=_landed(task.job, item[1]))
        except OSError as exc:
            return Finished(task.token, error=f"the files of the finished task could not be written into the "
                                              f"store while {_what(task.job)} ({one_line(exc)}); the sweep went on")

    def _timed_out(self) -> list[Finished]:
        out = []
        for task in list(self._tasks.values()):
            if task.started is None or time.monotonic() < task.deadline(self.timeout_s):
                continue
            task.waited = self._waited(task)  # time spent waiting for another candidate's measurement
            if time.monotonic() >= task.deadline(self.timeout_s):
                self._drop(task, force=True)
                out.append(Finished(task.token, error=f"timed out after {self.timeout_s:g} s while "
                                                      f"{_what(task.job)} (raise timeout_s=... if it needs longer); "
                                                      "the sweep went on"))
        return out

    def _waited(self, task: _Task) -> float:
        try:
            lock = _lock_handles.get(task.node) or self.ray.get_actor(_lock_name(task.node), namespace=LOCK_NAMESPACE)
            return float(self.ray.get(lock.waited.remote(task.key), timeout=10))
        except Exception:  # noqa: BLE001 - no lock, no wait to forgive
            return task.waited

    def _drop(self, task: _Task, force: bool = False) -> None:
        self._tasks.pop(task.token, None)
        if force:
            try:
                self.ray.cancel(task.gen, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        if task.probe is not None:
            task.probe.unlink(missing_ok=True)


def _landed(job, out: dict) -> dict:
    """The task's result with its files written into the job's folder in the store and its paths moved there."""
    from .jobs import PrepareJob, rebased

    result = out["result"]
    if out.get("log"):
        with open(job.log, "a", encoding="utf-8", errors="replace") as f:
            f.write(out["log"])
    if out["shared"]:
        return result
    if isinstance(job, PrepareJob):
        if "defaults" in result:  # prepared: its blob, when it stands alone
            path = None
            if out.get("prepared") is not None:
                path = Path(job.scratch) / f"prepared-{job.backend}.pkl"
                path.write_bytes(out["prepared"])
            result["prepared"] = path
        return result
    workdir = Path(job.workdir)
    for rel, data in out.get("files", {}).items():
        target = (workdir / rel).resolve()
        if workdir.resolve() not in target.parents:
            raise OSError(f"the task returned a file outside its folder: {rel}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    result = rebased(result, Path(out["workdir"]), workdir)
    result["log"] = str(job.log)
    return result


def _ray_failure(ray, exc: BaseException, what: str) -> str:
    import ray.exceptions as rex

    if isinstance(exc, rex.TaskCancelledError):
        return f"the Ray task was cancelled while {what}; the sweep went on"
    if isinstance(exc, rex.RayTaskError):  # an exception in nbopt's own task code (the job catches its own)
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
        return f"the Ray task failed while {what} ({one_line(cause, 300)}); the sweep went on"
    died = tuple(getattr(rex, n) for n in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError") if hasattr(rex, n))
    if isinstance(exc, died):
        return f"the worker died while {what} (Ray: {one_line(exc, 300, with_type=False)}); the sweep went on"
    return f"Ray lost the task while {what} ({one_line(exc, 300)}); the sweep went on"


# -- what a task is sent ---------------------------------------------------------------------------------------
_puts: "OrderedDict[tuple, Any]" = OrderedDict()  # (kind, identity) -> (kept object, ObjectRef): put once


def _cached_put(ray, key: tuple, make, keep: Any = None):
    if key in _puts:
        _puts.move_to_end(key)
        return _puts[key][1]
    ref = ray.put(make())
    _puts[key] = (keep, ref)
    while len(_puts) > 16:  # the last studies' data and models; older ones are freed from the object store
        _puts.popitem(last=False)
    return ref


def _payload(ray, job, probe: tuple[str, str] | None) -> dict:
    """The job for the wire: data as object references, and the files it names as references to their bytes
    (fetched by the task only when the store is not on a path it sees)."""
    import cloudpickle

    from .jobs import PrepareJob

    data = []
    for d in (job.eval, getattr(job, "calib", None)):
        data.append(None if d is None else _cached_put(ray, ("data", id(d), d.fingerprint), lambda d=d: portable(d), d))
    bare = replace(job, eval=None, **({} if isinstance(job, PrepareJob) else {"calib": None}))
    blobs = {"model": _blob(ray, Path(job.model_path))}
    prepared = getattr(job, "prepared_path", None)
    if prepared is not None and _stands_alone(Path(prepared)):
        blobs["prepared"] = _blob(ray, Path(prepared))
    return {"job": cloudpickle.dumps(bare), "data": data, "blobs": blobs, "probe": probe,
            "sys_path": [p for p in sys.path if p], "env": _env()}


def _env() -> dict:
    return {k: os.environ.get(k) for k in _ENV_COPIED}


def _on_this_machine(ray) -> bool:
    """True for a Ray of one node, on this machine (what ray_address=None starts)."""
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - when in doubt, send everything
        return False


_digests: dict[tuple, str] = {}  # (path, size, mtime) -> identity of the blob


def _blob(ray, path: Path) -> tuple[str, list]:
    """(identity, [ref to the bytes]) of a file the study's process wrote (in a list: Ray does not fetch it
    before the task asks). A model given as a file path travels with that file's bytes, and the identity
    changes when that file does."""
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    data = path.read_bytes() if stamp not in _digests or st.st_size < 4096 else None
    if data is not None:
        digest = hashlib.sha256(data)
        source = _model_file(data)
        if source is not None:  # the file (or folder) named: its names, sizes and times
            for f in sorted([source, *source.rglob("*")] if source.is_dir() else [source]):
                fst = f.stat()
                digest.update(f"{f}|{fst.st_size}|{fst.st_mtime_ns}".encode())
        _digests[stamp] = digest.hexdigest()
    ref = _cached_put(ray, ("blob", _digests[stamp]), lambda: _with_model_file(data or path.read_bytes()))
    return _digests[stamp], [ref]


def _model_file(data: bytes) -> Path | None:
    """The model file a small blob names (the user passed a path), else None."""
    if len(data) >= 4096:
        return None
    try:
        obj = pickle.loads(data)  # noqa: S301 - written by this study's own process
    except Exception:  # noqa: BLE001
        return None
    return Path(obj) if isinstance(obj, (str, Path)) and Path(obj).exists() else None


def _with_model_file(data: bytes) -> dict:
    out = {"pickle": data}
    src = _model_file(data)
    if src is not None:  # send the file (or folder) too
        obj = pickle.loads(data)  # noqa: S301
        files = {f.relative_to(src).as_posix(): f.read_bytes() for f in src.rglob("*") if f.is_file()} \
            if src.is_dir() else {"": src.read_bytes()}
        out["model_file"] = (src.name, src.is_dir(), files, isinstance(obj, Path))
    return out


def _stands_alone(prepared: Path) -> bool:
    """True when the prepared model is only its blob: its preparation folder holds no other file it could
    refer to (an exported ONNX model does; then each task prepares its own from the user's model)."""
    return not any(p.name != prepared.name and p.name != PROBE for p in prepared.parent.iterdir())


def portable(data):
    """An in-memory copy of a ``Data`` (its Arrow table travels with it, not a path to its file)."""
    import datasets
    from datasets.table import InMemoryTable

    from .data import Data, _quiet_datasets

    if data.streaming:  # read as it streams; its source must be reachable from the workers
        return data
    ds = data.ds
    fmt = ds.format
    with _quiet_datasets():
        flat = ds.with_format(None)
        if flat._indices is not None:
            flat = flat.flatten_indices(keep_in_memory=True)
        table = InMemoryTable(flat.data.table)
        mem = datasets.Dataset(table, info=flat.info.copy(), split=flat.split)
        mem = mem.with_format(fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"],
                              **fmt["format_kwargs"])
    return Data(mem, list(data.input_names), data.label_name, data.fingerprint)


_session: list = [None]


def _new_session(ray) -> None:
    """Forget the object references and lock handles of an earlier Ray session (after ray.shutdown())."""
    job = ray.get_runtime_context().get_job_id()
    if _session[0] != job:
        _session[0] = job
        _puts.clear()
        _lock_handles.clear()


# -- connecting ----------------------------------------------------------------------------------------------------
def _connect(ray, address: str | None) -> None:
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    if ray.is_initialized():
        return  # this process already uses a Ray (started by the user, or by an earlier study)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, ignore_reinit_error=True)
    try:
        if address is None:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
        else:
            ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    except Exception as exc:  # noqa: BLE001
        if address is None:
            raise NboptError(f"nbopt could not start a local Ray ({one_line(exc, 200)}); run `ray start --head` "
                             "in a terminal and pass ray_address='auto', or use executor='local'.") from None
        raise NboptError(f"nbopt could not join the Ray cluster at '{address}' ({one_line(exc, 200)}): check "
                         "that the cluster runs the same Ray and Python versions as this machine (`ray status` on "
                         "its head node), or pass ray_address=None for a local Ray.") from None


def _check_reachable(address: str) -> None:
    """A TCP connection to the address's host and port, within seconds: Ray itself would retry for minutes."""
    text = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise NboptError(f"ray_address '{address}' is not an address of a Ray cluster: give ray://HOST:10001 "
                         "(Ray Client), HOST:6379 (from a machine of the cluster), 'auto', or None for a local Ray.")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__).lower()
        raise NboptError(f"nbopt cannot reach the Ray cluster at '{address}' ({why}): check that the cluster is "
                         f"running (`ray status` on its head node), that {host}:{port} is its address and port "
                         "(10001 for ray://, 6379 from inside the cluster) and that no firewall blocks it, or pass "
                         "ray_address=None for a local Ray.") from None


# -- what runs in Ray ---------------------------------------------------------------------------------------------
_functions: dict[str, Any] = {}


def _remote_functions(ray) -> dict[str, Any]:
    if not _functions:
        _functions["run"] = ray.remote(num_cpus=1, max_retries=0, num_returns="streaming")(_run_job)
        _functions["lock"] = ray.remote(num_cpus=0, max_restarts=0)(MeasureLock)
    return _functions


_lock_handles: dict[str, Any] = {}  # node id -> this driver's handle (keeps the actor alive)


def _node_locks(ray, actor) -> dict[str, Any]:
    """One MeasureLock per node, created by the driver (a worker that crashes does not take it along)."""
    for node in ray.nodes():
        node_id = node.get("NodeID")
        if node.get("Alive") and node_id and node_id not in _lock_handles:
            _lock_handles[node_id] = _lock_for(ray, actor, node_id)
    return _lock_handles


def _lock_name(node_id: str) -> str:
    return f"nbopt-measure-{node_id}"


def _lock_for(ray, actor, node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return actor.options(name=_lock_name(node_id), namespace=LOCK_NAMESPACE, get_if_exists=True,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()


class MeasureLock:
    """A readers-writer lock for one machine, held by processes of that machine: builds share it; a
    measurement holds it alone, and builds that arrive while a measurement waits wait behind it. A holder
    (or waiter) whose process has died is forgotten within a second."""

    def __init__(self):
        import asyncio

        self.builders: dict[int, int] = {}  # pid -> builds it holds
        self.measurer: int | None = None
        self.waiting: dict[int, int] = {}  # pid -> measurements it waits for
        self.waits: OrderedDict[str, list] = OrderedDict()  # task key -> [seconds waited, waiting since]
        self.cond = asyncio.Condition()

    def _prune(self) -> None:
        self.builders = {p: n for p, n in self.builders.items() if _alive(p)}
        self.waiting = {p: n for p, n in self.waiting.items() if _alive(p)}
        if self.measurer is not None and not _alive(self.measurer):
            self.measurer = None

    async def acquire(self, kind: str, pid: int, key: str = "") -> bool:
        import asyncio

        async with self.cond:
            if kind == "measure":
                self.waiting[pid] = self.waiting.get(pid, 0) + 1
            wait = self.waits.setdefault(key, [0.0, None])
            self.waits.move_to_end(key)
            while len(self.waits) > 10000:
                self.waits.popitem(last=False)
            wait[1] = time.monotonic()
            try:
                while True:
                    self._prune()
                    if not _alive(pid):
                        return False
                    if kind == "measure":
                        free = self.measurer is None and not self.builders
                    else:
                        free = self.measurer is None and not self.waiting
                    if free:
                        break
                    try:
                        await asyncio.wait_for(self.cond.wait(), 1.0)
                    except asyncio.TimeoutError:
                        pass
            finally:
                wait[0] += time.monotonic() - wait[1]
                wait[1] = None
                if kind == "measure" and self.waiting.get(pid):
                    self.waiting[pid] -= 1
                    if not self.waiting[pid]:
                        del self.waiting[pid]
            if kind == "measure":
                self.measurer = pid
            else:
                self.builders[pid] = self.builders.get(pid, 0) + 1
            return True

    async def release(self, kind: str, pid: int, key: str = "") -> None:
        async with self.cond:
            if kind == "measure":
                if self.measurer == pid:
                    self.measurer = None
            elif self.builders.get(pid):
                self.builders[pid] -= 1
                if not self.builders[pid]:
                    del self.builders[pid]
            self.cond.notify_all()

    async def waited(self, key: str) -> float:
        """Seconds the task ``key`` has waited for this lock so far."""
        total, since = self.waits.get(key, (0.0, None))
        return total + (time.monotonic() - since if since is not None else 0.0)

    async def state(self) -> dict:
        async with self.cond:
            self._prune()
            return {"builders": dict(self.builders), "measurer": self.measurer, "waiting": dict(self.waiting)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class RayGate:
    """``run_candidate``'s gate in a Ray task: this node's MeasureLock."""

    def __init__(self, ray, key: str):
        self.ray, self.key = ray, key
        self.node_id = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def building(self):
        return _Held(self, "build")

    def measuring(self):
        return _Held(self, "measure")

    def _call(self, method: str, kind: str):
        ray = self.ray
        for attempt in range(3):
            try:
                lock = _worker_lock.get(self.node_id)
                if lock is None:
                    try:
                        lock = ray.get_actor(_lock_name(self.node_id), namespace=LOCK_NAMESPACE)
                    except ValueError:  # a node that joined after the driver started: make its lock here
                        lock = _lock_for(ray, _remote_functions(ray)["lock"], self.node_id)
                    _worker_lock[self.node_id] = lock
                return ray.get(getattr(lock, method).remote(kind, self.pid, self.key))
            except ray.exceptions.RayActorError:  # its owner (a driver) left: the next lookup makes a new one
                _worker_lock.pop(self.node_id, None)
                time.sleep(0.2 * (attempt + 1))
        return None  # no lock to be had: go on unlocked rather than fail the candidate


_worker_lock: dict[str, Any] = {}  # in a worker: node id -> the lock's handle


class _Held:
    def __init__(self, gate: RayGate, kind: str):
        self.gate, self.kind = gate, kind

    def __enter__(self):
        self.gate._call("acquire", self.kind)
        return self

    def __exit__(self, *exc):
        try:
            self.gate._call("release", self.kind)
        except Exception:  # noqa: BLE001 - a lock that is gone holds nothing
            pass
        return False


_blob_dir: Path | None = None


def _local_blob(entry: tuple[str, list], ray) -> Path:
    """The blob written into this worker's own folder (once per worker: a later task finds it, and the
    worker's cache of prepared models, keyed by this path, stays warm)."""
    global _blob_dir
    if _blob_dir is None:
        import atexit

        _blob_dir = Path(tempfile.mkdtemp(prefix="nbopt-ray-"))
        atexit.register(shutil.rmtree, _blob_dir, ignore_errors=True)
    digest, (ref,) = entry
    path = _blob_dir / f"{digest}.pkl"
    if not path.exists():
        blob = ray.get(ref)
        data = blob["pickle"]
        if "model_file" in blob:  # the model file itself, and a pickle of its path here
            name, is_dir, files, as_path = blob["model_file"]
            target = _blob_dir / digest / name
            for rel, content in files.items():
                dest = target / rel if is_dir else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(content)
            data = pickle.dumps(target if as_path else str(target))
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def _run_job(payload: dict):
    """The Ray task: yields ("started", pid), then ("done", {...}) with the result (and, when the store is
    not on a path this node sees, the candidate's files as bytes and its log text)."""
    import ray

    yield ("started", os.getpid(), ray.get_runtime_context().get_node_id())
    for key, value in payload["env"].items():  # as a local worker would have them (Ray sets OMP_NUM_THREADS=1)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for p in payload["sys_path"]:  # the driver's import path: a plug-in backend or the model's own module
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)
    from . import jobs

    job = pickle.loads(payload["job"])  # noqa: S301 - written by the study's own process
    if payload["data"] is not None:
        eval_ref, calib_ref = payload["data"]
        got = ray.get([r for r in (eval_ref, calib_ref) if r is not None])
        job = replace(job, eval=got[0], **({"calib": got[1] if calib_ref is not None else None}
                                           if isinstance(job, jobs.CandidateJob) else {}))
    shared = _sees_probe(payload["probe"])
    if not shared and payload["blobs"] is None:
        raise RuntimeError(f"this Ray node does not see the study's store at {payload['probe'][0]}")
    if shared:
        if isinstance(job, jobs.PrepareJob):
            result = jobs.run_prepare(job)
        else:
            result = jobs.run_candidate(job, RayGate(ray, payload["key"]))
        yield ("done", {"result": result, "shared": True})
        return
    here = Path(tempfile.mkdtemp(prefix="nbopt-task-"))
    try:
        log = here / "task.log"
        log.write_text("")
        model = _local_blob(payload["blobs"]["model"], ray)
        if isinstance(job, jobs.PrepareJob):
            scratch = here / "scratch"
            scratch.mkdir()
            result = jobs.run_prepare(replace(job, model_path=model, scratch=scratch, log=log))
            blob = None
            prepared = result.pop("prepared", None) if "defaults" in result else None
            if prepared is not None and _stands_alone(Path(prepared)):
                blob = Path(prepared).read_bytes()
            out = {"result": result, "prepared": blob}
        else:
            prepared = payload["blobs"].get("prepared")
            workdir = here / "work"
            local = replace(job, model_path=model, prepared_path=_local_blob(prepared, ray) if prepared else None,
                            workdir=workdir, log=log)
            result = jobs.run_candidate(local, RayGate(ray, payload["key"]))
            files = {f.relative_to(workdir).as_posix(): f.read_bytes() for f in sorted(workdir.rglob("*"))
                     if f.is_file()} if workdir.exists() else {}
            out = {"result": result, "files": files, "workdir": str(workdir)}
        out.update(shared=False, log=log.read_text(encoding="utf-8", errors="replace"))
        yield ("done", out)
    finally:
        shutil.rmtree(here, ignore_errors=True)


def _sees_probe(probe: tuple[str, str] | None) -> bool:
    if probe is None:
        return False
    path, secret = probe
    try:
        seen = Path(path).read_text() == secret
    except OSError:
        return False
    if seen:
        Path(path).unlink(missing_ok=True)  # not one of the candidate's files
    return seen
