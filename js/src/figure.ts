// Builds the plotly figure (data + layout) from rows. Pure: the view only hands it to Plotly.react.
import {
  AXES,
  AxisName,
  Row,
  SensRow,
  fitRange,
  hoverText,
  isBaseline,
  isPercentMetric,
  isTrained,
  paretoFront,
  plottable,
  sensitivityHover,
  stepLine,
  topSensitive,
  withinBudget,
} from "./logic";

export interface FigureOptions {
  axis: AxisName;
  metric: string;
  higherIsBetter: boolean;
  maxDrop: number | null;
  selectedId: string | null;
  recommendedId: string | null;
  dark?: boolean;
}

// A palette that reads on light and dark backgrounds (Okabe-Ito).
const COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"];

export function backendColor(backends: string[], backend: string): string {
  const i = backends.indexOf(backend);
  return COLORS[(i < 0 ? 0 : i) % COLORS.length];
}

export type Trace = Record<string, unknown>;

/** Padding of the fitted axis ranges, as a fraction of the points' span on each side. */
const X_PAD = 0.06;
const Y_PAD = 0.1; // room for the baseline's label above its star

/** An open circle around one plotted row (the recommendation, the selection); null when not plotted. */
function ringTrace(
  pts: Row[],
  o: Pick<FigureOptions, "axis" | "metric">,
  id: string | null,
  name: string,
  color: string,
  size: number,
): Trace | null {
  const r = id === null ? undefined : pts.find((p) => p.id === id);
  if (!r) return null;
  const key = AXES[o.axis].key;
  return {
    type: "scatter",
    mode: "markers",
    name,
    x: [r[key]],
    y: [r.accuracy],
    customdata: [r.id],
    text: [hoverText(r, o.metric)],
    hovertemplate: "%{text}<extra></extra>",
    marker: { symbol: "circle-open", size, color, line: { width: 3, color } },
  };
}

/**
 * The selection ring, always the figure's last trace when present: the view swaps only this trace
 * when the selection changes.
 */
export function selectionTrace(rows: Row[], o: Pick<FigureOptions, "axis" | "metric" | "selectedId">): Trace | null {
  return ringTrace(plottable(rows, o.axis), o, o.selectedId, "selected", "#D55E00", 28);
}

