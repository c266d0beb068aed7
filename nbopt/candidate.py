"""A candidate: one row of a study (running, or reopened from a store) with its deployable artifact."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
