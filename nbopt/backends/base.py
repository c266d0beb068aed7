"""The backend protocol: what every backend module implements, and the recipe-handler registry.

A backend turns (model, recipe, calibration data) into an ``Artifact``: the deployable file(s) on disk
plus notes on what was done. ``load(artifact)`` gives a ``Runner`` that runs that file in its own
runtime; the evaluator measures everything through it. Nothing outside a backend imports its framework.

Adding a recipe to a backend is one decorated function::

    @TorchBackend.recipe("int8-dynamic", per_channel=Param(True, choices=(True, False)))
    def _int8_dynamic(backend, prepared, params, ctx) -> Artifact: ...
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Protocol

import numpy as np

from ..errors import NboptError
from ..recipes import Recipe


@dataclass
class Artifact:
    """A deployable model on disk. ``files`` lists every file (external data included)."""

    path: Path
    format: str  # "pte", "pt2", "onnx", "tflite", ...
    files: list[Path] = field(default_factory=list)
    notes: str = ""  # shown on the row: what was quantized, which exporter, why a fallback
    info: dict[str, Any] = field(default_factory=dict)  # extra result columns

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.files = [Path(f) for f in self.files] or [self.path]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class Runner(Protocol):
    """Runs a loaded artifact: batched named inputs in, the model's (first) output as numpy out."""

    threads: int  # thread count the runtime uses, recorded with latency
    max_batch: int | None  # None: any batch size; 1: a static batch-1 program

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Param:
    """One recipe parameter: its default and what values are allowed."""

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


@dataclass
class Context:
    """What a handler may use besides the model: calibration data (never eval data) and a folder."""

    workdir: Path
    calib: Any = None  # nbopt.data.Data or None
    seed: int = 0
    log: Callable[[str], None] = lambda msg: None

    def require_calib(self, recipe: str):
        if self.calib is None:
            raise NboptError(f"Recipe '{recipe}' needs calibration data: pass calib=... "
                             "(a few hundred examples are enough).")
        return self.calib


Handler = Callable[["Backend", Any, dict, Context], Artifact]


@dataclass(frozen=True)
class RecipeSpec:
    handler: Handler
    params: dict[str, Param]
    needs_calib: bool = False


class Backend:
    """Base class. Subclasses set ``name`` and register handlers with ``@Sub.recipe(...)``."""

    name: ClassVar[str] = ""
    handlers: ClassVar[dict[str, RecipeSpec]]

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.handlers = {}

    @classmethod
    def recipe(cls, name: str, needs_calib: bool = False, **params: Param):
        def register(fn: Handler) -> Handler:
            cls.handlers[name] = RecipeSpec(fn, params, needs_calib)
            return fn
        return register

    # -- what a backend implements -------------------------------------------------------------
    @classmethod
    def accepts(cls, model: Any) -> bool:
        """True if this backend can take ``model`` (checked without importing heavy frameworks)."""
        raise NotImplementedError

    def prepare(self, model: Any, example: Any) -> Any:
        """Check and convert the user's model once (copy it, export it); raise NboptError if unusable.
        ``example`` is the eval ``Data`` (for input names and shapes)."""
        raise NotImplementedError

    def fingerprint(self, model: Any) -> str:
        """A hash of the model's weights and structure, for the store."""
        raise NotImplementedError

    def baseline(self, prepared: Any, ctx: Context) -> Artifact:
        """The model as given, in this backend's deployable format."""
        raise NotImplementedError

    def load(self, artifact: Artifact) -> Runner:
        raise NotImplementedError

    def default_recipes(self, prepared: Any) -> list[Recipe]:
        raise NotImplementedError

    def warm_imports(self) -> None:
        """Import the runtime up front (the memory probe subtracts what the framework itself takes)."""

    def versions(self) -> dict[str, str]:
        """Library versions that shape the artifacts (model cards, store keys)."""
        return {}

    # -- shared machinery ----------------------------------------------------------------------
    def validate(self, recipe: Recipe) -> Recipe:
        """Fill defaults and check every parameter; unknown names list the known ones."""
        spec = self.handlers.get(recipe.name)
        if spec is None:
            known = ", ".join(sorted(self.handlers))
            raise NboptError(f"Backend '{self.name}' has no recipe '{recipe.name}'; it knows: {known}.")
        unknown = set(recipe.params) - set(spec.params)
        if unknown:
            known = ", ".join(sorted(spec.params)) or "none"
            raise NboptError(f"Recipe '{recipe.name}' has no parameter {', '.join(map(repr, sorted(unknown)))}; "
                             f"its parameters: {known}.")
        full = {k: p.default for k, p in spec.params.items()}
        for key, value in recipe.params.items():
            full[key] = spec.params[key].check(recipe.name, key, value)
        return Recipe(recipe.name, full)

    def apply(self, prepared: Any, recipe: Recipe, ctx: Context) -> Artifact:
        spec = self.handlers[recipe.name]
        if spec.needs_calib:
            ctx.require_calib(recipe.name)
        return spec.handler(self, prepared, dict(recipe.params), ctx)


def hash_arrays(arrays: Iterable[np.ndarray], extra: str = "") -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(extra.encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
