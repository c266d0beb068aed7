"""The nbopt panel: an anywidget that follows a Study live (Pareto plot, progress, table, export).

The widget's traits are the single source of truth; the front end (``js/``, bundled into
``nbopt/static/``) only draws them and writes back what the user changes (axis, budget, selection,
recipe choice). Commands that make the kernel work (run, stop, export) arrive as messages.

The sweep runs in a background thread (``nbopt.sweep``), so the kernel stays free to handle Stop and
the page stays responsive; the panel follows it through the study's events and only updates traits.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import anywidget
import traitlets as t

from .errors import NboptError, one_line
from .schema import SKIPPED, public
from .sweep import BackgroundSweep

_STATIC = Path(__file__).parent / "static"
_AXES = ("size", "latency", "memory")
_BUILD_HINT = ("nbopt's front end is not built (nbopt/static/widget.js is missing): run "
               "`npm --prefix js ci && npm --prefix js run build` in the source tree.")

class Panel(anywidget.AnyWidget):
    """Interactive panel: ``Panel(model, calib=..., eval=...)`` lets you choose recipes and backends and
    Run; ``Panel.follow(study)`` (what ``%%optimize`` uses) follows a study as it runs.

    Extra keyword arguments go to ``nbopt.Study`` (``metric``, ``max_accuracy_drop``, ``store``, ...).
    """

    _esm = _STATIC / "widget.js"
    _css = _STATIC / "widget.css"

    mode = t.Unicode("sweep").tag(sync=True)  # "setup": recipe/backend choice and a Run button
    status = t.Unicode("idle").tag(sync=True)  # idle | running | stopping | done | stopped | error
    message = t.Unicode("").tag(sync=True)
    metric = t.Unicode("accuracy").tag(sync=True)
    higher_is_better = t.Bool(True).tag(sync=True)
    total = t.Int(0).tag(sync=True)
    done = t.Int(0).tag(sync=True)
    running = t.Unicode("").tag(sync=True)  # name of the running candidate
    training = t.Dict().tag(sync=True)  # the last training_progress event (epoch, loss, seconds) of it
    search = t.Unicode("").tag(sync=True)  # search="auto": the rung each backend is on, and why
    elapsed_s = t.Float(0.0).tag(sync=True)
    durations = t.List(t.Float()).tag(sync=True)  # seconds per finished candidate (for the estimate)
    rows = t.List(t.Dict()).tag(sync=True)  # study.results rows, JSON-safe, each with a stable "id"
    x_axis = t.Enum(_AXES, default_value="size").tag(sync=True)
    max_drop = t.Float(None, allow_none=True).tag(sync=True)  # accuracy budget (a drop); None: off
    selected = t.Unicode("").tag(sync=True)  # id of the selected row
    export_status = t.Dict().tag(sync=True)  # {"id", "path" | "error", "busy"}
    available_recipes = t.List(t.Unicode()).tag(sync=True)
    available_backends = t.List(t.Unicode()).tag(sync=True)
    recipes = t.List(t.Unicode()).tag(sync=True)  # chosen in setup mode; empty: the default sweep
    backends = t.List(t.Unicode()).tag(sync=True)  # chosen in setup mode; empty: the model's own
    waiting = t.Bool(False).tag(sync=True)  # a later cell is waiting for this sweep
    result_name = t.Unicode("").tag(sync=True)  # notebook variable the study is stored in when done
    # per-layer quantization sensitivity of the onnx backend (rank 1 = most sensitive), filled when the
    # sweep finishes: [{"node", "op_type", "params", "rel_error", "rank"}]; the note says why it is empty
    sensitivity = t.List(t.Dict()).tag(sync=True)
    sensitivity_note = t.Unicode("").tag(sync=True)

    def __init__(self, model: Any = None, calib: Any = None, eval: Any = None, *, recipes: Any = None,
                 backends: Any = None, **study_kwargs: Any):
        if not _STATIC.joinpath("widget.js").exists():
            raise NboptError(_BUILD_HINT)
        super().__init__()
        self.study = None
        self.error: BaseException | None = None  # what ended a sweep early (its traceback included)
        self._sweep: BackgroundSweep | None = None
        self._t0 = 0.0
        self._started_at: float | None = None
        self._lock = threading.Lock()
        self._on_done: list = []
        self._model, self._calib, self._eval = model, calib, eval
        self._study_kwargs = study_kwargs
        self._recipe_spec = recipes
        self.on_msg(self._on_custom_msg)
        if model is not None:
            self._setup(model, recipes, backends)

    # ------------------------------------------------------------------------------------ set-up
    def _setup(self, model: Any, recipes: Any, backends: Any) -> None:
        from .backends import default_backends, get_backend, installed_backends, recipes_of
        from .recipes import parse_recipes

        usable = [name for name in installed_backends() if get_backend(name).accepts(model)]
        known = recipes_of(usable)
        chosen_backends = [backends] if isinstance(backends, str) else list(backends or [])
        names = [r.name for r in parse_recipes(recipes) or []]
        self._recipe_names = list(dict.fromkeys(names))
        from .metrics import get_metric

        metric = get_metric(self._study_kwargs.get("metric", "accuracy"))  # an unknown name fails now
        with self.hold_sync():
            self.mode = "setup"
            self.available_backends = usable
            self.available_recipes = known
            self.backends = chosen_backends or default_backends(model)
            self.recipes = self._recipe_names
            self.metric = metric.name
            self.higher_is_better = bool(metric.greater_is_better)
            objectives = self._study_kwargs.get("objectives") or ("size",)
            if objectives[0] in _AXES:
                self.x_axis = objectives[0]
            self.max_drop = self._study_kwargs.get("max_accuracy_drop")

    @classmethod
    def follow(cls, study, *, result_name: str = "", on_done=None) -> "Panel":
        """A panel that follows ``study`` (already constructed); call ``start()`` to run it."""
        panel = cls()
        panel._attach(study)
        panel.result_name = result_name
        if on_done is not None:
            panel._on_done.append(on_done)
        return panel

    def _attach(self, study) -> None:
        self.study = study
        study.on(self._on_event)
        objective = study.objectives[0] if study.objectives else "size"
        with self.hold_sync():
            self.metric = study.metric.name
            self.higher_is_better = bool(study.metric.greater_is_better)
            self.total = study.total
            self.done = 0
            self.rows = []
            self.durations = []
            self.selected = ""
            self.export_status = {}
            self.sensitivity = []
            self.sensitivity_note = ""
            self.message = ""
            self.status = "idle"
            if objective in _AXES:
                self.x_axis = objective
            if study.max_accuracy_drop is not None:
                self.max_drop = float(study.max_accuracy_drop)

    # ------------------------------------------------------------------------------------ running
    def start(self) -> "Panel":
        """Run the attached study (or, in setup mode, a new one) in a background thread."""
        with self._lock:
            if self.is_running:
                return self
            self.error = None
            self.status = "running"
            self.message = ""
            self._t0 = time.perf_counter()
            self._sweep = BackgroundSweep(self._work, self._stop_study, self._set_waiting).start()
        return self

    run = start

    @property
    def is_running(self) -> bool:
        return self._sweep is not None and self._sweep.is_running

    def _set_waiting(self, flag: bool) -> None:
        self.waiting = flag

    def _stop_study(self) -> None:
        if self.study is not None:
            self.study.stop()
            self.status = "stopping"

    def stop(self) -> None:
        """End the sweep after the running candidate; everything finished is kept."""
        if self._sweep is not None:
            self._sweep.stop()

    def wait(self, timeout: float | None = None) -> "Panel":
        """Block until the sweep has finished (``KeyboardInterrupt`` stops it, then waits)."""
        if self._sweep is not None:
            self._sweep.wait(timeout)
        return self

    def _work(self) -> None:
        try:
            if self.mode == "setup":
                self._attach(self._new_study())
                self.status = "running"
                self._t0 = time.perf_counter()
            self.study.run()
            if not self.study.stopped:
                self._fill_sensitivity()
        except BaseException as exc:  # noqa: BLE001 - reported in the panel, never printed
            self.error = exc
            self.message = one_line(exc)
            self.status = "error"
        finally:
            self._finish()

    def _fill_sensitivity(self) -> None:
        """The first sensitivity-capable backend's per-layer table, in the sweep thread, when it is cheap:
        cached by a mixed-precision candidate, or at most SENSITIVITY_MAX_NODES weight layers. Never raises."""
        study = self.study
        if not study.sensitivity_backends or study.calib_data is None:
            return
        backend = study.sensitivity_backends[0]
        self.running = "layer sensitivity"
        try:
            cached, n = study.sensitivity_cost(backend)
            if not cached and n > SENSITIVITY_MAX_NODES:
                self.sensitivity_note = (f"Layer sensitivity not computed: the model has {n} weight layers "
                                         f"(more than {SENSITIVITY_MAX_NODES}); run "
                                         f"study.sensitivity_table('{backend}') to compute it.")
                return
            table = study.sensitivity_table(backend)
            self.sensitivity = _sensitivity_rows(table)
            self.sensitivity_note = "" if len(table) else "No layer with quantizable weights was found."
        except Exception as exc:  # noqa: BLE001 - one line in the section, never raised
            self.sensitivity = []
            self.sensitivity_note = f"Layer sensitivity failed: {one_line(exc)}"
        finally:
            self.running = ""

    def _new_study(self):
        from .study import Study

        kwargs = dict(self._study_kwargs)
        kwargs.setdefault("progress", False)
        chosen = list(self.recipes)
        recipes = self._recipe_spec if chosen == self._recipe_names and self._recipe_spec is not None else (chosen or None)
        return Study(self._model, calib=self._calib, eval=self._eval, recipes=recipes,
                     backends=list(self.backends) or None, **kwargs)

    def _finish(self) -> None:
        study = self.study
        with self.hold_sync():
            if study is not None:
                self.rows = [_json_row(c.row, i) for i, c in enumerate(study.candidates)]
                self.done = len(study.candidates)
            self.running = ""
            self.elapsed_s = round(time.perf_counter() - self._t0, 2)
            if self.status != "error":
                self.status = "stopped" if getattr(study, "stopped", False) else "done"
        for fn in self._on_done:
            try:
                fn(self)
            except Exception as exc:  # noqa: BLE001
                self.message = one_line(exc)

    def _on_event(self, event: str, payload: dict) -> None:
        """Study callback, called in the sweep thread: update traits, nothing else."""
        now = time.perf_counter()
        with self.hold_sync():
            self.elapsed_s = round(now - self._t0, 2)
            if event == "study_started":
                self.total = int(payload.get("total", self.total))
            elif event == "training_progress":
                self.training = _json_value(dict(payload))
            elif event == "search_step":
                self.search = (f"search {payload['backend']}: step {payload['step']}/{payload['of']} "
                               f"{payload['rung']} ({payload['why']})")
            elif event == "search_finished":
                self.total = int(payload.get("total", self.total))
                self.search = ""
            elif event == "candidate_started":
                self.running = str(payload.get("name", ""))
                self.training = {}
                self._started_at = None if payload.get("cached") else now
            elif event in ("candidate_finished", "candidate_failed"):
                row = _json_row(payload["row"], len(self.rows))
                self.rows = [*self.rows, row]
                self.done = len(self.rows)
                self.running = ""
                if self._started_at is not None and row.get("status") != SKIPPED:
                    self.durations = [*self.durations, round(now - self._started_at, 3)]
                self._started_at = None

    # ------------------------------------------------------------------------------------ messages
    def _on_custom_msg(self, _widget, content: dict, _buffers) -> None:
        kind = content.get("type")
        if kind == "stop":
            self.stop()
        elif kind == "run" and self.mode == "setup":
            self.start()
        elif kind == "export":
            self.export(str(content.get("id", "")), content.get("path") or None)

    def export(self, row_id: str, path: str | None = None) -> Path | None:
        """Write the artifact of row ``row_id`` (candidate.export) and say where in ``export_status``."""
        self.export_status = {"id": row_id, "busy": True}
        try:
            cand = self._candidate(row_id)
            target = Path(path) if path else self._default_export_path(cand)
            written = cand.export(target)
            self.export_status = {"id": row_id, "path": str(Path(written).resolve())}
            return written
        except Exception as exc:  # noqa: BLE001 - shown in the panel, one line
            self.export_status = {"id": row_id, "error": f"Export failed: {one_line(exc)}"}
            return None

    def _candidate(self, row_id: str):
        if self.study is None:
            raise NboptError("Nothing to export yet: run the study first.")
        try:
            return self.study.candidates[int(row_id)]
        except (ValueError, IndexError):
            raise NboptError(f"There is no candidate '{row_id}' in this study.") from None

    @staticmethod
    def _default_export_path(cand) -> Path:
        """``nbopt_exports/<candidate name>.<ext>`` next to the notebook; a second export of the same
        candidate gets ``-2``, ``-3``, ... (an export never replaces a file)."""
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cand.name).strip("_")
        suffix = Path(cand.row["artifact_path"]).suffix
        target, n = Path("nbopt_exports") / f"{safe}{suffix}", 1
        while target.exists() or target.with_suffix(".json").exists():
            n += 1
            target = Path("nbopt_exports") / f"{safe}-{n}{suffix}"
        return target

    # ------------------------------------------------------------------------------------ reading
    @property
    def selected_candidate(self):
        """The candidate selected in the panel (click a point or a row), or None."""
        if self.study is None or not self.selected:
            return None
        try:
            return self._candidate(self.selected)
        except NboptError:
            return None

    def best(self):
        """``study.best`` for the budget set with the panel's slider."""
        return None if self.study is None else self.study.best(self.max_drop)

    # ------------------------------------------------------------------------------------ reopening
    @classmethod
    def _open_stored(cls, store: Any = ".nbopt", study: str | None = None) -> "Panel":
        """``Panel.open(store=".nbopt", study=None)``: a panel that redraws a study kept in ``store`` (after a
        restart), without running anything: its plot, table and details, and export of its stored
        artifacts. ``study``: its id or a unique prefix (see ``nbopt.open(store)``); None: the most recently
        run one. A stopped study shows as stopped."""
        from .reopen import load_study

        panel = cls()
        panel._show_stored(load_study(store, study))
        return panel

    class _Open:
        """``Panel.open(...)`` on the class reopens a stored study (``_open_stored``); on a panel it stays
        ipywidgets' own ``Widget.open()``, which opens the comm (``Widget.__init__`` calls it)."""

        def __get__(self, obj, cls):
            return cls._open_stored if obj is None else super(Panel, obj).open

    open = _Open()

    def _show_stored(self, stored) -> None:
        self.study = stored
        objective = stored.objectives[0] if stored.objectives else "size"
        rows = [_json_row(c.row, i) for i, c in enumerate(stored.candidates)]
        with self.hold_sync():
            self.mode = "view"  # no Run, no recipe choice; Stop stays hidden (nothing runs)
            self.metric = stored.metric.name
            self.higher_is_better = bool(stored.metric.greater_is_better)
            self.rows = rows
            self.total = max(stored.total, len(rows))
            self.done = len(rows)
            self.durations = []
            self.selected = ""
            self.export_status = {}
            self.sensitivity = []
            self.sensitivity_note = ""
            self.elapsed_s = self._run_seconds(stored.started, stored.updated)
            self.message = f"Reopened from the store {stored.store}: {stored.describe()}."
            if objective in _AXES:
                self.x_axis = objective
            if stored.max_accuracy_drop is not None:
                self.max_drop = float(stored.max_accuracy_drop)
            self.status = "done" if stored.finished else "stopped"

    @staticmethod
    def _run_seconds(started: str | None, updated: str | None) -> float:
        """Seconds from the start of a stored study's last run to its last recorded row (0 when unknown)."""
        from datetime import datetime

        try:
            seconds = (datetime.fromisoformat(updated) - datetime.fromisoformat(started)).total_seconds()
        except (TypeError, ValueError):
            return 0.0
        return round(max(0.0, seconds), 2)


SENSITIVITY_MAX_NODES = 200  # above this, the panel does not compute the sensitivity table on its own
_SENSITIVITY_COLUMNS = ("node", "op_type", "params", "rel_error", "rank")


def _sensitivity_rows(table) -> list[dict]:
    """The table as JSON-safe rows, rank order (NaN rel_error -> None, for nodes that failed alone)."""
    cols = [c for c in _SENSITIVITY_COLUMNS if c in table.columns]
    rows = table.sort_values("rank")[cols].to_dict("records") if len(table) else []
    return [{k: _json_value(v) for k, v in r.items()} for r in rows]


def _json_row(row: dict, index: int) -> dict:
    out = {k: _json_value(v) for k, v in public(row).items()}
    out["id"] = str(index)
    return out


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    item = getattr(v, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _json_value(item())
        except (TypeError, ValueError):
            pass
    return str(v)
