"""A self-contained HTML report: the Pareto plot (plotly.js inlined, no CDN) and the results table."""
from __future__ import annotations

import html
from pathlib import Path

from .schema import TABLE_COLUMNS
from .stats import drop_text


def write_report(study, path: Path) -> Path:
    fig = study.plot()
    plot_html = fig.to_html(full_html=False, include_plotlyjs=True)
    df = study.results
    shown = df[[c for c in TABLE_COLUMNS if c in df.columns]].copy()
    shown["accuracy_drop"] = [drop_text(r, study.metric) for r in df.to_dict("records")]
    table = shown.to_html(index=False, na_rep="", float_format=_fmt, classes="results", border=0)
    best = study.best()
    summary = (f"Best within the budget: <b>{html.escape(best.name)}</b>" if best else "No candidate fits the budget.")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>nbopt report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;}} table.results{{border-collapse:collapse;font-size:13px}}
table.results td,table.results th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body>
<h1>nbopt report</h1>
<p>Metric: <b>{html.escape(study.metric.name)}</b>. Sizes are bytes on disk of the exported files; latency is the
median of timed batch-{study.latency.batch_size} runs after warm-up; peak memory is the RSS growth of loading and
running the artifact in a fresh process. Drops are against the same backend's baseline (positive = worse);
the brackets are the drop's 95 % paired bootstrap interval over the evaluation examples: one that holds 0 may be
noise. {summary}</p>
{plot_html}
<h2>Results</h2>
{table}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _fmt(value: float) -> str:
    return f"{value:.4g}"
