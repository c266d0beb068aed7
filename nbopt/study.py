"""The study: a baseline per backend, the recipe grid, one result row per candidate, the Pareto front.

``optimize(...)`` is ``Study(...).run()``. Construction checks everything the user gave (model, data,
metric, backends, recipes, parameters) so that mistakes surface at once as one ``NboptError``, and has
each backend prepare the model in a worker. ``run()`` then hands each candidate to the executor
(``nbopt.executors``: worker processes, Ray, or inline), stores and scores each row as it comes back, and
emits events that the views follow. The kernel only plans, collects, stores and draws.
"""
from __future__ import annotations

import shutil
import threading
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ._version import __version__
from .backends import backend_spec, default_backends, get_backend, model_kind, sensitivity_capable
from .backends.base import Artifact, Backend
from .candidate import Candidate, StudyResults
from .data import Data, for_metric, load, text_encoder
from .errors import NboptError, one_line
from .evaluator import LatencySettings, score
from .executors import DEFAULT_TIMEOUT_S, EXECUTORS, check_timeout, check_workers, make_executor
from .jobs import CandidateJob, PrepareJob, load_blob, rebased, remember
from .metrics import METRICS, Metric, get_metric
from .search import Rung, check_search, closest_sentence, fits, ladder, log_entry
from .pareto import resolve
from .quiet import candidate_log, quiet, write_log
from .recipes import MONOTONE_PARAMS, RECIPES, TRAINING_RECIPES, Recipe, missing_calib, missing_train, parse_recipes
from .schema import EVENTS, FAILED, OK, SKIPPED, empty_row, public
from .speed import cpu_features, no_speedup_reasons
from .stats import label_names, row_columns
from .store import Store, StoreWriteError, candidate_key, scratch_in

BASELINE = Recipe("baseline")
_LAST: "Study | None" = None  # the study of the last run(), finished or interrupted (see last_study)
Callback = Callable[[str, dict], None]


@dataclass
class Planned:
    backend: str
    recipe: Recipe
    skip_reason: str = ""  # set when this backend has no such recipe

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.recipe.label}"


