"""A candidate (one row with its deployable artifact) and what every study view reads from its rows:
the results table, the Pareto front, the best candidate, the plot and the report. ``Study`` and a study
reopened from a store (``nbopt.reopen.StoredStudy``) share it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import NboptError
from .pareto import OBJECTIVES, pareto_mask, resolve
from .schema import COLUMN_NAMES, OK, public


@dataclass
class Candidate:
    """One row of the study with its artifact. ``export`` writes the deployable file and a model card."""

    row: dict
    study: Any = field(repr=False)  # a Study, or a StoredStudy

    @property
    def name(self) -> str:
        return self.row["name"]

    def export(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the deployable file(s) and a JSON model card; an existing file is replaced only with
        ``overwrite=True``."""
        from .export import export_candidate

        return export_candidate(self, Path(path), overwrite=overwrite)

    def runner(self):
        """The artifact loaded in its own runtime: an nbopt Runner, ``runner({"input": batch}) -> outputs``
        (numpy), e.g. for ``nbopt.tiling.run_tiled``. It takes inputs as the row's ``input_shape`` and
        ``preprocessing`` say (``resolution`` candidates: the resized images)."""
        from .backends import get_backend
        from .backends.base import Artifact

        row = self.row
        if row["status"] != OK or not row.get("artifact_path"):
            raise NboptError(f"Candidate '{row['name']}' has no artifact to run (status {row['status']}: "
                             f"{row['error']}).")
        files = row.get("artifact_files") or [row["artifact_path"]]
        return get_backend(row["backend"]).load(Artifact(row["artifact_path"], row["format"], files=files))


class StudyResults:
    """Reading a study's rows. Needs ``candidates``, ``metric``, ``objectives``, ``max_accuracy_drop`` and
    ``backends`` on the instance."""

    @property
    def results(self):
        import pandas as pd

        rows = [public(c.row) for c in self.candidates]
        extra = sorted({k for r in rows for k in r} - set(COLUMN_NAMES))
        return pd.DataFrame(rows, columns=[*COLUMN_NAMES, *extra])

    def _objective_columns(self, objectives: Sequence[str] | None) -> list[tuple[str, str]]:
        return resolve(objectives or self.objectives, self.metric.greater_is_better)

    def pareto(self, objectives: Sequence[str] | None = None):
        """The non-dominated ``ok`` rows for the objectives (default: the study's)."""
        df = self.results
        cols = self._objective_columns(objectives)
        ok = df[df["status"] == OK]
        mask = pareto_mask(ok[[c for c, _ in cols]].to_numpy(dtype=float), [s for _, s in cols])
        return ok[mask].sort_values(cols[0][0])

    def best(self, max_accuracy_drop: float | None = None, objective: str = "size",
             backend: str | None = None, budget_on: str = "drop") -> Candidate | None:
        """The smallest (or fastest, ...) measured candidate within the accuracy budget, of one backend if
        ``backend`` is given; None if none fits. ``budget_on="upper"`` holds the upper end of the drop's
        95 % interval to the budget instead of the drop itself (a drop that may be worse than it looks)."""
        budget = self.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop
        if budget_on not in ("drop", "upper"):
            raise NboptError(f"budget_on is {budget_on!r}; allowed: 'drop', 'upper'.")
        if objective not in OBJECTIVES or objective == "accuracy":
            known = ", ".join(o for o in OBJECTIVES if o != "accuracy")
            raise NboptError(f"Unknown objective '{objective}' for best(); known objectives: {known}.")
        if backend is not None and backend not in self.backends:
            raise NboptError(f"This study has no backend '{backend}'; its backends: {', '.join(self.backends)}.")
        column, _ = OBJECTIVES[objective]
        best = None
        for cand in self.candidates:
            r = cand.row
            if r.get("status") != OK or r.get(column) is None or r.get("accuracy") is None:
                continue
            if backend is not None and r.get("backend") != backend:
                continue
            drop = r.get("accuracy_drop") or 0.0
            if budget_on == "upper" and r.get("accuracy_drop_high") is not None:
                drop = r["accuracy_drop_high"]
            if budget is not None and drop > budget:
                continue
            if best is None or self._better(r, best.row, column):
                best = cand
        return best

    def _better(self, a: dict, b: dict, column: str) -> bool:
        """Smaller on the objective; on a tie, the more accurate one (as the panel's recommendation)."""
        if a[column] != b[column]:
            return a[column] < b[column]
        return self.metric.drop(a["accuracy"], b["accuracy"]) < 0

    def plot(self, objectives: Sequence[str] | None = None):
        from .plotting import pareto_figure

        return pareto_figure(self, objectives)

    def to_html(self, path: str | Path) -> Path:
        from .report import write_report

        return write_report(self, Path(path))

    def _repr_html_(self) -> str:
        return self.results.drop(columns=["artifact_path"])._repr_html_()
