"""The plotly figure of a study: every ok candidate, the baseline marked, the Pareto front as a step line.

Plotting only draws what ``Study.pareto`` computes; it decides nothing itself.
"""
from __future__ import annotations

from typing import Sequence

AXIS_TITLES = {"size_bytes": "size (MB)", "latency_ms": "latency (ms, batch 1, median)",
               "peak_memory_mb": "peak memory (MB)"}
_SCALE = {"size_bytes": 1e-6}


def pareto_figure(study, objectives: Sequence[str] | None = None):
    import plotly.graph_objects as go

    from .pareto import resolve

    (xcol, _), (ycol, _) = resolve(objectives or study.objectives, study.metric.greater_is_better)[:2]
    df = study.results
    ok = df[df["status"] == "ok"]
    ok = ok[ok[xcol].notna() & ok[ycol].notna()]  # unmeasured rows (Core ML off macOS, GGUF without llama.cpp)
    front = study.pareto(objectives)
    scale = _SCALE.get(xcol, 1.0)
    fig = go.Figure()
    for backend, group in ok.groupby("backend"):
        base = group["recipe"] == "baseline"
        for part, symbol, label in ((group[~base], "circle", backend), (group[base], "star", f"{backend} baseline")):
            if len(part):
                fig.add_trace(go.Scatter(
                    x=part[xcol] * scale, y=part[ycol], mode="markers", name=label,
                    marker={"symbol": symbol, "size": 14 if symbol == "star" else 10},
                    customdata=part[["name", "notes"]].fillna("").to_numpy(),
                    hovertext=[_hover(r) for _, r in part.iterrows()], hoverinfo="text"))
    if len(front):
        fig.add_trace(go.Scatter(x=front[xcol] * scale, y=front[ycol], mode="lines", name="Pareto front",
                                 line={"shape": "hv", "dash": "dot", "color": "black"}, hoverinfo="skip"))
    fig.update_layout(title=f"{study.metric.name} vs {AXIS_TITLES.get(xcol, xcol)}",
                      xaxis_title=AXIS_TITLES.get(xcol, xcol), yaxis_title=study.metric.name,
                      template="plotly_white", legend={"orientation": "h", "y": -0.2})
    return fig


def _hover(row) -> str:
    parts = [f"<b>{row['name']}</b>"]
    for key, fmt in (("size_bytes", "{:,.0f} B"), ("size_ratio", "{:.3f}x"), ("accuracy", "{:.4f}"),
                     ("accuracy_drop", "{:+.4f}"), ("latency_ms", "{:.3f} ms"), ("peak_memory_mb", "{:.1f} MB")):
        value = row.get(key)
        if value is not None and value == value:
            parts.append(f"{key}: {fmt.format(value)}")
    if row.get("notes"):
        parts.append(str(row["notes"])[:200])
    return "<br>".join(parts)