class Study(StudyResults):
    def __init__(self, model: Any, calib: Any = None, eval: Any = None, metric: str | Callable = "accuracy",
                 recipes: Iterable[Any] | None = None, backends: Sequence[str] | None = None,
                 max_accuracy_drop: float | None = None, store: str | Path | None = ".nbopt",
                 objectives: Sequence[str] = ("size", "accuracy"), n_calib: int = 256, seed: int = 0,
                 callbacks: Iterable[Callback] = (), progress: bool = True, measure_memory: bool = True,
                 latency: LatencySettings | None = None, batch_size: int = 1, labels: Sequence[str] | None = None,
                 workers: int | str = 1, executor: str = "local", ray_address: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, train: Any = None, search: str = "auto",
                 tokenizer: Any = None):
        if not backends:
            model_kind(model)  # an unusable model is the first thing to say (named backends check it below)
        self.metric: Metric = get_metric(metric)
        # built-in metrics travel to the workers by name (mixed-precision scores its trials with it)
        self._metric_name = self.metric.name if METRICS.get(self.metric.name) is self.metric else None
        self.objectives = tuple(objectives)
        resolve(self.objectives, True)  # unknown objective names fail now
        if max_accuracy_drop is not None and not (isinstance(max_accuracy_drop, (int, float)) and max_accuracy_drop >= 0):
            raise NboptError(f"max_accuracy_drop must be a number >= 0, got {max_accuracy_drop!r}.")
        if not isinstance(n_calib, int) or n_calib < 1:
            raise NboptError(f"n_calib must be a positive integer, got {n_calib!r}.")
        self.max_accuracy_drop = max_accuracy_drop
        # auto climbs an accuracy ladder (nbopt.search) when there is a budget to climb to and no recipe list
        self.search = check_search(search)
        self._auto = search == "auto" and max_accuracy_drop is not None and recipes is None
        self.seed, self.progress, self.measure_memory = seed, progress, measure_memory
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise NboptError(f"batch_size must be a positive integer (the batch the phone runs), got {batch_size!r}.")
        self.latency = latency or LatencySettings(batch_size=batch_size)
        self.workers, self.timeout_s = check_workers(workers), check_timeout(timeout_s)
        if executor not in EXECUTORS:
            raise NboptError(f"Unknown executor {executor!r}; known executors: {', '.join(EXECUTORS)}.")
        self.backends: dict[str, Backend] = self._backends(model, backends)
        self.model = model
        self.store = Store(store if store is not None else _tempdir())  # None: a folder removed at exit
        with scratch_in(self.store):  # Arrow files of in-memory data: under the store
            self._load_data(model, calib, eval, n_calib, labels, train, tokenizer)
        self._executor = make_executor(executor, self.workers, self.timeout_s, ray_address)
        self._model_path = self._send_model(model)
        self._prep, self._unusable = self._prepare_all()
        self._prepared_cache: dict[str, Any] = {}
        self._model_fp = {n: (self._prep[n]["fingerprint"] if n in self._prep else "unusable") for n in self.backends}
        self._ladders: dict[str, list[Rung]] = {}
        self.plan: list[Planned] = self._ladder_plan() if self._auto else self._plan(parse_recipes(recipes))
        self._search_log: list[dict] = []
        self.search_note = ""  # the sentence for a budget nothing met (search="auto")
        self.candidates: list[Candidate] = []
        self._callbacks: list[Callback] = list(callbacks)
        self._stop = threading.Event()
        self._stop_flag = self.store.scratch("control") / "stop"  # Stop, as the workers' engines see it
        self._baseline_rows: dict[str, dict] = {}
        self._baseline_outputs: dict[str, np.ndarray] = {}
        self.stopped = False
        self.sensitivity: dict[str, Any] = {}

    # -- set-up ----------------------------------------------------------------------------------
    def _load_data(self, model: Any, calib: Any, eval: Any, n_calib: int, labels: Sequence[str] | None,
                   train: Any, tokenizer: Any = None) -> None:
        text = text_encoder(tokenizer, model, {"eval": eval, "calib": calib, "train": train})  # one padded length
        self.eval_data: Data = for_metric(load(eval, role="eval", tokenizer=text), model, self.metric, "eval")
        if self.metric.needs_labels and not self.eval_data.has_labels:
            raise NboptError(f"Metric '{self.metric.name}' needs labels but the eval data has none: pass "
                             "(inputs, labels) or use metric='agreement' / 'cosine' to compare with the baseline.")
        self.calib_data: Data | None = for_metric(load(calib, role="calib", tokenizer=text), model, self.metric,
                                                 "calib").sample(n_calib, self.seed) if calib is not None else None
        self.train_data: Data | None = for_metric(load(train, role="train", tokenizer=text), model, self.metric,
                                                  "train") if train is not None else None
        self.eval_data, self.calib_data, self.train_data, names = _label_ids(
            model, labels, self.metric, self.eval_data, self.calib_data, self.train_data)
        _check_same_inputs(self.calib_data, self.eval_data)
        _check_same_inputs(self.train_data, self.eval_data, "train")
        _warn_overlap(self.train_data, self.eval_data)
        self._eval_labels = self.eval_data.labels() if self.eval_data.has_labels else None  # read once
        self.class_names = names or label_names(self.eval_data)

    def _backends(self, model: Any, names: Sequence[str] | None) -> dict[str, Backend]:
        if isinstance(names, str):
            names = [names]
        names = list(names) if names else default_backends(model)
        out = {}
        for name in names:
            backend = get_backend(name)
            if not backend.accepts(model):
                raise NboptError(f"Backend '{name}' cannot take a {type(model).__name__}; for this model use "
                                 f"backends={default_backends(model)}.")
            out[name] = backend
        return out

    def _send_model(self, model: Any) -> Path:
        """The user's model, cloudpickled once into the store's scratch: what every worker reads."""
        path = self.store.scratch("model") / "model.pkl"
        if not self._executor.isolated:
            remember(path, model)  # inline: the very object, no copy
            return path
        try:
            path.write_bytes(_pickle_with_own_code(model))
        except Exception as exc:  # noqa: BLE001
            raise NboptError(f"nbopt cannot send the model ({type(model).__name__}) to its worker processes "
                             f"({one_line(exc, 200)}): define its class in a module (a .py file next to the "
                             "notebook) and import it, or pass an exported file (torch.export.save to a .pt2, "
                             "or an .onnx file).") from None
        return path

    def _prepare_all(self) -> tuple[dict[str, dict], dict[str, str]]:
        """Each backend converts the model in a worker (an exporter that crashes costs that backend only):
        its default recipes, the fingerprint of what it compiles (the model part of every store key, so
        that editing forward() or a weight re-measures) and the prepared model for the candidates. A
        backend that cannot take the model keeps its reason and shows up as a failed baseline row."""
        jobs = [PrepareJob(name, backend_spec(name), self._model_path, self.eval_data,
                           self.store.scratch(f"prepare-{name}"), self.store.log_path(f"prepare-{name}"))
                for name in self.backends]
        prep, unusable, usage = {}, {}, []
        for job, done in self._run_all(jobs):
            result = done.result or {"unusable": _sentence(done.error)}  # the worker died or timed out
            if "unusable" in result:
                unusable[job.backend] = result["unusable"]
                usage += [result["unusable"]] if result.get("usage") else []
            else:
                prep[job.backend] = result
        if usage and not prep:  # nothing can run and the model or data as given is why: say so at once
            raise NboptError(usage[0])
        return prep, unusable

    def _run_all(self, jobs: list) -> list[tuple[Any, Any]]:
        """Run jobs on the executor, as many at a time as it takes; (job, Finished) in the jobs' order."""
        pending, done = list(enumerate(jobs)), {}
        while pending or len(done) < len(jobs):
            while pending and self._executor.capacity > 0:
                i, job = pending.pop(0)
                self._executor.submit(job, i)
            for fin in self._executor.wait():
                done[fin.token] = fin
        return [(job, done[i]) for i, job in enumerate(jobs)]

    def prepared(self, backend: str) -> Any:
        """The backend's prepared model in this process (for analyses such as layer sensitivity)."""
        if backend in self._unusable:
            raise NboptError(f"The {backend} backend could not take the model: {self._unusable[backend]}")
        if backend not in self._prepared_cache:
            info = self._prep[backend]
            if info.get("prepared") is not None:
                self._prepared_cache[backend] = load_blob(info["prepared"])
            else:
                with candidate_log(self.store.log_path(f"prepare-{backend}")), quiet(), scratch_in(self.store):
                    self._prepared_cache[backend] = self.backends[backend].prepare(load_blob(self._model_path),
                                                                                    self.eval_data)
        return self._prepared_cache[backend]

    def _plan(self, recipes: list[Recipe] | None) -> list[Planned]:
        if recipes is not None:
            for recipe in recipes:
                self._check_recipe(recipe)
        plan: list[Planned] = []
        for name, backend in self.backends.items():
            if name in self._unusable:
                plan += [Planned(name, r, f"the {name} backend could not take the model") for r in recipes or []]
                continue
            chosen = recipes if recipes is not None else self._prep[name]["defaults"]
            for recipe in chosen:
                full, reason = backend.resolve(recipe)
                plan.append(Planned(name, full, reason or self._missing_data(full)))
        return _monotone_order(plan)

    def _ladder_plan(self) -> list[Planned]:
        """search="auto": every rung of every backend's ladder (the most the search can run)."""
        plan = []
        for name, backend in self.backends.items():
            if name in self._unusable:
                continue

            def resolve(recipe: Recipe, backend=backend) -> tuple[Recipe, str]:
                full, reason = backend.resolve(recipe)
                return full, reason or self._missing_data(full)
            self._ladders[name] = ladder(resolve, backend.supports_sensitivity, self.train_data is not None)
            plan += [Planned(name, r) for rung in self._ladders[name] for r in rung.recipes]
        return plan

    def _climb(self, bar) -> None:
        """Each backend climbs its ladder a rung at a time (the backends' rungs run together) and stops at the
        first rung where a candidate fits the budget; the log says why each rung ran."""
        budget = self.max_accuracy_drop
        step = {n: 0 for n in self._ladders if self._baseline_rows.get(n, {}).get("status") == OK}
        for n in set(self._ladders) - set(step):
            self._log_search(n, 0, None, "no search: the baseline failed, so nothing can be compared with it")
        layers = {n: self._layer_count(n) for n in step}
        while step and not self._stop.is_set():
            rungs = {}
            for n, i in list(step.items()):
                while i < len(self._ladders[n]) and self._ladders[n][i].keep >= layers[n] * 2 > 0:
                    i += 1  # a group larger than the model: the previous rung already kept every layer
                if i >= len(self._ladders[n]):
                    del step[n]
                    continue
                step[n], rungs[n] = i, self._ladders[n][i]
                self._emit("search_step", {"backend": n, "step": i + 1, "of": len(self._ladders[n]),
                                           "rung": rungs[n].step, "why": rungs[n].why})
            self._sweep([Planned(n, r) for n, rung in rungs.items() for r in rung.recipes], bar)
            rows = {c.row["name"]: c.row for c in self.candidates}
            for n, rung in rungs.items():
                got = [rows[Planned(n, r).name] for r in rung.recipes if Planned(n, r).name in rows]
                self._search_log += [log_entry(n, step[n], rung, row, budget) for row in got]
                if any(fits(row, budget) for row in got):
                    self._log_search(n, step.pop(n) + 1, rung, "stopped: a candidate of this step fits the budget")
                else:
                    step[n] += 1
        self._end_search(bar)

    def _layer_count(self, backend: str) -> int:
        """Layers the backend's sensitivity ranks (0 without it or when it cannot say)."""
        if not self.backends[backend].supports_sensitivity or self.calib_data is None:
            return 0
        try:
            return int(self.sensitivity_cost(backend)[1])
        except Exception:  # noqa: BLE001 - the keep rungs then run as planned
            return 10**6

    def _log_search(self, backend: str, step: Any, rung: Rung | None, result: str) -> None:
        self._search_log.append({"backend": backend, "step": step if isinstance(step, int) else None,
                                 "rung": rung.step if rung else None, "candidate": None, "status": None,
                                 "accuracy_drop": None, "size_ratio": None, "fits": None,
                                 "why": rung.why if rung else "", "result": result})

    def _end_search(self, bar) -> None:
        """The ladder's end: the bar's total becomes what ran; a budget nothing met is one sentence."""
        ran = len(self.candidates)
        if bar is not None:
            bar.total = ran
            bar.refresh()
        self._emit("search_finished", {"total": ran})
        rows = [c.row for c in self.candidates]
        if self._stop.is_set() or any(fits(r, self.max_accuracy_drop) for r in rows if r["recipe"] != "baseline"):
            return
        self.search_note = closest_sentence(rows, self.max_accuracy_drop, self.metric.name)
        self._log_search("all", None, None, self.search_note)
        warnings.warn(f"nbopt: {self.search_note}", stacklevel=3)

    @property
    def search_log(self):
        """search="auto": one row per trial (backend, step, rung, candidate, accuracy_drop, fits, why, result),
        plus a row where a backend's ladder stopped. Empty for a grid."""
        import pandas as pd

        return pd.DataFrame(self._search_log, columns=["backend", "step", "rung", "candidate", "status",
                                                       "accuracy_drop", "size_ratio", "fits", "why", "result"])

    def _check_recipe(self, recipe: Recipe) -> None:
        """Mistakes no backend could do anything with are one sentence now; what only some backends
        cannot honour becomes their skipped rows."""
        mine = set().union(*(b.handlers for b in self.backends.values()))
        if recipe.name not in RECIPES:
            raise NboptError(f"Unknown recipe '{recipe.name}'; known recipes: {', '.join(RECIPES)}.")
        if recipe.name not in mine:
            raise NboptError(f"Recipe '{recipe.name}' is not implemented by backends {list(self.backends)}; "
                             f"they know: {', '.join(sorted(mine))}.")
        known = set(RECIPES[recipe.name].params).union(
            *(b.handlers[recipe.name].own for b in self.backends.values() if recipe.name in b.handlers))
        unknown = sorted(set(recipe.params) - known)
        if unknown:
            raise NboptError(f"Recipe '{recipe.name}' has no parameter {', '.join(map(repr, unknown))}; its "
                             f"parameters: {', '.join(sorted(known)) or 'none'}.")
        missing = missing_calib(recipe.name, self.calib_data) or missing_train(
            recipe.name, {**_defaults(recipe.name), **recipe.params}, self.train_data)
        if missing:  # asked for by name: the data was forgotten
            raise NboptError(missing)

    def _missing_data(self, recipe: Recipe) -> str:
        """A default sweep skips what needs calibration or train data it was not given."""
        if missing_calib(recipe.name, self.calib_data):
            return "needs calibration data (pass calib=...)"
        if missing_train(recipe.name, recipe.params, self.train_data):
            return "needs train=...: a few thousand training examples"
        return ""

    # -- events ----------------------------------------------------------------------------------
    def on(self, callback: Callback) -> None:
        self._callbacks.append(callback)

    def _emit(self, event: str, payload: dict) -> None:
        for cb in list(self._callbacks):
            try:
                cb(event, payload)
            except Exception:  # a broken view must not break the sweep
                warnings.warn(f"nbopt: a '{event}' callback failed:\n{traceback.format_exc(limit=3)}")

    def stop(self) -> None:
        """End the sweep: a candidate that is training stops within one batch (its row says so); one that
        is converting or measuring finishes; nothing new starts; everything finished is kept."""
        self._stop.set()
        try:
            self._stop_flag.touch()
        except OSError:  # the store went away: the sweep still stops between candidates
            pass

    def close(self) -> None:
        """Remove this study's scratch space from the store (it also goes when the study is garbage
        collected or the process exits); finished artifacts stay. The study cannot run again after."""
        self.store.close()

    def __enter__(self) -> "Study":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self):
        """Run the sweep in a background thread; returns its handle (``wait()``, ``stop()``, ``error``)."""
        from .sweep import BackgroundSweep

        return BackgroundSweep(self.run, self.stop).start()

    # -- the sweep -------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.backends) + len(self.plan)

    def run(self) -> "Study":
        """Build and measure every planned candidate (in worker processes, ``workers`` at a time).
        ``KeyboardInterrupt`` keeps (and stores) what finished, then propagates so that "Run all" stops;
        ``nbopt.last_study()`` returns the partial study."""
        global _LAST
        _LAST = self
        self._stop.clear()
        self._stop_flag.unlink(missing_ok=True)
        self.stopped = False
        self.candidates = []  # a second run() re-reads every finished row from the store
        self._record_study()  # before study_started: listeners may read self.study_id
        self._emit("study_started", {"total": self.total})
        bar = _progress_bar(self.total) if self.progress else None
        self._inflight: dict[str, tuple] = {}
        completed = False
        watcher = self._watcher = _ProgressWatcher(self, bar).start()
        try:
            for name in self._unusable:
                self._record(self._unusable_row(name), bar)
            self._sweep([Planned(n, BASELINE) for n in self.backends if n not in self._unusable], bar)
            if self._auto:
                self._climb(bar)
            else:
                self._sweep(self.plan, bar)
            completed = True
            self._warn_no_baseline()
        except KeyboardInterrupt:
            self._abandon()
            self.stopped = True
            warnings.warn("nbopt: sweep interrupted; the finished candidates are kept (and stored): "
                          "nbopt.last_study() returns them.")
            raise
        finally:
            watcher.stop()
            if bar is not None:
                bar.close()
            self._save_rows(finished=completed and not self.stopped)
            self._emit("study_finished", {"stopped": self.stopped})
        return self

    # -- the study's record in the store (nbopt.open, nbopt.Panel.open, nbopt report) ----------------
    def _record_study(self) -> None:
        from .reopen import study_record

        self.study_id, meta = study_record(self, model=_describe(self.model))
        self._recorded = self._store_write(self.store.record_study, self.study_id, meta)

    def _save_rows(self, finished: bool) -> None:
        """The rows as ``results`` shows them (with their artifact files, for export), after every candidate:
        an interrupted study can be reopened; a failed write warns once and the sweep goes on."""
        if self._recorded:
            self._recorded = self._store_write(self.store.update_study_rows, self.study_id,
                                               [c.row for c in self.candidates], finished)

    @staticmethod
    def _store_write(write, *args) -> bool:
        try:
            write(*args)
            return True
        except StoreWriteError as exc:
            warnings.warn(f"nbopt: {one_line(exc)}")
            return False

    def _sweep(self, items: list[Planned], bar) -> None:
        """Dispatch ``items`` as the executor has room, record each row as it finishes. After Stop, nothing
        new starts and what is running finishes."""
        pending, broken = list(items), set()
        while pending or self._inflight:
            while pending and self._executor.capacity > 0 and not self._stop.is_set():
                item = pending.pop(0)
                row = self._skip_row(item, broken) or self._dispatch(item)
                if row is not None:  # skipped, or served from the store
                    self._record(self._rated(item, row), bar)
            if self._stop.is_set():
                self.stopped = True
                pending = []
                self._cancel_pending()
            if not self._inflight:
                continue
            for done in self._executor.wait():
                item, row = self._collect(done)
                row = self._rated(item, row)
                self._record(row, bar)
                if self._breaks_budget(row):
                    broken.add(_monotone_group(item))
        if self._stop.is_set():  # pressed while the last candidate ran
            self.stopped = True

    def _dispatch(self, item: Planned) -> dict | None:
        """The stored row, or None once the candidate's job is on its way (its key locked meanwhile, so
        a second process on the same store waits and then reuses the row)."""
        key = self._key(item)
        lock = self.store.lock(key)
        lock.__enter__()
        cached = self.store.get(key)  # ok rows only: failed and skipped ones are built again
        if cached is not None:
            lock.__exit__(None, None, None)
            self._emit("candidate_started", self._started(item, cached=True))
            return self._scored(item, cached)
        self._emit("candidate_started", self._started(item, cached=False))
        log = self.store.log_path(key)
        log.write_text("")  # a fresh log per build (a retried candidate does not inherit old output)
        workdir = self.store.workdir()
        prep = self._prep[item.backend]
        job = CandidateJob(key, item.name, item.backend, backend_spec(item.backend), item.recipe,
                           prep.get("prepared"), self._model_path, self.eval_data, self.calib_data, self.seed,
                           self.latency, self.measure_memory, workdir, log,
                           train=self.train_data if _uses_train(item.recipe.name) else None,
                           stop_flag=self._stop_flag, metric=self._metric_name)
        try:
            self._executor.submit(job, key)
        except Exception as exc:  # noqa: BLE001 - a job that cannot be sent is this row's failure
            self.store.discard(workdir)
            lock.__exit__(None, None, None)
            row = _empty_row(item)
            row.update(status=FAILED, error=f"nbopt could not hand this candidate to a worker: {one_line(exc)}",
                       log=str(log))
            return row
        self._inflight[key] = (item, workdir, lock)
        return None

    def _collect(self, done) -> tuple[Planned, dict]:
        """A finished job's row: its files moved into the store, the row stored, the key unlocked."""
        self._watcher.poll(done.token)  # its last progress lines, before its work folder moves
        item, workdir, lock = self._inflight.pop(done.token)
        row = _empty_row(item)
        row["log"] = str(self.store.log_path(done.token))
        try:
            if done.result is None:  # the worker died or timed out: say so, in the row and its log
                row.update(status=FAILED, error=done.error[:1].upper() + done.error[1:] + ".")
                with open(row["log"], "a") as f:
                    f.write(row["error"] + "\n")
            else:
                row.update(done.result)
            if row["status"] == OK:
                final = self.store.commit_files(done.token, workdir)
                row = rebased(row, workdir, final)
            else:
                self.store.discard(workdir)
            try:
                self.store.put(done.token, row)
            except StoreWriteError as exc:  # the row stays in this study; only its reuse is lost
                row["notes"] = "; ".join(p for p in (row.get("notes"), f"not stored: {one_line(exc)}") if p)
        finally:
            lock.__exit__(None, None, None)
        return item, self._scored(item, row)

    def _cancel_pending(self) -> None:
        """Stop: jobs an executor has queued but not started (Ray's) are cancelled; running ones finish."""
        for token in getattr(self._executor, "cancel_pending", lambda: [])():
            item, workdir, lock = self._inflight.pop(token)
            self.store.discard(workdir)
            lock.__exit__(None, None, None)

    def _abandon(self) -> None:
        """After an interrupt: stop the jobs in flight, drop their unfinished files, unlock their keys."""
        self._executor.cancel()
        for item, workdir, lock in self._inflight.values():
            self.store.discard(workdir)
            lock.__exit__(None, None, None)
        self._inflight = {}

    def _record(self, row: dict, bar) -> None:
        self.candidates.append(Candidate(row, self))
        self._save_rows(finished=False)
        event = "candidate_failed" if row["status"] == FAILED else "candidate_finished"
        self._emit(event, {"row": public(row)})
        if bar is not None:
            bar.set_postfix_str(row["name"][:40])
            bar.update(1)

    def _warn_no_baseline(self) -> None:
        """Every backend failed: the study still returns its rows, and says so once, with the reasons."""
        rows = [c.row for c in self.candidates if c.row["recipe"] == BASELINE.name]
        if not rows or any(r["status"] == OK for r in rows):
            return
        why = "; ".join(f"{r['backend']}: {(r['error'] or 'no reason given').rstrip('.')}" for r in rows)
        warnings.warn(f"nbopt: no backend has a working baseline ({why}); fix that cause, or try another "
                      "backend (backends=[...]).", stacklevel=3)

    def _unusable_row(self, name: str) -> dict:
        row = _empty_row(Planned(name, BASELINE))
        row.update(status=FAILED, error=self._unusable[name], log=str(self.store.log_path(f"prepare-{name}")))
        self._baseline_rows[name] = row
        return row

    def _rated(self, item: Planned, row: dict) -> dict:
        """Size ratio, drop and speed notes against the same backend's baseline (a baseline is kept)."""
        if item.recipe is BASELINE:
            if row["status"] == OK:
                row["size_ratio"] = 1.0
            self._baseline_rows[item.backend] = row
            return row
        base = self._baseline_rows.get(item.backend, {})
        if row["status"] == OK and base.get("status") == OK:
            row["size_ratio"] = row["size_bytes"] / base["size_bytes"]
            if row["accuracy"] is not None and base["accuracy"] is not None:
                row["accuracy_drop"] = self.metric.drop(row["accuracy"], base["accuracy"])
            why = no_speedup_reasons(row, base, row.get("size_breakdown"), cpu_features())
            if why:  # read from the artifact and this machine, on every run (the machine may differ)
                row["notes"] = "; ".join([row["notes"] or "", "not faster than the baseline: " + " ".join(why)])
        return row

    def _key(self, item: Planned) -> str:
        backend = self.backends[item.backend]
        parts = dict(model=self._model_fp[item.backend], calib=getattr(self.calib_data, "fingerprint", None),
                     eval=self.eval_data.fingerprint, backend=item.backend, recipe=item.recipe.name,
                     params=item.recipe.params_json(), versions=backend.versions(), nbopt=__version__,
                     latency=vars(self.latency), memory=self.measure_memory)
        if self.train_data is not None and _uses_train(item.recipe.name):
            parts["train"] = self.train_data.fingerprint  # only where it matters: other rows stay reusable
        # No metric in the key (outputs are stored and the metric is recomputed from them on every run),
        # except where the metric chose the artifact: mixed-precision picks its trial by it.
        if item.recipe.name == "mixed-precision":
            parts["metric"] = self._metric_name
        return candidate_key(**parts)

    def _size_breakdown(self, backend: str, artifact: Artifact) -> dict | None:
        """Where the bytes go, read from the artifact; a file the reader cannot parse costs the row nothing."""
        try:
            return self.backends[backend].size_breakdown(artifact)
        except Exception:  # noqa: BLE001
            write_log(traceback.format_exc())
            return None

    def size_table(self, name: str) -> dict:
        """Where candidate ``name``'s bytes go: bytes by dtype, the largest tensors, the file's segments."""
        cand = next((c for c in self.candidates if c.name == name), None)
        if cand is None:
            raise NboptError(f"This study has no candidate '{name}'; its candidates: "
                             f"{', '.join(c.name for c in self.candidates)}.")
        if cand.row["status"] != OK:
            raise NboptError(f"Candidate '{name}' has no artifact ({cand.row['status']}: {cand.row['error']}).")
        breakdown = cand.row.get("size_breakdown")
        if breakdown is None:  # a row stored before breakdowns existed
            artifact = Artifact(cand.row["artifact_path"], cand.row["format"], cand.row["artifact_files"])
            breakdown = cand.row["size_breakdown"] = self._size_breakdown(cand.row["backend"], artifact)
        if breakdown is None:
            raise NboptError(f"The {cand.row['backend']} backend cannot read where the bytes of '{name}' go.")
        return breakdown

    def _scored(self, item: Planned, stored: dict) -> dict:
        """The row with the study's metric computed from the candidate's stored outputs: on every run, so a
        changed metric (or one that reads changed notebook variables) is never stale."""
        row = dict(stored)
        if row["status"] != OK or not row.get("outputs_path"):
            return row  # failed, skipped, or not measurable on this system
        outputs = np.load(row["outputs_path"])
        if item.recipe is BASELINE:
            self._baseline_outputs[item.backend] = outputs
        try:
            value = score(self.metric, outputs, self._eval_labels, self._baseline_outputs.get(item.backend))
        except Exception as exc:  # noqa: BLE001 - a metric that breaks fails this row, not the sweep
            return {**row, "status": FAILED, "error": f"The metric failed: {one_line(exc)}"}
        if not np.isfinite(value):
            return {**row, "status": FAILED, "error": f"The metric returned {value} for this candidate."}
        row["accuracy"] = value
        if item.recipe is BASELINE:
            row["accuracy_drop"] = 0.0
        base = self._baseline_outputs.get(item.backend)
        if base is not None:  # is the drop real? the interval, and which classes lost
            row.update(row_columns(self.metric, outputs, base, self._eval_labels, self.class_names,
                                   with_interval=item.recipe is not BASELINE, seed=self.seed))
        return row

    def _started(self, item: Planned, cached: bool) -> dict:
        return {"index": len(self.candidates), "name": item.name, "backend": item.backend,
                "recipe": item.recipe.name, "params": dict(item.recipe.params), "cached": cached}

    def _skip_row(self, item: Planned, broken: set) -> dict | None:
        reason = item.skip_reason
        if not reason and _monotone_group(item) in broken:
            param = MONOTONE_PARAMS[item.recipe.name]
            reason = (f"a smaller {param} already broke the accuracy budget of {self.max_accuracy_drop}, "
                      f"so {param}={item.recipe.params[param]} was not tried")
        if not reason:
            return None
        self._emit("candidate_started", self._started(item, cached=False))
        row = _empty_row(item)
        row.update(status=SKIPPED, error=reason)
        return row

    def _breaks_budget(self, row: dict) -> bool:
        drop = row.get("accuracy_drop")
        return self.max_accuracy_drop is not None and drop is not None and drop > self.max_accuracy_drop

    # -- reading the results ---------------------------------------------------------------------
    @property
    def sensitivity_backends(self) -> list[str]:
        """The study's backends that can measure per-layer sensitivity (and took the model)."""
        return [n for n, b in self.backends.items() if b.supports_sensitivity and n in self._prep]

    def sensitivity_table(self, backend: str = "onnx"):
        """Per-layer sensitivity (which layers break accuracy when quantized), measured on the calibration
        data: a DataFrame ranked most-sensitive first. Computed once, then cached."""
        if backend not in self.sensitivity:
            analyzer = self._sensitivity_backend(backend)
            self.sensitivity[backend] = analyzer.sensitivity(self.prepared(backend), self.calib_data)
        return self.sensitivity[backend]

    def sensitivity_cost(self, backend: str = "onnx") -> tuple[bool, int]:
        """(already measured, number of layers the analysis would quantize one at a time)."""
        if backend in self.sensitivity:
            return True, len(self.sensitivity[backend])
        return self._sensitivity_backend(backend).sensitivity_cost(self.prepared(backend), self.calib_data)

    def _sensitivity_backend(self, backend: str) -> Backend:
        if backend in self._unusable:
            raise NboptError(f"The {backend} backend could not take the model: {self._unusable[backend]}")
        if backend not in self.backends or not self.backends[backend].supports_sensitivity:
            able = sensitivity_capable()
            raise NboptError(f"No sensitivity analysis for backend '{backend}' in this study; backends that "
                             f"have it: {self.sensitivity_backends or 'none here'} (add one of {able} to backends).")
        return self.backends[backend]

    def __repr__(self) -> str:
        ok = sum(c.row["status"] == OK for c in self.candidates)
        return f"<nbopt.Study {len(self.candidates)} rows ({ok} ok) metric={self.metric.name}>"


