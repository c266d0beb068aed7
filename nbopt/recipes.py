"""Recipes: one technique with its parameters, and the grid a list value expands into.

A recipe names *what* is done (``int8-static`` with ``calibration: entropy``), never how a backend does
it. Backends register one handler per recipe name (see ``nbopt.backends.base``).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import NboptError

RECIPE_NAMES = (
    "fp16", "int8-dynamic", "int8-static", "int8-weight-only", "int4-weight-only",
    "prune-unstructured", "prune-structured", "mixed-precision",
)

# Parameters whose grid is monotone in damage: once a value breaks the accuracy budget,
# larger values are skipped (``max_accuracy_drop`` cuts the search).
MONOTONE_PARAMS = {"prune-unstructured": "amount", "prune-structured": "amount"}


@dataclass(frozen=True)
class Recipe:
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        inner = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})"

    def params_json(self) -> str:
        return json.dumps(dict(self.params), sort_keys=True, default=str)


def _short(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_recipes(spec: Iterable[Any] | None) -> list[Recipe] | None:
    """Turn the user's recipe list into concrete recipes, expanding list values into a grid.

    Accepted items: ``"fp16"``, ``{"int8-static": {"calibration": ["minmax", "entropy"]}}``,
    ``("prune-structured", {"amount": [0.3, 0.5]})`` or a ``Recipe``.
    """
    if spec is None:
        return None
    if isinstance(spec, (str, Recipe, Mapping)):
        spec = [spec]
    out: list[Recipe] = []
    for item in spec:
        for name, params in _items(item):
            out.extend(expand(name, params))
    return out


def _items(item: Any) -> list[tuple[str, dict]]:
    if isinstance(item, Recipe):
        return [(item.name, dict(item.params))]
    if isinstance(item, str):
        return [(item, {})]
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return [(item[0], dict(item[1] or {}))]
    if isinstance(item, Mapping):
        pairs = []
        for name, params in item.items():
            if params is not None and not isinstance(params, Mapping):
                raise NboptError(f"Parameters of recipe '{name}' must be a mapping like "
                                 f"{{amount: 0.5}}, got {params!r}.")
            pairs.append((str(name), dict(params or {})))
        return pairs
    raise NboptError(f"Cannot read recipe {item!r}: write a name like 'int8-dynamic' or a mapping "
                     "like {'prune-structured': {'amount': [0.3, 0.5]}}.")


def expand(name: str, params: Mapping[str, Any]) -> list[Recipe]:
    """One recipe per combination of the list values in ``params`` (order kept)."""
    keys = list(params)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in params.values()]
    for key, vals in zip(keys, values):
        if len(vals) == 0:
            raise NboptError(f"Parameter '{key}' of recipe '{name}' is an empty list: give at "
                             "least one value.")
    return [Recipe(name, dict(zip(keys, combo))) for combo in itertools.product(*values)]