export function buildFigure(rows: Row[], o: FigureOptions): { data: Trace[]; layout: Record<string, unknown> } {
  const axis = AXES[o.axis];
  const pts = plottable(rows, o.axis);
  const inBudget = pts.filter((r) => withinBudget(r, o.maxDrop));
  const front = paretoFront(inBudget, o.axis, o.higherIsBetter);
  const frontIds = new Set(front.map((r) => r.id));
  const backends = [...new Set(rows.map((r) => r.backend))];
  const data: Trace[] = [];
  const ink = o.dark ? "#ddd" : "#333";

  const step = stepLine(front, o.axis);
  data.push({
    type: "scatter",
    mode: "lines",
    name: "Pareto front",
    x: step.x,
    y: step.y,
    line: { color: ink, width: 1.5, dash: "dot" },
    hoverinfo: "skip",
  });

  for (const b of backends) {
    const color = backendColor(backends, b);
    const cands = pts.filter((r) => r.backend === b && !isBaseline(r));
    data.push({
      type: "scatter",
      mode: "markers",
      name: backends.length > 1 ? b : "candidates",
      legendgroup: b,
      x: cands.map((r) => r[axis.key]),
      y: cands.map((r) => r.accuracy),
      customdata: cands.map((r) => r.id),
      text: cands.map((r) => hoverText(r, o.metric)),
      hovertemplate: "%{text}<extra></extra>",
      marker: {
        color,
        symbol: cands.map((r) => (isTrained(r) ? "diamond" : "circle")), // trained candidates stand out
        size: cands.map((r) => (frontIds.has(r.id) ? 12 : 9)),
        opacity: cands.map((r) => (withinBudget(r, o.maxDrop) ? 1 : 0.25)),
        line: { width: cands.map((r) => (frontIds.has(r.id) ? 1.5 : 0)), color: ink },
      },
    });
    const base = pts.filter((r) => r.backend === b && isBaseline(r));
    if (base.length) {
      data.push({
        type: "scatter",
        mode: "markers+text",
        name: backends.length > 1 ? `${b} baseline` : "baseline",
        legendgroup: b,
        x: base.map((r) => r[axis.key]),
        y: base.map((r) => r.accuracy),
        customdata: base.map((r) => r.id),
        text: base.map((r) => hoverText(r, o.metric)),
        texttemplate: "baseline",
        textposition: "top center",
        textfont: { color: ink, size: 11 },
        hovertemplate: "%{text}<extra></extra>",
        marker: { color, symbol: "star", size: 16, line: { width: 1, color: ink } },
      });
    }
  }

  const rec = ringTrace(pts, o, o.recommendedId, "recommended", "#009E73", 22);
  if (rec) data.push(rec);
  const sel = selectionTrace(rows, o);
  if (sel) data.push(sel);

  const metricLabel = o.metric + (o.higherIsBetter ? " (higher is better)" : " (lower is better)");
  // Fit both axes to the points (plotly's own autorange spans 0..150 % when every point has the same
  // accuracy). `autorangeoptions` pins the same range for autoscale / double-click.
  const fit = (range: [number, number] | null) =>
    range ? { range, autorangeoptions: { minallowed: range[0], maxallowed: range[1] } } : {};
  const xRange = fitRange(pts.map((r) => r[axis.key]), { pad: X_PAD });
  const yRange = fitRange(pts.map((r) => r.accuracy), { pad: Y_PAD, fraction: isPercentMetric(o.metric) });
  const layout: Record<string, unknown> = {
    autosize: true,
    height: 380,
    margin: { l: 60, r: 20, t: 30, b: 50 },
    hovermode: "closest",
    hoverlabel: { align: "left" },
    dragmode: "zoom",
    uirevision: o.axis, // keep the user's zoom while points arrive; reset when the axis changes
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: ink, size: 12 },
    legend: { orientation: "h", x: 0, y: 1.02, xanchor: "left", yanchor: "bottom" },
    xaxis: {
      title: { text: axis.label },
      zeroline: false,
      gridcolor: o.dark ? "#444" : "#e5e5e5",
      ...(o.axis === "size" ? { tickformat: "~s", ticksuffix: "B" } : {}),
      ...(o.axis === "latency" ? { ticksuffix: " ms" } : {}),
      ...(o.axis === "memory" ? { ticksuffix: " MB" } : {}),
      ...fit(xRange),
    },
    yaxis: {
      title: { text: metricLabel },
      zeroline: false,
      gridcolor: o.dark ? "#444" : "#e5e5e5",
      ...(isPercentMetric(o.metric) ? { tickformat: ".1%" } : {}),
      ...fit(yRange),
    },
  };
  return { data, layout };
}

/** Horizontal bars of the most quantization-sensitive layers, most sensitive on top. */
export function buildSensitivityFigure(
  rows: SensRow[],
  o: { top?: number; dark?: boolean } = {},
): { data: Trace[]; layout: Record<string, unknown> } {
  const head = topSensitive(rows, o.top ?? 15);
  const ink = o.dark ? "#ddd" : "#333";
  const total = rows.length;
  const data: Trace[] = [
    {
      type: "bar",
      orientation: "h",
      name: "relative output error",
      x: head.map((r) => r.rel_error),
      y: head.map((r) => r.node),
      text: head.map((r) => sensitivityHover(r, total)),
      hovertemplate: "%{text}<extra></extra>",
      textposition: "none",
      marker: { color: "#D55E00" },
    },
  ];
  const layout: Record<string, unknown> = {
    autosize: true,
    height: Math.max(180, 22 * head.length + 80),
    margin: { l: 160, r: 20, t: 10, b: 45 },
    hovermode: "closest",
    hoverlabel: { align: "left" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: ink, size: 12 },
    showlegend: false,
    xaxis: {
      title: { text: "relative output error vs fp32 when quantized alone (calibration data)" },
      tickformat: ".1~%",
      rangemode: "tozero",
      gridcolor: o.dark ? "#444" : "#e5e5e5",
      zeroline: false,
    },
    yaxis: { type: "category", autorange: "reversed", automargin: true },
  };
  return { data, layout };
}