def last_study() -> "Study | None":
    """The study of the last ``optimize()`` / ``Study.run()``, also when it was interrupted."""
    return _LAST


def optimize(model: Any, calib: Any = None, eval: Any = None, metric: str | Callable = "accuracy",
             recipes: Iterable[Any] | None = None, backends: Sequence[str] | None = None,
             max_accuracy_drop: float | None = None, store: str | Path | None = ".nbopt", tokenizer: Any = None,
             **kwargs) -> Study:
    """Run a sweep of optimization recipes on ``model`` and return the measured ``Study``. ``tokenizer``
    turns text data (a list of strings, or (texts, labels)) into token ids."""
    return Study(model, calib=calib, eval=eval, metric=metric, recipes=recipes, backends=backends,
                 max_accuracy_drop=max_accuracy_drop, store=store, tokenizer=tokenizer, **kwargs).run()


# -- helpers -------------------------------------------------------------------------------------------
def _sentence(text: str) -> str:
    """An executor's 'the worker died while ...' as the row's error sentence."""
    text = (text or "the worker ended without a result").strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def _uses_train(recipe: str) -> bool:
    """Recipes that read train= (structured pruning fine-tunes on it when given)."""
    return recipe in TRAINING_RECIPES or recipe == "prune-structured"


def _defaults(recipe: str) -> dict:
    return {k: p.default for k, p in RECIPES[recipe].params.items()} if recipe in RECIPES else {}


