"""The backend protocol: what every backend module implements, and the recipe-handler registry.

A backend turns (model, recipe, calibration data) into an ``Artifact``: the deployable file(s) on disk
plus notes on what was done. ``load(artifact)`` gives a ``Runner`` that runs that file in its own
runtime; the evaluator measures everything through it. Nothing outside a backend imports its framework.

Adding a recipe to a backend is one decorated function; shared parameters come from
``nbopt.recipes.RECIPES``, a backend adds only its own::

    @TorchBackend.recipe("int8-static", honours={"calibration": ("minmax", "histogram", "entropy")})
    def _int8_static(backend, prepared, params, ctx) -> Artifact: ...
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

import numpy as np

from ..errors import NboptError
from ..recipes import RECIPES, Param, Recipe, missing_calib, missing_train  # noqa: F401  (Param: for handlers' own params)


@dataclass
class Artifact:
    """A deployable model on disk. ``files`` lists every file (external data included)."""

    path: Path
    format: str  # "pte", "pt2", "onnx", "tflite", ...
    files: list[Path] = field(default_factory=list)
    notes: str = ""  # shown on the row: what was quantized, which exporter, why a fallback
    info: dict[str, Any] = field(default_factory=dict)  # extra result columns
    # The eval data as this artifact takes it (``resolution``: images resized); None: the study's own.
    # Set in the worker that built the artifact and used there only (never stored).
    eval_data: Any = field(default=None, repr=False)

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


@dataclass
class Context:
    """What a handler may use besides the model: calibration and train data (never eval data), a folder,
    and the channel to the study (progress reports, Stop).

    ``calib`` / ``train`` are set whenever the recipe needs them: the study checks that once, before the
    sweep. A training engine reports through ``report`` and looks at ``should_stop`` between batches.
    """

    workdir: Path
    calib: Any = None  # nbopt.data.Data or None
    seed: int = 0
    train: Any = None  # nbopt.data.Data or None (train=...)
    progress: Path | None = None  # JSON lines the study tails (nbopt.training.report)
    stop_flag: Path | None = None  # exists once the user pressed Stop
    metric: str | None = None  # the study's metric name (None: a custom callable); mixed-precision scores by it

    def report(self, **payload: Any) -> None:
        from ..training import report

        report(self.progress, **payload)

    def should_stop(self) -> bool:
        return self.stop_flag is not None and self.stop_flag.exists()

    @property
    def calib_or_train(self) -> Any:
        """Calibration data, else the train data (a training recipe calibrates on what it trains on)."""
        return self.calib if self.calib is not None else self.train


Handler = Callable[["Backend", Any, dict, Context], Artifact]


@dataclass(frozen=True)
class RecipeSpec:
    """A backend's handler for a canonical recipe: the shared values it can honour (a subset of the
    shared choices), its own defaults for shared parameters, and its own extra parameters."""

    handler: Handler
    own: dict[str, Param]
    honours: dict[str, tuple]
    defaults: dict[str, Any]

    def params(self, recipe: str) -> dict[str, Param]:
        return {**RECIPES[recipe].params, **self.own}

    def default(self, recipe: str, key: str) -> Any:
        return self.defaults.get(key, self.params(recipe)[key].default)


class Backend:
    """Base class. Subclasses set ``name`` and register handlers with ``@Sub.recipe(...)``."""

    name: ClassVar[str] = ""
    handlers: ClassVar[dict[str, RecipeSpec]]
    # Optional capability: per-layer quantization sensitivity (``sensitivity`` / ``sensitivity_cost``).
    supports_sensitivity: ClassVar[bool] = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.handlers = {}

    @classmethod
    def recipe(cls, name: str, *, honours: dict[str, tuple] | None = None, defaults: dict[str, Any] | None = None,
               **own: Param):
        """Register a handler for the canonical recipe ``name``. ``honours`` limits shared parameters to the
        values this backend can do; ``defaults`` overrides a shared default; ``own`` adds parameters that
        exist on this backend only."""
        if name not in RECIPES:
            raise ValueError(f"'{name}' is not a canonical recipe name (nbopt.recipes.RECIPES)")
        clash = set(own) & set(RECIPES[name].params)
        if clash:
            raise ValueError(f"{cls.__name__} redeclares shared parameter(s) {sorted(clash)} of '{name}'")

        def register(fn: Handler) -> Handler:
            cls.handlers[name] = RecipeSpec(fn, own, dict(honours or {}), dict(defaults or {}))
            return fn
        return register

    # -- what a backend implements -------------------------------------------------------------
    @classmethod
    def accepts(cls, model: Any) -> bool:
        """True if this backend can take ``model`` (checked without importing heavy frameworks)."""
        raise NotImplementedError

    def prepare(self, model: Any, example: Any) -> Any:
        """Check and convert the user's model once (copy it, export it); raise NboptError if unusable,
        CandidateError if only this backend cannot take it. ``example`` is the eval ``Data``."""
        raise NotImplementedError

    def fingerprint(self, prepared: Any) -> str:
        """A hash of what this backend will compile (the exported graph and its weights), for the store:
        any change to what the model computes changes it."""
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

    def size_breakdown(self, artifact: Artifact) -> dict | None:
        """Where the artifact's bytes go, read from the file itself (by dtype, largest tensors, segments)."""
        return None

    def sensitivity(self, prepared: Any, calib: Any):
        """Per-layer sensitivity DataFrame (only where ``supports_sensitivity``)."""
        raise NotImplementedError

    def sensitivity_cost(self, prepared: Any, calib: Any) -> tuple[bool, int]:
        """(already measured, how many layers the analysis quantizes one at a time)."""
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------
    def resolve(self, recipe: Recipe) -> tuple[Recipe, str]:
        """The recipe with every parameter filled in, and '' or the reason this backend cannot do it as
        asked (a skipped row). Values no backend allows raise NboptError (checked by the shared Param)."""
        spec = self.handlers.get(recipe.name)
        if spec is None:
            return recipe, f"the {self.name} backend has no recipe '{recipe.name}'"
        params = spec.params(recipe.name)
        foreign = sorted(set(recipe.params) - set(params))
        if foreign:
            return recipe, (f"the {self.name} backend's {recipe.name} has no parameter "
                            f"{', '.join(map(repr, foreign))} (another backend's own)")
        full = {k: spec.default(recipe.name, k) for k in params}
        for key, value in recipe.params.items():
            full[key] = params[key].check(recipe.name, key, value)
        shown = tuple(k for k in full if k in recipe.params or full[k] != spec.default(recipe.name, k))
        for key, allowed in spec.honours.items():
            if full[key] not in allowed:
                return Recipe(recipe.name, full, shown), (
                    f"the {self.name} backend's {recipe.name} cannot do {key}={full[key]!r} "
                    f"(it offers {', '.join(map(repr, allowed))})")
        return Recipe(recipe.name, full, shown), ""

    def validate(self, recipe: Recipe) -> Recipe:
        """``resolve`` for direct use: what this backend cannot do as asked is an NboptError."""
        if recipe.name not in self.handlers:
            raise NboptError(f"Backend '{self.name}' has no recipe '{recipe.name}'; it knows: "
                             f"{', '.join(sorted(self.handlers))}.")
        spec = self.handlers[recipe.name]
        unknown = sorted(set(recipe.params) - set(spec.params(recipe.name)))
        if unknown:
            raise NboptError(f"Recipe '{recipe.name}' has no parameter {', '.join(map(repr, unknown))} on the "
                             f"{self.name} backend; its parameters: {', '.join(sorted(spec.params(recipe.name)))}.")
        full, reason = self.resolve(recipe)
        if reason:
            raise NboptError(reason[0].upper() + reason[1:] + ".")
        return full

    def apply(self, prepared: Any, recipe: Recipe, ctx: Context) -> Artifact:
        reason = missing_calib(recipe.name, ctx.calib) or missing_train(recipe.name, recipe.params, ctx.train)
        if reason:
            raise NboptError(reason)
        return self.handlers[recipe.name].handler(self, prepared, dict(recipe.params), ctx)


