"""The command line: ``nbopt optimize MODEL --eval DATA ...`` and ``nbopt report STORE``.

Exit codes: 0 success, 1 nothing could be exported (no candidate was measured), 2 a usage error (one line
on stderr, no traceback), 3 ``--max-drop`` was given and no optimized candidate fits it (a CI gate).
``nbopt demo`` lives in ``nbopt.__main__``.
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from .backends import BACKEND_NAMES
from .errors import NboptError, one_line
from .metrics import METRICS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_FIT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
RECIPE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
MISSING = "-"
# (schema column, header, format) of the terminal table; the last column is notes (ok rows) or error
TABLE = (("name", "name", "{}"), ("status", "status", "{}"), ("format", "format", "{}"),
         ("size_bytes", "size_bytes", "{:,.0f}"), ("size_ratio", "size_ratio", "{:.3f}"),
         ("accuracy", "accuracy", "{:.4f}"), ("accuracy_drop", "accuracy_drop", "{:+.4f}"),
         ("latency_ms", "latency_ms", "{:.3f}"))
NUMERIC = frozenset({"size_bytes", "size_ratio", "accuracy", "accuracy_drop", "latency_ms"})
NOTES_HEADER = "notes / error"
MIN_NOTES_WIDTH = 8

EPILOG = """exit status: 0 success; 1 nothing measured, so nothing to export; 2 usage error (one line,
no traceback); 3 --max-drop given and no optimized candidate (baselines do not count) is within it."""


# -- argument parsers ------------------------------------------------------------------------------------
def add_optimize_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("optimize", help="run a sweep of optimization recipes on a model file",
                       description="Run a sweep of optimization recipes on MODEL, measure every candidate\n"
                                   "on the evaluation data and print the results table.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help="an .onnx, .tflite, .keras or .pt2 (torch.export ExportedProgram) file, or a SavedModel folder")
    p.add_argument("--eval", required=True, metavar="DATA",
                   help="evaluation data: .npz (one array per model input, plus 'labels'), .parquet, .csv, "
                        ".jsonl/.json, a folder saved with datasets' save_to_disk, or an image folder")
    p.add_argument("--calib", metavar="DATA",
                   help="calibration data (same forms as --eval); needed by int8-static and mixed-precision")
    p.add_argument("--train", metavar="DATA",
                   help="training data (same forms as --eval, labels optional); needed by qat and distill, and "
                        "used by fine-tunes; never the eval data")
    p.add_argument("--metric", default="accuracy", metavar="M",
                   help=f"the metric: {', '.join(METRICS)} (default accuracy); cosine and agreement compare "
                        "with the baseline's outputs and need no labels")
    p.add_argument("--recipes", metavar="SPEC",
                   help="recipes to try: a comma list (fp16,int8-dynamic), a YAML/JSON list "
                        "('[fp16, {int8-static: {calibration: [minmax, entropy]}}]') or a .yaml/.json file; "
                        "default: the default sweep for this kind of model")
    p.add_argument("--backends", metavar="LIST",
                   help=f"comma list of backends ({', '.join(BACKEND_NAMES)}); default: the model's own")
    p.add_argument("--max-drop", type=_drop, metavar="X",
                   help="accuracy budget: the largest metric drop accepted (>= 0); exit 3 if no optimized "
                        "candidate is within it")
    p.add_argument("--search", default="auto", choices=("auto", "grid"),
                   help="with --max-drop: auto climbs an accuracy ladder (per-channel, calibration, layers kept "
                        "in float, fp16, qat) and stops at the first candidate within it; grid runs every "
                        "recipe (default auto; a --recipes list always runs as a grid)")
    p.add_argument("--store", default=".nbopt", metavar="DIR",
                   help="folder where results and artifacts are kept; a re-run reuses them (default .nbopt)")
    p.add_argument("--report", metavar="FILE", help="write a self-contained HTML report (plot and table) here")
    p.add_argument("--export", metavar="PATH",
                   help="copy the best candidate's deployable file here (plus a JSON model card): the smallest "
                        "within --max-drop, or the smallest measured one without a budget")
    p.add_argument("--overwrite", action="store_true", help="let --export replace an existing file")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (a fresh process per candidate); faster")
    p.add_argument("--workers", default=1, metavar="N",
                   help="candidates built at once, each in its own worker process, or 'auto' (default 1); "
                        "latency is still measured one candidate at a time")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds one candidate may take before it is stopped and counted as failed "
                        "(default 3600)")
    p.set_defaults(run=run_optimize)
    return p


def add_report_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="re-render a study kept in a store as a table and an HTML report",
                       description="Print a study kept in STORE (the most recently run one, or --study ID) and "
                                   "write it as an HTML report. Nothing is run or measured again.")
    p.add_argument("store", metavar="STORE", help="a store folder (holds nbopt.sqlite), e.g. .nbopt")
    p.add_argument("--study", metavar="ID",
                   help="which study: its id or the start of it (see nbopt.open(STORE)); default the newest")
    p.add_argument("--out", metavar="FILE", help="where to write the HTML report (default STORE/report.html)")
    p.add_argument("--metric", default="metric", metavar="M",
                   help="only for a store written by an older nbopt (no study records): the name of the metric "
                        "its rows hold; a recorded study has its own")
    p.set_defaults(run=run_report)
    return p


def _drop(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got '{text}'") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got '{text}'")
    return value


# -- running a command ----------------------------------------------------------------------------------
def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; a user mistake becomes one ``nbopt: error:`` line and exit 2."""
    try:
        return args.run(args)
    except NboptError as exc:
        return usage_error(exc)
    except OSError as exc:  # a path that cannot be written or read (a folder where a file is expected, ...)
        return usage_error(f"{exc.strerror or type(exc).__name__}: '{exc.filename}'." if exc.filename else exc)
    except KeyboardInterrupt:  # before the sweep started (the sweep itself keeps what it finished)
        print("nbopt: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def usage_error(exc: BaseException | str) -> int:
    text = exc if isinstance(exc, str) else one_line(exc)
    print(f"nbopt: error: {text}", file=sys.stderr)
    return EXIT_USAGE


# -- nbopt optimize -------------------------------------------------------------------------------------
def run_optimize(args: argparse.Namespace) -> int:
    recipes = parse_recipes_arg(args.recipes)
    backends = split_list(args.backends) if args.backends else None
    export = _export_path(args.export, args.overwrite)
    with _study(args, recipes, backends) as study:  # its scratch space goes when the command ends
        study.run()
        print_table(study.results, metric=study.metric.name)
        if args.report:
            print(f"Report: {study.to_html(Path(args.report))}")
        if study.stopped:
            print("nbopt: the sweep was interrupted; the finished candidates are kept in the store.",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        return _gate_and_export(study, args.max_drop, export, args.overwrite)


def _study(args: argparse.Namespace, recipes: list | None, backends: list[str] | None):
    from .study import Study

    for option, value in (("--eval", args.eval), ("--calib", args.calib), ("--train", args.train)):
        if value is not None and not Path(value).exists():
            raise NboptError(f"{option}: data path '{value}' does not exist: check the path.")
    if Path(args.store).exists() and not Path(args.store).is_dir():
        raise NboptError(f"--store: '{args.store}' is a file; give a folder (it is created if missing).")
    progress = sys.stdout.isatty() and sys.stderr.isatty()  # no bar garbage in CI logs or pipes
    return Study(args.model, calib=args.calib, eval=args.eval, train=args.train, metric=args.metric, recipes=recipes,
                 backends=backends, max_accuracy_drop=args.max_drop, search=args.search, store=args.store,
                 progress=progress,
                 measure_memory=not args.no_memory, workers=_workers(args.workers),
                 **({"timeout_s": args.timeout} if args.timeout is not None else {}))


def _workers(value: str):
    """--workers N or auto (the study says what is wrong with anything else)."""
    return int(value) if str(value).isdigit() else value


def _export_path(path: str | None, overwrite: bool) -> Path | None:
    """Checked before the sweep: an export never replaces a file unasked."""
    if path is None:
        return None
    target = Path(path)
    for existing in (target, target.with_suffix(".json")):
        if existing.exists() and not overwrite:
            raise NboptError(f"--export: '{existing}' already exists: pass --overwrite or choose another path.")
    return target


def _gate_and_export(study, max_drop: float | None, export: Path | None, overwrite: bool = False) -> int:
    if max_drop is not None and not fitting_candidates(study.results, max_drop):
        print(f"nbopt: no optimized candidate is within --max-drop {max_drop:g}"
              f"{'; nothing exported' if export else ''}.", file=sys.stderr)
        return EXIT_NO_FIT
    best = study.best(max_drop)
    what = f"within --max-drop {max_drop:g}" if max_drop is not None else "measured"
    print(f"Best ({what}, smallest): {best.name if best else 'none'}")
    if export is None:
        return EXIT_OK
    if best is None:
        print("nbopt: no candidate was measured; nothing exported.", file=sys.stderr)
        return EXIT_FAILED
    written = best.export(export, overwrite=overwrite)
    print(f"Exported {best.name}: {written} (model card {written.with_suffix('.json')})")
    return EXIT_OK


def fitting_candidates(df, max_drop: float) -> list[str]:
    """Names of the measured, optimized (non-baseline) rows whose drop is within the budget."""
    ok = df[(df["status"] == "ok") & (df["recipe"] != "baseline") & df["accuracy_drop"].notna()]
    return ok[ok["accuracy_drop"] <= max_drop]["name"].tolist()


# -- --recipes / --backends -----------------------------------------------------------------------------
def parse_recipes_arg(text: str | None) -> list | None:
    """A comma list, a YAML/JSON string, or a .yaml/.json file -> the recipe list ``Study`` takes."""
    if text is None or not text.strip():
        return None
    path = Path(text)
    if path.suffix.lower() in RECIPE_FILE_SUFFIXES:
        if not path.is_file():
            raise NboptError(f"--recipes: file '{text}' does not exist: check the path.")
        return _recipe_list(_yaml(path.read_text(encoding="utf-8"), f"file '{path.name}'"))
    value = _yaml(text, "value")
    if isinstance(value, str):
        return split_list(value)
    return _recipe_list(value)


def _yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise NboptError(f"--recipes: the {where} is not valid YAML{at}: {problem}.") from None


def _recipe_list(value: Any) -> list:
    """A list of recipes, one recipe mapping, or a mapping with a ``recipes:`` key (the magic's format)."""
    if isinstance(value, dict) and "recipes" in value:
        extra = sorted(set(value) - {"recipes"})
        if extra:
            raise NboptError(f"--recipes: only the 'recipes' key is read from the YAML; give {', '.join(extra)} "
                             "with its command line option (e.g. --max-drop, --backends).")
        value = value["recipes"]
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and value:
        return value
    raise NboptError(f"--recipes must name at least one recipe (e.g. fp16,int8-dynamic), got {value!r}.")


def split_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


# -- the terminal table ---------------------------------------------------------------------------------
def print_table(df, metric: str = "accuracy", width: int | None = None) -> None:
    direction = _direction(metric) or " (not a known metric name: drops not computed; see --metric)"
    print(f"Metric: {metric}{direction}; size in bytes on disk; ratios and drops against each backend's baseline.")
    print(format_table(df, width))


def format_table(df, width: int | None = None) -> str:
    """The results as aligned text; the notes / error column is cut so every line fits ``width``."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    rows = [[_cell(r.get(col), fmt) for col, _, fmt in TABLE] for r in df.to_dict("records")]
    notes = [_notes(r) for r in df.to_dict("records")]
    headers = [h for _, h, _ in TABLE]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    room = width - sum(widths) - 2 * len(widths)
    lines = [_line(headers, widths, NOTES_HEADER, room)]
    lines += [_line(cells, widths, note, room) for cells, note in zip(rows, notes)]
    return "\n".join(lines)


def _line(cells: list[str], widths: list[int], note: str, room: int) -> str:
    parts = [c.rjust(w) if col in NUMERIC else c.ljust(w) for c, w, (col, _, _) in zip(cells, widths, TABLE)]
    text = "  ".join(parts)
    if room >= MIN_NOTES_WIDTH and note:
        text += "  " + _cut(note, room)
    return text.rstrip()


def _cut(text: str, room: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= room else text[:room - 1] + "…"


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    try:
        if fmt.endswith(".4f}") and 0 < abs(value) < 1e-3:  # a tiny drop (or mse) must not print as zero
            return fmt.replace(".4f", ".2e").format(value)
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def _notes(row: dict) -> str:
    if row.get("status") != "ok":
        return str(row.get("error") or "")
    return str(row.get("notes") or "")


def _direction(metric: str) -> str:
    known = METRICS.get(metric)
    if known is None:
        return ""
    return " (higher is better)" if known.greater_is_better else " (lower is better)"


# -- nbopt report ---------------------------------------------------------------------------------------
def run_report(args: argparse.Namespace) -> int:
    """A recorded study rendered through ``StoredStudy`` (its own metric, rows as the study showed them);
    a store written before studies were recorded falls back to its candidate rows (``run_legacy_report``)."""
    from .reopen import load_study, studies_in

    folder = Path(args.store)
    if folder.exists() and not folder.is_dir():
        raise NboptError(f"'{folder}' is a file, not a store folder: give the folder passed as --store.")
    found = studies_in(folder)[1]
    if not found and args.study is None and read_store_rows(folder):
        return run_legacy_report(args)
    stored = load_study(folder, args.study)
    if args.study is None and len(found) > 1:
        print(f"The store holds {len(found)} studies; showing the most recently run one (choose another with "
              "--study ID; list them with nbopt.open(STORE)).")
    print(f"Study {stored.describe()}.")
    print(f"Metric: {stored.metric.name} ({'higher' if stored.metric.greater_is_better else 'lower'} is better); "
          "size in bytes on disk; ratios and drops against each backend's baseline.")
    print(format_table(stored.results))
    out = Path(args.out) if args.out else folder / "report.html"
    print(f"Report: {stored.to_html(out)}")
    return EXIT_OK


def run_legacy_report(args: argparse.Namespace) -> int:
    """A store without study records (older nbopt): every candidate row, compared with the baseline stored
    before it; ``--metric`` names what the rows hold."""
    folder = Path(args.store)
    df = against_baselines(rows_frame(read_store_rows(folder)), args.metric)
    print("This store has no study record (written by an older nbopt): showing every stored candidate.")
    print_table(df, metric=args.metric)
    out = Path(args.out) if args.out else folder / "report.html"
    print(f"Report: {write_store_report(df, out, args.metric)}")
    return EXIT_OK


def read_store_rows(folder: Path) -> list[dict]:
    """Every result row kept in a store's ``nbopt.sqlite``, oldest first."""
    db = Path(folder) / "nbopt.sqlite"
    if not db.is_file():
        raise NboptError(f"'{folder}' is not an nbopt store: it has no nbopt.sqlite (give the folder passed "
                         "as --store, default .nbopt).")
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
            found = con.execute("SELECT row FROM candidates ORDER BY rowid").fetchall()
    except sqlite3.Error as exc:
        raise NboptError(f"Cannot read the store '{db}' ({exc}).") from None
    return [json.loads(text) for (text,) in found]


def rows_frame(rows: list[dict]):
    import pandas as pd

    from .schema import COLUMN_NAMES, public

    rows = [public(r) for r in rows]
    extra = sorted({k for r in rows for k in r} - set(COLUMN_NAMES))
    return pd.DataFrame(rows, columns=[*COLUMN_NAMES, *extra])


def against_baselines(df, metric: str):
    """Fill ``size_ratio`` (and ``accuracy_drop`` when ``metric`` is a known metric, whose direction says
    what a drop is) where the stored row lacks them: the store keeps each row as measured, before the study
    compares it with its baseline. A row is compared with the latest baseline of its backend stored before
    it (a study stores its baselines first)."""
    known = METRICS.get(metric)
    df = df.copy()
    latest: dict[str, Any] = {}
    for i, row in df.iterrows():
        if row["recipe"] == "baseline":
            latest[row["backend"]] = row if row["status"] == "ok" else None
            continue
        base = latest.get(row["backend"])
        if base is None or row["status"] != "ok":
            continue
        if _missing(row["size_ratio"]) and not _missing(row["size_bytes"]) and base["size_bytes"]:
            df.at[i, "size_ratio"] = row["size_bytes"] / base["size_bytes"]
        measured = not _missing(row["accuracy"]) and not _missing(base["accuracy"])
        if known and measured and _missing(row["accuracy_drop"]):
            df.at[i, "accuracy_drop"] = known.drop(row["accuracy"], base["accuracy"])
    return df


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def write_store_report(df, path: Path, metric: str) -> Path:
    """A self-contained HTML page: the size-vs-metric scatter (plotly.js inlined) and the table."""
    from .report import _fmt
    from .schema import TABLE_COLUMNS

    page = store_figure(df, metric).to_html(full_html=True, include_plotlyjs=True)
    table = df[[c for c in TABLE_COLUMNS if c in df.columns]].to_html(
        index=False, na_rep="", float_format=_fmt, classes="results", border=0)
    head = (f"<h1>nbopt report</h1><p>Metric: <b>{html.escape(metric)}</b>. Re-rendered from the store; "
            "sizes are bytes on disk, ratios and drops are against each backend's baseline.</p>")
    style = ("<style>body{font-family:system-ui,sans-serif;margin:2em} table.results{border-collapse:collapse;"
             "font-size:13px} table.results td,table.results th{padding:4px 8px;border-bottom:1px solid #ddd;"
             "text-align:left}</style>")
    page = page.replace("<head>", "<head><meta charset=\"utf-8\"><title>nbopt report</title>" + style, 1)
    page = page.replace("<body>", "<body>" + head, 1)
    page = page.replace("</body>", f"<h2>Results</h2>{table}</body>", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def store_figure(df, metric: str):
    import plotly.graph_objects as go

    from .plotting import _hover

    ok = df[(df["status"] == "ok") & df["size_bytes"].notna() & df["accuracy"].notna()]
    fig = go.Figure()
    for backend, group in ok.groupby("backend"):
        base = group["recipe"] == "baseline"
        for part, symbol, label in ((group[~base], "circle", backend), (group[base], "star", f"{backend} baseline")):
            if len(part):
                fig.add_trace(go.Scatter(x=part["size_bytes"] * 1e-6, y=part["accuracy"], mode="markers",
                                         name=label, marker={"symbol": symbol, "size": 14 if symbol == "star" else 10},
                                         hovertext=[_hover(r) for _, r in part.iterrows()], hoverinfo="text"))
    fig.update_layout(title=f"{metric} vs size (MB)", xaxis_title="size (MB)", yaxis_title=metric,
                      template="plotly_white", legend={"orientation": "h", "y": -0.2})
    return fig