def _check_same_inputs(other: Data | None, eval_data: Data, role: str = "calibration") -> None:
    """Calibration and train data must feed the model the way the evaluation data does."""
    if other is None:
        return
    if other.input_names != eval_data.input_names:
        raise NboptError(f"The {role} data has inputs {other.input_names} but the evaluation data has "
                         f"{eval_data.input_names}: give both the same inputs.")
    c, e = other.example(1), eval_data.example(1)
    for name in e:
        if c[name].shape[1:] != e[name].shape[1:]:
            raise NboptError(f"{role.capitalize()} examples of '{name}' have shape {c[name].shape[1:]} but "
                             f"evaluation examples have {e[name].shape[1:]}: give both in the model's input shape.")


def _warn_overlap(train: Data | None, eval_data: Data) -> None:
    """Eval examples found in train= would make every trained candidate look better than it is."""
    if train is None:
        return
    from .training import overlap

    n = overlap(train, eval_data)
    if n:
        total = eval_data.num_examples or n
        warnings.warn(f"nbopt: {n} of {total} eval examples also appear in train=...: trained candidates will "
                      "look better than they are; split your data so that eval examples are never trained on.",
                      stacklevel=4)


class _ProgressWatcher:
    """Tails the progress files of the candidates in flight (written by training engines in the workers)
    and turns each line into a ``training_progress`` event and the progress bar's text."""

    def __init__(self, study: "Study", bar, every: float = 0.5):
        self.study, self.bar, self.every = study, bar, every
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()  # the thread and _collect both poll
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nbopt-progress", daemon=True)

    def start(self) -> "_ProgressWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            self.poll()

    def poll(self, only: str | None = None) -> None:
        from .training import PROGRESS_FILE, read_new

        with self._lock:
            for key, (item, workdir, _lock) in list(getattr(self.study, "_inflight", {}).items()):
                if only is None or key == only:
                    self._emit(key, item, *read_new(Path(workdir) / PROGRESS_FILE, self._offsets.get(key, 0)))

    def _emit(self, key: str, item: Planned, lines: list[dict], offset: int) -> None:
        self._offsets[key] = offset
        for line in lines:
            payload = {k: line.get(k) for k in EVENTS["training_progress"]}
            payload["name"] = item.name
            self.study._emit("training_progress", payload)
            if self.bar is not None:
                self.bar.set_postfix_str(_progress_text(payload)[:60])