# -- torch modules as exporters take them -------------------------------------------------------------
@contextmanager
def exportable(module: Any, args: tuple = (), kwargs: dict | None = None) -> Iterator[tuple[Any, list[str]]]:
    """``(module to export, notes)`` for a torch module whose outputs an exporter may not take: a
    transformers key/value cache anywhere inside is turned off (put back afterwards: the module may be
    the user's), and a model that still returns something besides tensors (a cache object, a ModelOutput
    with one) is exported through a view that returns its first tensor output only. Shared by the
    backends that export torch modules (torch, onnx, tflite); torch is imported only when one is given."""
    import torch

    configs = [c for c in {id(c): c for c in _configs(module)}.values() if getattr(c, "use_cache", False) is True]
    notes = ["key/value cache turned off (use_cache=False): one forward pass over the whole sequence"] if configs else []
    for config in configs:
        config.use_cache = False
    try:
        out = _run(module, args, kwargs)
        path, others = _first_tensor(out), sorted({type(x).__name__ for x in _leaves(out)
                                                    if x is not None and not isinstance(x, torch.Tensor)})
        if any(name.endswith("Cache") for name in others):  # its forward asks for a cache all the same
            notes = []
        if others and path is not None:
            module = _first_tensor_view(module, path)
            notes.append(f"only the first tensor output ({path_label(path)}) is exported: the model also returns "
                         f"{', '.join(others)}")
        yield module, notes
    finally:
        for config in configs:
            config.use_cache = True


