"""``%%optimize``: run an nbopt sweep from a notebook cell, with the live panel as the cell's output.

    %load_ext nbopt

    %%optimize --model net --calib calib_ds --eval val_ds --metric accuracy -o study
    recipes:
      - fp16
      - int8-static: {calibration: [minmax, entropy]}
    max_accuracy_drop: 0.01

The line names notebook variables (``--model``, ``--calib``, ``--eval``) and options; the body is YAML
with ``recipes:`` and the other ``nbopt.optimize`` arguments (or just a list of recipes). An empty body
runs the default sweep. Every user mistake is one ``UsageError`` line; the kernel carries on.

The sweep runs in a background thread so the panel stays live and Stop works; the cell returns at
once. ``%optimize ...`` on one line runs the default sweep too. A cell run while the sweep is running waits for it (interrupt the kernel to stop the sweep), so
"Run all" sees the finished study. With ``-o NAME`` the Study is stored in the notebook when done.
"""
from __future__ import annotations

import difflib
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .errors import NboptError, one_line

# Body keys -> nbopt.Study keyword; values are checked here so that a wrong type is one clear sentence.
_BODY_KEYS = {
    "recipes": "recipes",
    "backends": "backends",
    "metric": "metric",
    "max_accuracy_drop": "max_accuracy_drop",
    "max_drop": "max_accuracy_drop",
    "objectives": "objectives",
    "store": "store",
    "n_calib": "n_calib",
    "seed": "seed",
    "batch_size": "batch_size",
    "labels": "labels",
    "workers": "workers",
    "executor": "executor",
    "ray_address": "ray_address",
    "timeout_s": "timeout_s",
    "search": "search",
}