def _progress_text(p: dict) -> str:
    loss = f" loss {p['loss']:.4g}" if isinstance(p.get("loss"), (int, float)) else ""
    return f"{p['name']} {p.get('phase') or 'training'} epoch {p.get('epoch')}/{p.get('epochs')}{loss}"


def _label_ids(model: Any, names: Sequence[str] | None, metric: Metric, eval_data: Data,
               calib: Data | None, train: Data | None = None):
    """Class-name labels become class indices, from ``labels=`` or the model's own ``config.id2label``:
    (eval, calib, train, names)."""
    if not any(d is not None and d.string_labels for d in (eval_data, calib, train)):
        return eval_data, calib, train, [str(n) for n in names] if names is not None else None
    if names is None:
        id2label = getattr(getattr(model, "config", None), "id2label", None)
        names = [id2label[i] for i in sorted(id2label)] if isinstance(id2label, dict) and id2label else None
    if names is None:
        if metric.fn.__module__ != "nbopt.metrics":
            return eval_data, calib, train, None  # the user's own metric gets the names as they are
        raise NboptError("The labels are class names, not class indices: pass labels=[...] with the class "
                         "names in the order of the model's outputs (or give integer labels).")
    names = [str(n) for n in names]
    fixed = [d.with_label_ids(names, role) if d is not None and d.string_labels else d
             for d, role in ((eval_data, "eval"), (calib, "calib"), (train, "train"))]
    return fixed[0], fixed[1], fixed[2], names