def _run(module: Any, args: tuple, kwargs: dict | None) -> Any:
    """The module's output on the example; None when it does not run (the exporter then says why)."""
    import torch

    from ..quiet import quiet

    try:
        with torch.no_grad(), quiet():
            return module(*args, **(kwargs or {}))
    except Exception:  # noqa: BLE001
        return None


def _configs(module: Any) -> Iterator[Any]:
    for m in module.modules() if hasattr(module, "modules") else [module]:
        if getattr(m, "config", None) is not None:
            yield m.config


def _leaves(out: Any) -> Iterator[Any]:
    if isinstance(out, dict) or hasattr(out, "to_tuple"):  # a dict, a transformers ModelOutput
        for value in (out.values() if isinstance(out, dict) else out.to_tuple()):
            yield from _leaves(value)
    elif isinstance(out, (list, tuple)):
        for value in out:
            yield from _leaves(value)
    else:
        yield out


def _first_tensor(out: Any, path: tuple = ()) -> tuple | None:
    """Where the first tensor of ``out`` is: keys and indices, in order; None when there is none."""
    import torch

    if isinstance(out, torch.Tensor):
        return path
    items = list(out.items()) if isinstance(out, dict) else (
        list(enumerate(out)) if isinstance(out, (list, tuple)) else [])
    for key, value in items:
        found = _first_tensor(value, path + (key,))
        if found is not None:
            return found
    return None


def path_label(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "the output"


def _pick(out: Any, path: tuple) -> Any:
    for key in path:
        out = out[key]
    return out


_VIEW: list = []


def _first_tensor_view(inner: Any, path: tuple) -> Any:
    """A module that runs ``inner`` and returns the tensor at ``path``. Its forward shows ``inner``'s
    signature: exporters match inputs and dynamic shapes to the parameter names."""
    import inspect

    if not _VIEW:
        import torch

        class FirstTensorOutput(torch.nn.Module):
            def __init__(self, inner, path: tuple):
                super().__init__()
                self.inner, self.path = inner, path
                object.__setattr__(self, "source", inner)  # for signature lookups, not a second submodule

        _VIEW.append(FirstTensorOutput)

    def forward(self, *args, **kwargs):
        return _pick(self.inner(*args, **kwargs), self.path)

    sig = inspect.signature(inner.forward)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = sig.replace(parameters=[self_param, *sig.parameters.values()])
    view = _VIEW[0](inner, path)
    view.__class__ = type(_VIEW[0].__name__, (_VIEW[0],), {"forward": forward})
    return view
