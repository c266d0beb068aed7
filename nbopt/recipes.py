"""Recipes: one technique with its parameters, the one vocabulary every backend shares, and the grid a
list value expands into.

A recipe names *what* is done (``int8-static`` with ``calibration: entropy``), never how a backend does
it. Each recipe's shared parameters are declared once here (``RECIPES``): name, meaning, allowed values.
A backend registers one handler per recipe (see ``nbopt.backends.base``), says which shared values it
can honour, and adds only parameters that are truly its own (``io`` on TFLite, ``reduce_range`` on ONNX).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import NboptError


@dataclass(frozen=True)
class Param:
    """One recipe parameter: its default, the values allowed, and what it means."""

    default: Any
    choices: tuple | None = None
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    help: str = ""

    def check(self, recipe: str, name: str, value: Any) -> Any:
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(repr, self.choices))
            raise NboptError(f"Recipe '{recipe}' parameter '{name}' is {value!r}; allowed: {allowed}.")
        if self.low is not None or self.high is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise NboptError(f"Recipe '{recipe}' parameter '{name}' must be a number, got {value!r}.")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise NboptError(f"Recipe '{recipe}' parameter '{name}' is {value}; it must lie between "
                                 f"{self.low} and {self.high}.")
        return value


@dataclass(frozen=True)
class RecipeDef:
    """A canonical recipe: what it does, its shared parameters, whether it needs calibration data, and
    the parameter (if any) whose larger values only do more damage (the budget cut skips them)."""

    summary: str
    params: Mapping[str, Param] = field(default_factory=dict)
    needs_calib: bool = False
    monotone: str | None = None
    needs_train: bool = False  # trains on train= data (qat, distill); resolution trains only with epochs > 0

    @property
    def training(self) -> bool:
        """True for recipes that can train (their own plot marker, a train_seconds column)."""
        return "epochs" in self.params


def _training(epochs: int, lr: float, low_epochs: int = 1) -> dict[str, Param]:
    """The parameters every training recipe shares (one fine-tuning engine per framework reads them)."""
    return {
        "epochs": Param(epochs, low=low_epochs, high=1000, help="passes over the train= data"),
        "lr": Param(lr, low=1e-7, high=1.0, help="learning rate (Adam)"),
        "max_train_seconds": Param(300, low=1, high=86400,
                                   help="training stops after this many seconds (the best epoch so far is kept)"),
    }


_PER_CHANNEL = Param(True, choices=("auto", True, False),
                     help="one weight scale per output channel (False: one per tensor; 'auto': both built, the "
                          "per-tensor one kept where it scores as well on calibration data: ONNX's default)")
_GROUPS = (16, 32, 64, 128, 256)
# mixed-precision: the same parameters on every backend (per-layer sensitivity on calibration data only)
_MIXED = {
    "mode": Param("dynamic", choices=("dynamic", "static"),
                  help="int8 activations quantized at run time (dynamic) or calibrated (static)"),
    "keep_float": Param("auto", help="'auto' (searched on calibration data) or how many of the most sensitive "
                                     "layers stay float"),
    "per_channel": Param("auto", choices=("auto", True, False),
                         help="one weight scale per output channel; 'auto' tries both"),
    "max_size_growth": Param(0.1, low=0.0, high=10.0,
                             help="'auto' keeps float weights up to this fraction of the fully quantized size"),
}

RECIPES: dict[str, RecipeDef] = {
    "fp16": RecipeDef("float16 weights (and compute where the runtime has fp16 kernels)"),
    "int8-dynamic": RecipeDef(
        "int8 weights, activations quantized on the fly at run time",
        {"per_channel": _PER_CHANNEL}),
    "int8-static": RecipeDef(
        "int8 weights and activations, activation ranges calibrated on calibration data",
        {"calibration": Param("minmax", choices=("minmax", "histogram", "entropy", "percentile"),
                              help="how activation ranges are chosen: min/max, histogram (L2-error search), "
                                   "entropy (KL divergence) or percentile (99.99 %)"),
         "per_channel": _PER_CHANNEL,
         "activations": Param("int8", choices=("int8", "uint8", "int16"),
                              help="the integer type of activations (int16: 16x8, int8 weights)")},
        needs_calib=True),
    "int8-weight-only": RecipeDef(
        "int8 weights, float activations and compute",
        {"group_size": Param(None, choices=(None, *_GROUPS),
                             help="weights share one scale per group of this many inputs (None: per channel)")}),
    "int4-weight-only": RecipeDef(
        "4-bit weights in groups, float or int8 activations",
        {"group_size": Param(32, choices=_GROUPS, help="weights share one scale per group of this many inputs"),
         "activations": Param("float", choices=("float", "int8"),
                              help="float: weight-only; int8: activations quantized on the fly (int8 kernels)")}),
    "mixed-precision": RecipeDef(
        "int8 with the layers most sensitive to quantization kept in float", _MIXED, needs_calib=True),
    "prune-unstructured": RecipeDef(
        "the smallest weights set to zero (size shrinks only compressed; no speed gain on dense kernels)",
        {"amount": Param(0.5, low=0.01, high=0.99, help="fraction of weights set to zero")},
        monotone="amount"),
    "prune-structured": RecipeDef(
        "whole channels removed (smaller and faster), then fine-tuned where labels allow",
        {"amount": Param(0.3, low=0.05, high=0.9, help="fraction of channels removed per layer")},
        monotone="amount"),
    "qat": RecipeDef(
        "quantization-aware training: int8 fake quantization fine-tuned on train= data, then converted",
        {**_training(3, 1e-4),
         "bits": Param(8, choices=(8, 4), help="weight bits (4 only where the runtime has 4-bit kernels)")},
        needs_train=True),
    "distill": RecipeDef(
        "knowledge distillation: a smaller student trained to match the model (the teacher) on train= data",
        {**_training(5, 1e-3),
         "student": Param("pruned", choices=("pruned", "mobilenet", "efficientnet", "shallow"),
                          help="pruned: the structured-pruned model; mobilenet / efficientnet: a built-in "
                               "mobile network; shallow: every k-th layer of a transformer encoder"),
         "width": Param(0.5, low=0.05, high=2.0,
                        help="student width: channel multiplier (mobile students), kept fraction (pruned), "
                             "kept fraction of layers (shallow)"),
         "temperature": Param(4.0, low=0.5, high=20.0, help="softmax temperature of the distillation loss")},
        needs_train=True),
    "resolution": RecipeDef(
        "smaller input images (area interpolation), optionally fine-tuned at the new size",
        {**_training(0, 1e-4, low_epochs=0),
         "scale": Param(0.75, low=0.05, high=0.95,
                        help="input side length as a fraction of the original (between 0 and 1)")}),
}
RECIPE_NAMES = tuple(RECIPES)
MONOTONE_PARAMS = {name: d.monotone for name, d in RECIPES.items() if d.monotone}


def missing_calib(name: str, calib: Any) -> str:
    """'' or the sentence saying the recipe needs calibration data: the one place that decides it."""
    if name in RECIPES and RECIPES[name].needs_calib and calib is None:
        return (f"Recipe '{name}' needs calibration data: pass calib=... (a few hundred training examples "
                "are enough).")
    return ""


def missing_train(name: str, params: Mapping[str, Any], train: Any) -> str:
    """'' or the sentence saying the recipe trains and needs train= data."""
    d = RECIPES.get(name)
    if d is None or train is not None:
        return ""
    if d.needs_train or (d.training and params.get("epochs", d.params["epochs"].default)):
        return (f"Recipe '{name}' needs train=...: a few thousand training examples (with labels, or without "
                "for distillation); eval data is never trained on.")
    return ""


TRAINING_RECIPES = tuple(n for n, d in RECIPES.items() if d.training)


@dataclass(frozen=True)
class Recipe:
    """A recipe with its parameters. ``shown`` names the parameters the row's name shows (the ones the
    user set or that differ from the defaults); None shows all."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    shown: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        keys = sorted(self.params if self.shown is None else self.shown)
        if not keys:
            return self.name
        inner = ", ".join(f"{k}={_short(self.params[k])}" for k in keys)
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


def describe(name: str) -> str:
    """'int8-static: int8 weights and ...; calibration (minmax|histogram|...) ...' for help texts."""
    d = RECIPES[name]
    parts = [f"{k}: {p.help}" for k, p in d.params.items()]
    return f"{name}: {d.summary}" + (f" ({'; '.join(parts)})" if parts else "")