def _pickle_with_own_code(model: Any) -> bytes:
    """cloudpickle the model; classes from the user's own modules (a .py next to the notebook, not an
    installed package) go by value, so a worker runs the code as it is now in this process (an edited
    or autoreloaded forward(), a monkeypatched method), not the file it would import."""
    import cloudpickle

    own = _own_modules(model)
    for module in own:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(model)
    finally:
        for module in own:
            cloudpickle.unregister_pickle_by_value(module)


def _own_modules(model: Any) -> list:
    import sys
    import sysconfig

    classes = {type(model)}
    if hasattr(model, "modules") and callable(model.modules):  # a torch model's submodules
        try:
            classes |= {type(m) for m in model.modules()}
        except Exception:  # noqa: BLE001 - not a torch model after all
            pass
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib")}
    out = []
    for name in sorted({c.__module__ for c in classes} - {"__main__", "builtins"}):
        module, file = sys.modules.get(name), getattr(sys.modules.get(name), "__file__", None)
        if file is None or name.split(".")[0] == "nbopt":
            continue
        if not any(base in Path(file).resolve().parents for base in installed):
            out.append(module)
    return out


def _describe(model: Any) -> str:
    """A few words on the model for the store's list of studies: 'torch Net (151,306 parameters)'."""
    if isinstance(model, (str, Path)):
        return f"file {Path(model).name}"
    kind = type(model).__module__.split(".")[0]
    count = None
    try:
        if hasattr(model, "parameters"):
            count = sum(int(p.numel()) for p in model.parameters())
        elif hasattr(model, "count_params"):
            count = int(model.count_params())
    except Exception:  # noqa: BLE001 - a description is never worth a failure
        pass
    return f"{kind} {type(model).__name__}" + (f" ({count:,} parameters)" if count is not None else "")


def _empty_row(item: Planned) -> dict:
    return empty_row(item.name, item.backend, item.recipe.name, dict(item.recipe.params))


def _monotone_group(item: Planned) -> tuple:
    param = MONOTONE_PARAMS.get(item.recipe.name)
    if param is None:
        return ("", id(item))
    rest = tuple(sorted((k, str(v)) for k, v in item.recipe.params.items() if k != param))
    return (item.backend, item.recipe.name, rest)


def _monotone_order(plan: list[Planned]) -> list[Planned]:
    """Within a grid over a monotone parameter (pruning amount), try small values first."""
    def key(pair):
        i, item = pair
        param = MONOTONE_PARAMS.get(item.recipe.name)
        first = min(j for j, other in enumerate(plan) if _same_group(other, item)) if param else i
        return (first, item.recipe.params.get(param, 0) if param else 0, i)

    return [item for _, item in sorted(enumerate(plan), key=key)]


def _same_group(a: Planned, b: Planned) -> bool:
    return a.recipe.name in MONOTONE_PARAMS and _monotone_group(a) == _monotone_group(b)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="nbopt", unit="candidate")


def _tempdir() -> Path:
    import atexit
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="nbopt-store-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