@magics_class
class OptimizeMagics(Magics):
    @magic_arguments()
    @argument("--model", metavar="VAR", help="notebook variable holding the model (required)")
    @argument("--calib", metavar="VAR", help="notebook variable holding the calibration data")
    @argument("--eval", metavar="VAR", help="notebook variable holding the evaluation data")
    @argument("--train", metavar="VAR", help="notebook variable holding training data (qat, distill, fine-tunes)")
    @argument("--metric", help="accuracy, top5, f1, mse, mae, cosine, agreement, or a notebook function "
              "(outputs, labels) -> float")
    @argument("--backends", metavar="LIST", help="comma-separated backends, e.g. torch,onnx")
    @argument("--max-drop", type=float, metavar="X", help="accuracy budget: the largest drop accepted")
    @argument("--objectives", metavar="LIST", help="comma-separated, e.g. size,accuracy or latency,accuracy")
    @argument("--store", metavar="DIR", help="folder where the study is kept (default .nbopt)")
    @argument("-o", "--out", metavar="NAME", help="store the Study in this notebook variable when done")
    @line_cell_magic
    def optimize(self, line: str, cell: str | None = None):
        """Run an nbopt sweep and show the live panel; see ``nbopt.magic`` for the cell format.

        ``%optimize --model net ...`` (one line) runs the default sweep, as does ``%%optimize`` with
        an empty body (IPython needs at least a blank line after a ``%%`` line).
        """
        args = parse_argstring(self.optimize, line)
        if not args.model:
            raise UsageError("%%optimize needs --model NAME, the notebook variable that holds the model.")
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"-o needs a Python variable name, got '{args.out}'.")
        kwargs = _body_kwargs(cell or "")
        kwargs.update(_line_kwargs(args))
        metric = kwargs.get("metric")
        if isinstance(metric, str) and callable(self.shell.user_ns.get(metric)):
            kwargs["metric"] = self.shell.user_ns[metric]  # --metric my_metric: a notebook function
        model = self._variable("--model", args.model)
        calib = self._variable("--calib", args.calib) if args.calib else None
        data = self._variable("--eval", args.eval) if args.eval else None
        train = self._variable("--train", args.train) if args.train else None

        from .study import Study
        from .sweep import wait_for_sweeps
        from .widget import Panel

        wait_for_sweeps()  # a sweep started by an earlier cell must not run beside this one
        try:
            study = Study(model, calib=calib, eval=data, train=train, progress=False, **kwargs)
        except NboptError as exc:
            raise UsageError(one_line(exc)) from None

        shell = self.shell
        name = args.out or ""

        def store(panel: Panel) -> None:
            if name:  # also after an error: what was measured is kept
                shell.user_ns[name] = panel.study

        panel = Panel.follow(study, result_name=name, on_done=store)
        from IPython.display import display

        display(panel)
        panel.start()

    def _variable(self, option: str, name: str) -> Any:
        ns = self.shell.user_ns
        if name in ns:
            return ns[name]
        if "." in name or "[" in name:  # an expression such as data.train or splits["val"]
            try:
                return eval(name, ns)  # noqa: S307 - the user's own notebook namespace
            except Exception:  # noqa: BLE001
                pass
        close = difflib.get_close_matches(name, [k for k in ns if not k.startswith("_")], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError(f"{option}: there is no notebook variable named '{name}'{hint}.")


def _line_kwargs(args) -> dict:
    out: dict[str, Any] = {}
    if args.metric:
        out["metric"] = args.metric  # a notebook callable of that name is looked up by the magic
    if args.backends:
        out["backends"] = _split(args.backends)
    if args.max_drop is not None:
        if args.max_drop < 0:
            raise UsageError(f"--max-drop must be a number >= 0, got {args.max_drop}.")
        out["max_accuracy_drop"] = args.max_drop
    if args.objectives:
        out["objectives"] = _split(args.objectives)
    if args.store:
        out["store"] = args.store
    return out


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _body_kwargs(cell: str) -> dict:
    """The cell body (YAML) as Study keywords; line options given too take precedence."""
    import yaml

    if not cell.strip():
        return {}
    try:
        body = yaml.safe_load(cell)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" on line {mark.line + 2} of the cell" if mark is not None else ""  # +1: 1-based, +1: magic line
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"The cell body is not valid YAML{where}: {problem}.") from None
    if body is None:
        return {}
    if isinstance(body, list):
        body = {"recipes": body}
    if not isinstance(body, dict):
        raise UsageError("The cell body must be YAML with 'recipes:' and other optimize() arguments "
                         f"({', '.join(_BODY_KEYS)}), or a list of recipes; got {type(body).__name__} {body!r}.")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key not in _BODY_KEYS:
            close = difflib.get_close_matches(str(key), list(_BODY_KEYS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UsageError(f"Unknown key '{key}' in the cell body; {hint}known keys: {', '.join(_BODY_KEYS)}.")
        out[_BODY_KEYS[key]] = _check(key, value)
    return out


def _check(key: str, value: Any) -> Any:
    def bad(expected: str):
        return UsageError(f"'{key}' in the cell body must be {expected}, got {value!r}.")

    if key == "recipes":
        if value is None:
            return None
        if not isinstance(value, (list, str, dict)):
            raise bad("a list of recipes, e.g. [fp16, int8-dynamic]")
        return value
    if key in ("backends", "objectives"):
        if isinstance(value, str):
            return _split(value)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad("a list of names")
        return value
    if key in ("metric", "store", "search"):
        if not isinstance(value, str):
            raise bad("a folder path" if key == "store" else "a name")
        return value
    if key in ("max_accuracy_drop", "max_drop"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad("a number >= 0, e.g. 0.01")
        return float(value)
    if key in ("n_calib", "seed", "batch_size"):
        if isinstance(value, bool) or not isinstance(value, int) or (key != "seed" and value < 1):
            raise bad("an integer" if key == "seed" else "a positive integer")
        return value
    if key in ("executor", "ray_address"):
        if not isinstance(value, str):
            raise bad("a name" if key == "executor" else "an address such as ray://host:10001")
        return value
    if key == "workers":
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad("a positive integer or auto")
        return value
    if key == "timeout_s":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise bad("a number of seconds > 0")
        return float(value)
    if key == "labels":
        if not (isinstance(value, list) and value and all(isinstance(v, (str, int)) for v in value)):
            raise bad("a list of class names in the order of the model's outputs, e.g. [cat, dog]")
        return [str(v) for v in value]
    return value


def load_ipython_extension(ipython) -> None:
    """``%load_ext nbopt``: registers ``%%optimize`` (and its one-line form ``%optimize``) and the hook that makes later cells wait for a sweep."""
    from .sweep import wait_for_sweeps

    ipython.register_magics(OptimizeMagics)
    if wait_for_sweeps not in ipython.events.callbacks["pre_run_cell"]:
        ipython.events.register("pre_run_cell", wait_for_sweeps)


def unload_ipython_extension(ipython) -> None:
    from .sweep import wait_for_sweeps

    if wait_for_sweeps in ipython.events.callbacks["pre_run_cell"]:
        ipython.events.unregister("pre_run_cell", wait_for_sweeps)
