// Pure functions of the panel: no DOM, no plotly. Tested with vitest (js/test/).

/**
 * One result row as the panel receives it: a row of `study.results` (the columns of `nbopt.study.COLUMNS`)
 * plus `id`, JSON-safe (NaN -> null). The panel's only definition of a row; one field per line.
 * `status` is "ok" | "failed" | "skipped". Columns not listed here still show in the details
 * (see `describe`); read them with `field()`.
 */
export interface Row {
  id: string;
  name: string;
  backend: string;
  recipe: string;
  params: Record<string, unknown> | null;
  format?: string | null;
  status: string;
  error?: string | null;
  size_bytes?: number | null;
  size_ratio?: number | null;
  size_compressed_bytes?: number | null;
  accuracy?: number | null;
  accuracy_drop?: number | null;
  accuracy_drop_low?: number | null;
  accuracy_drop_high?: number | null;
  latency_ms?: number | null;
  latency_p90_ms?: number | null;
  peak_memory_mb?: number | null;
  threads?: number | null;
  batch_size?: number | null;
  notes?: string | null;
  artifact_path?: string | null;
  log?: string | null;
  build_seconds?: number | null;
  per_class?: Array<Record<string, unknown>> | null;
  size_breakdown?: Record<string, unknown> | null;
}

/** A column of a row by name, listed in `Row` or not (extra columns the kernel sends). */
export function field(row: Row, column: string): unknown {
  return (row as unknown as Record<string, unknown>)[column];
}

export type AxisName = "size" | "latency" | "memory";

export interface Axis {
  key: "size_bytes" | "latency_ms" | "peak_memory_mb";
  label: string;
  format: (v: number | null | undefined) => string;
}

export const AXES: Record<AxisName, Axis> = {
  size: { key: "size_bytes", label: "Size on disk", format: (v) => formatBytes(v) },
  latency: { key: "latency_ms", label: "Latency (median, batch 1)", format: (v) => formatMs(v) },
  memory: { key: "peak_memory_mb", label: "Peak memory", format: (v) => formatMB(v) },
};

/** Metrics whose value reads as a percentage. */
const PERCENT_METRICS = new Set(["accuracy", "top5", "f1", "agreement", "next-token"]);

/** Whether the metric is a fraction shown as a percentage (accuracy, top5, f1, agreement, next-token). */
export function isPercentMetric(metric: string): boolean {
  return PERCENT_METRICS.has(metric);
}

export function isNum(v: unknown): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

/** A training-based candidate (qat, distill, a fine-tune): it has its own marker on the plot. */
export function isTrained(row: Row): boolean {
  return isNum(field(row, "train_seconds"));
}

/** The training_progress event as the header's status shows it: "training epoch 2/5, loss 0.31, 12 s". */
export interface TrainingProgress {
  name?: string;
  phase?: string | null;
  epoch?: number | null;
  epochs?: number | null;
  loss?: number | null;
  holdout_loss?: number | null;
  seconds?: number | null;
}

export function trainingText(p: TrainingProgress | null | undefined): string {
  if (!p || !isNum(p.epoch)) return "";
  const parts = [`${p.phase || "training"} epoch ${p.epoch}${isNum(p.epochs) ? `/${p.epochs}` : ""}`];
  if (isNum(p.loss)) parts.push(`loss ${Number(p.loss.toPrecision(3))}`);
  if (isNum(p.holdout_loss)) parts.push(`held-out ${Number(p.holdout_loss.toPrecision(3))}`);
  if (isNum(p.seconds)) parts.push(formatDuration(p.seconds));
  return parts.join(", ");
}

export function isBaseline(row: Row): boolean {
  return row.recipe === "baseline";
}

/** Rows that can be drawn on the plot for this x axis. */
export function plottable(rows: Row[], axis: AxisName): Row[] {
  const key = AXES[axis].key;
  return rows.filter((r) => r.status === "ok" && isNum(r[key]) && isNum(r.accuracy));
}

/**
 * Within the accuracy budget (a drop, always "positive = worse"); no budget: everything is. As in
 * ``Study.best``, a row without a drop (its baseline failed) counts as no drop.
 */
export function withinBudget(row: Row, maxDrop: number | null | undefined): boolean {
  if (maxDrop === null || maxDrop === undefined) return true;
  const drop = isNum(row.accuracy_drop) ? row.accuracy_drop : 0;
  return drop <= maxDrop + 1e-12;
}

/**
 * Non-dominated rows: smaller x is better, and accuracy is better when higher (or lower, for
 * mse / mae). Returned sorted by x ascending, each strictly better in accuracy than the previous.
 */
export function paretoFront(rows: Row[], axis: AxisName, higherIsBetter: boolean): Row[] {
  const key = AXES[axis].key;
  const sign = higherIsBetter ? 1 : -1;
  const pts = plottable(rows, axis).slice();
  pts.sort((a, b) => {
    const dx = (a[key] as number) - (b[key] as number);
    if (dx !== 0) return dx;
    return sign * ((b.accuracy as number) - (a.accuracy as number));
  });
  const front: Row[] = [];
  let best = -Infinity;
  for (const r of pts) {
    const score = sign * (r.accuracy as number);
    if (score > best) {
      front.push(r);
      best = score;
    }
  }
  return front;
}

/**
 * The front as a staircase: from each point go right to the next point's x at the same accuracy,
 * then up (or down) to the next point. That outline is what the front guarantees: no candidate
 * beats it on both axes.
 */
export function stepLine(front: Row[], axis: AxisName): { x: number[]; y: number[] } {
  const key = AXES[axis].key;
  const x: number[] = [];
  const y: number[] = [];
  front.forEach((r, i) => {
    const xi = r[key] as number;
    const yi = r.accuracy as number;
    if (i > 0) {
      x.push(xi);
      y.push(y[y.length - 1]);
    }
    x.push(xi);
    y.push(yi);
  });
  return { x, y };
}

/**
 * The recommendation for a budget: the smallest (on the x axis) ok candidate within the budget,
 * ties broken by the better accuracy. Baselines count: if nothing beats them, keep the model.
 */
export function recommend(
  rows: Row[],
  axis: AxisName,
  maxDrop: number | null | undefined,
  higherIsBetter: boolean,
): Row | null {
  const key = AXES[axis].key;
  const sign = higherIsBetter ? 1 : -1;
  let best: Row | null = null;
  for (const r of plottable(rows, axis)) {
    if (!withinBudget(r, maxDrop)) continue;
    if (
      best === null ||
      (r[key] as number) < (best[key] as number) ||
      ((r[key] as number) === (best[key] as number) &&
        sign * (r.accuracy as number) > sign * (best.accuracy as number))
    ) {
      best = r;
    }
  }
  return best;
}

/** Upper end of the budget slider: the largest drop measured, at least 1 point. */
export function budgetMax(rows: Row[]): number {
  let m = 0.01;
  for (const r of rows) if (r.status === "ok" && isNum(r.accuracy_drop)) m = Math.max(m, r.accuracy_drop);
  // round up to a readable step
  const step = m <= 0.05 ? 0.005 : m <= 0.2 ? 0.01 : 0.05;
  return Math.ceil(m / step - 1e-9) * step;
}

export type SortDir = "asc" | "desc";

/** Sort a copy; numbers numerically, text alphabetically, missing values always last. */
export function sortRows(rows: Row[], column: string, dir: SortDir): Row[] {
  const mul = dir === "asc" ? 1 : -1;
  const missing = (v: unknown) => v === null || v === undefined || v === "" || (typeof v === "number" && !Number.isFinite(v));
  return rows
    .map((r, i) => ({ r, i }))
    .sort((a, b) => {
      const va = field(a.r, column);
      const vb = field(b.r, column);
      const ma = missing(va);
      const mb = missing(vb);
      if (ma || mb) return ma === mb ? a.i - b.i : ma ? 1 : -1;
      let c: number;
      if (typeof va === "number" && typeof vb === "number") c = va - vb;
      else c = String(cellText(va)).localeCompare(String(cellText(vb)), undefined, { numeric: true });
      return c !== 0 ? mul * c : a.i - b.i;
    })
    .map((x) => x.r);
}

function cellText(v: unknown): string {
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

/** Seconds left: the mean time per finished candidate times what is left, minus what the running one has used. */
export function estimateRemaining(p: {
  total: number;
  done: number;
  durations: number[];
  runningFor?: number;
}): number | null {
  if (p.durations.length === 0 || p.total <= 0) return null;
  const mean = p.durations.reduce((a, b) => a + b, 0) / p.durations.length;
  const left = Math.max(0, p.total - p.done);
  return Math.max(0, mean * left - (p.runningFor ?? 0));
}

/**
 * An axis range that fits the values: their span plus `pad` of it on each side, and at least
 * `2 * minHalfSpan` wide (centred on the values). 0 is never forced in. Without `minHalfSpan`:
 * 0.5 percentage points for a fraction (`fraction: true`), else 1 % of the values' magnitude.
 * Null when there is no finite value.
 */
export function fitRange(
  values: readonly unknown[],
  o: { pad?: number; fraction?: boolean; minHalfSpan?: number } = {},
): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (!isNum(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo > hi) return null;
  const pad = o.pad ?? 0.08;
  const mid = (lo + hi) / 2;
  const minHalf = o.minHalfSpan ?? (o.fraction ? 0.005 : Math.max(Math.abs(lo), Math.abs(hi)) * 0.01 || 0.01);
  const half = Math.max(((hi - lo) / 2) * (1 + 2 * pad), minHalf);
  return [mid - half, mid + half];
}

// ----------------------------------------------------------------------------- formatting

export function formatBytes(n: number | null | undefined): string {
  if (!isNum(n)) return "–";
  const units = ["B", "kB", "MB", "GB"];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1000 && u < units.length - 1) {
    v /= 1000;
    u += 1;
  }
  return u === 0 ? `${Math.round(v)} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[u]}`;
}

export function formatMs(ms: number | null | undefined): string {
  if (!isNum(ms)) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 100) return `${ms.toFixed(0)} ms`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

export function formatMB(mb: number | null | undefined): string {
  if (!isNum(mb)) return "–";
  return `${mb.toFixed(mb < 10 ? 2 : 1)} MB`;
}

export function formatDuration(s: number | null | undefined): string {
  if (!isNum(s)) return "–";
  const t = Math.max(0, Math.round(s));
  if (t < 60) return `${t} s`;
  if (t < 3600) return `${Math.floor(t / 60)} min ${String(t % 60).padStart(2, "0")} s`;
  return `${Math.floor(t / 3600)} h ${String(Math.floor((t % 3600) / 60)).padStart(2, "0")} min`;
}

export function formatMetric(v: number | null | undefined, metric: string): string {
  if (!isNum(v)) return "–";
  if (PERCENT_METRICS.has(metric)) return `${(v * 100).toFixed(2)} %`;
  return Number(v.toPrecision(4)).toString();
}

/** A drop against the baseline ("positive = worse", whatever the metric's direction), in words. */
export function formatDrop(d: number | null | undefined, metric: string): string {
  if (!isNum(d)) return "–";
  const a = Math.abs(d);
  const amount = PERCENT_METRICS.has(metric) ? `${(a * 100).toFixed(2)} pp` : `${Number(a.toPrecision(3))}`;
  if (Number(amount.split(" ")[0]) === 0) return "same";
  return `${amount} ${d > 0 ? "worse" : "better"}`;
}

/** One end of a drop's interval, signed ("+0.70", "−0.41", "0.00"; positive = worse), in pp for percent metrics. */
export function formatSignedDrop(d: number | null | undefined, metric: string): string {
  if (!isNum(d)) return "–";
  const a = Math.abs(d);
  const text = PERCENT_METRICS.has(metric) ? (a * 100).toFixed(2) : String(Number(a.toPrecision(3)));
  if (Number(text) === 0) return text;
  return (d > 0 ? "+" : "\u2212") + text;
}

/** The drop's 95 % interval as "[−0.41, +0.70]"; "" when it was not measured. */
export function formatDropInterval(low: number | null | undefined, high: number | null | undefined, metric: string): string {
  if (!isNum(low) || !isNum(high)) return "";
  return `[${formatSignedDrop(low, metric)}, ${formatSignedDrop(high, metric)}]`;
}

/** A row's drop with its interval when it has one: "0.19 pp worse [−0.41, +0.70]" (as `nbopt.stats.drop_text`). */
export function formatRowDrop(row: Row, metric: string): string {
  const drop = formatDrop(row.accuracy_drop, metric);
  const interval = isNum(row.accuracy_drop) ? formatDropInterval(row.accuracy_drop_low, row.accuracy_drop_high, metric) : "";
  return interval ? `${drop} ${interval}` : drop;
}

/** Whether the drop may be noise: its interval holds 0 (null: no interval, or no drop: the baseline). */
export function dropIsNoise(row: Row): boolean | null {
  const { accuracy_drop_low: low, accuracy_drop_high: high } = row;
  if (!isNum(low) || !isNum(high) || isBaseline(row)) return null;
  return low <= 0 && high >= 0;
}

/** What a drop cell's interval means (its tooltip); "" without one. */
export function dropTitle(row: Row): string {
  const noise = dropIsNoise(row);
  if (noise === null) return "";
  return (
    "95 % interval of the drop against the baseline (paired bootstrap over the evaluation examples; positive = worse). " +
    (noise ? "It holds 0: the difference may be noise." : "It excludes 0: the difference is real.")
  );
}

/** A column of a row as text; the drop comes with its interval. */
export function rowCell(row: Row, column: string, metric: string): string {
  if (column === "accuracy_drop" && isNum(row.accuracy_drop)) return formatRowDrop(row, metric);
  return formatCell(column, field(row, column), metric);
}

/** The budget slider's value: the largest drop accepted. */
export function formatBudget(d: number, metric: string): string {
  return PERCENT_METRICS.has(metric) ? `${(d * 100).toFixed(2)} pp` : `${Number(d.toPrecision(3))}`;
}

export function formatParams(params: Record<string, unknown> | null | undefined): string {
  if (!params || Object.keys(params).length === 0) return "";
  return Object.keys(params)
    .sort()
    .map((k) => `${k}=${typeof params[k] === "object" ? JSON.stringify(params[k]) : String(params[k])}`)
    .join(", ");
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

/** Columns shown in the details and in the hover, in this order; the rest follow. */
const KNOWN_COLUMNS = [
  "name", "backend", "recipe", "params", "format", "status", "error", "accuracy", "accuracy_drop",
  "size_bytes", "size_compressed_bytes", "size_ratio", "latency_ms", "latency_p90_ms", "threads",
  "peak_memory_mb", "train_seconds", "train_epochs", "student", "preprocessing", "input_shape", "notes",
  "artifact_path",
];
// id: internal; the drop's interval is shown with the drop; per_class and size_breakdown have their own blocks
const HIDDEN_COLUMNS = new Set(["id", "accuracy_drop_low", "accuracy_drop_high", "per_class", "size_breakdown"]);

/** The drop's label: "vs baseline", with "(95 % interval)" when the row has one. */
function dropLabel(row: Row): string {
  return dropIsNoise(row) === null ? "vs baseline" : "vs baseline (95 % interval)";
}

export function formatCell(column: string, v: unknown, metric: string): string {
  if (v === null || v === undefined || v === "") return "–";
  if (column === "accuracy") return formatMetric(v as number, metric);
  if (column === "accuracy_drop") return formatDrop(v as number, metric);
  if (column.startsWith("size_") && column.endsWith("bytes")) return formatBytes(v as number);
  if (column === "size_ratio") return isNum(v) ? `${(v * 100).toFixed(1)} %` : "–";
  if (column.endsWith("_ms")) return formatMs(v as number);
  if (column.endsWith("_mb")) return formatMB(v as number);
  if (column === "train_seconds") return formatDuration(v as number);
  if (column === "params") return formatParams(v as Record<string, unknown>) || "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : Number(v.toPrecision(4)).toString();
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** Every column of a row, known ones first, as [column, text] pairs (missing values skipped). */
export function describe(row: Row, metric: string): [string, string][] {
  const cols = [
    ...KNOWN_COLUMNS.filter((c) => c in row),
    ...Object.keys(row).filter((c) => !KNOWN_COLUMNS.includes(c) && !HIDDEN_COLUMNS.has(c)).sort(),
  ];
  const out: [string, string][] = [];
  for (const c of cols) {
    const v = field(row, c);
    if (v === null || v === undefined || v === "") continue;
    if (c === "params" && formatParams(v as Record<string, unknown>) === "") continue;
    out.push([c === "accuracy" ? metric : c === "accuracy_drop" ? dropLabel(row) : c, rowCell(row, c, metric)]);
  }
  return out;
}

/** What the hover shows: what the candidate is, and every measured number. */
const HOVER_FIELDS: [string, string][] = [
  ["backend", "backend"],
  ["recipe", "recipe"],
  ["params", "params"],
  ["accuracy", ""], // labelled with the metric's name
  ["accuracy_drop", "vs baseline"],
  ["size_bytes", "size"],
  ["size_compressed_bytes", "compressed size"],
  ["size_ratio", "size ratio"],
  ["latency_ms", "latency (median)"],
  ["latency_p90_ms", "latency p90"],
  ["peak_memory_mb", "peak memory"],
  ["train_seconds", "training"],
  ["student", "student"],
  ["preprocessing", "preprocessing"],
  ["notes", "notes"],
];

/** Hover text for a point (plotly accepts <br> and <b>). */
export function hoverText(row: Row, metric: string): string {
  const lines: string[] = [`<b>${escapeHtml(row.name)}</b>`];
  for (const [col, label] of HOVER_FIELDS) {
    const v = field(row, col);
    if (v === null || v === undefined || v === "") continue;
    let t = rowCell(row, col, metric);
    if (col === "params" && t === "–") continue;
    if (t.length > 70) t = t.slice(0, 67) + "…";
    const name = col === "accuracy_drop" ? dropLabel(row) : label || metric;
    lines.push(`${escapeHtml(name)}: ${escapeHtml(t)}`);
  }
  return lines.join("<br>");
}

// ----------------------------------------------------------------------------- layer sensitivity

/** One row of the onnx backend's per-layer sensitivity table (rank 1 = most sensitive). */
export interface SensRow {
  node: string;
  op_type: string;
  params?: number | null;
  rel_error: number | null; // null: the node could not be quantized alone
  rank: number;
}

/** The `n` most sensitive layers that were measured, most sensitive first. */
export function topSensitive(rows: SensRow[] | null | undefined, n = 15): SensRow[] {
  return (rows ?? [])
    .filter((r) => isNum(r.rel_error))
    .slice()
    .sort((a, b) => (isNum(a.rank) && isNum(b.rank) ? a.rank - b.rank : (b.rel_error as number) - (a.rel_error as number)))
    .slice(0, Math.max(0, n));
}

/** A relative error as a percentage, with enough digits for small values. */
export function formatPercent(v: number | null | undefined): string {
  if (!isNum(v)) return "–";
  const p = v * 100;
  const a = Math.abs(p);
  if (a === 0) return "0 %";
  if (a >= 10) return `${p.toFixed(1)} %`;
  if (a >= 0.1) return `${p.toFixed(2)} %`;
  return `${Number(p.toPrecision(2))} %`;
}

/** Hover text of a sensitivity bar: the node, its op type and rank, its error. */
export function sensitivityHover(r: SensRow, total: number): string {
  const lines = [
    `<b>${escapeHtml(r.node)}</b>`,
    `${escapeHtml(r.op_type)} · rank ${r.rank} of ${total}`,
    `relative output error: ${formatPercent(r.rel_error)}`,
  ];
  if (isNum(r.params)) lines.push(`weights: ${r.params.toLocaleString("en-US")}`);
  return lines.join("<br>");
}

/** The section's one-line summary (shown while it is collapsed too). */
export function sensitivitySummary(rows: SensRow[] | null | undefined): string {
  const top = topSensitive(rows, 1)[0];
  const n = (rows ?? []).length;
  if (!top) return n ? `${n} layers, none measured` : "";
  return `${n} layer${n === 1 ? "" : "s"}; most sensitive: ${top.node} (${top.op_type}, ${formatPercent(top.rel_error)})`;
}

// ----------------------------------------------------------------------------- per class

/** One class of `Row.per_class`: accuracy of the candidate and of its baseline on that class. */
export interface ClassRow {
  cls: string;
  n: number | null;
  accuracy: number | null;
  baseline: number | null;
  drop: number | null; // baseline - accuracy: positive = the candidate lost on this class
}

/** The `n` classes that lost the most first (missing drops last), from a row's `per_class`. */
export function perClassRows(pc: Array<Record<string, unknown>> | null | undefined, n = 10): ClassRow[] {
  const num = (v: unknown) => (isNum(v) ? v : null);
  return (Array.isArray(pc) ? pc : [])
    .filter((r) => r !== null && typeof r === "object")
    .map((r) => ({
      cls: String(r["class"] ?? "?"),
      n: num(r["n"]),
      accuracy: num(r["accuracy"]),
      baseline: num(r["baseline"]),
      drop: num(r["drop"]),
    }))
    .map((r, i) => ({ r, i, key: r.drop ?? -Infinity }))
    .sort((a, b) => b.key - a.key || a.i - b.i) // -Infinity - -Infinity is NaN: falls to the order given
    .map((x) => x.r)
    .slice(0, Math.max(0, n));
}

/** A class row's cells: class, n, accuracy, baseline, drop (in pp, "worse" / "better"). */
export function formatClassRow(r: ClassRow): [string, string, string, string, string] {
  return [r.cls, isNum(r.n) ? String(r.n) : "–", formatMetric(r.accuracy, "accuracy"), formatMetric(r.baseline, "accuracy"), formatDrop(r.drop, "accuracy")];
}

// ----------------------------------------------------------------------------- where the bytes go

/** `Row.size_breakdown`: the artifact's bytes by dtype, its largest tensors, its segments, notes. */
export interface SizeBreakdown {
  total_bytes?: number;
  by_dtype?: Record<string, number>;
  largest?: Array<{ name?: string; dtype?: string; shape?: unknown; bytes?: number }>;
  segments?: Record<string, number>;
  notes?: string[];
}

const DTYPE_ORDER = ["fp32", "fp16", "bf16", "int8", "int4", "other"];

/** Bytes by dtype on one line, the usual dtypes first, empty ones left out: "fp32 1.20 MB · int8 300 kB". */
export function byDtypeLine(sb: SizeBreakdown | Record<string, unknown> | null | undefined): string {
  const d = ((sb as SizeBreakdown | null)?.by_dtype ?? {}) as Record<string, unknown>;
  const keys = Object.keys(d).sort((a, b) => {
    const ia = DTYPE_ORDER.indexOf(a);
    const ib = DTYPE_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  return keys.filter((k) => isNum(d[k]) && (d[k] as number) > 0).map((k) => `${k} ${formatBytes(d[k] as number)}`).join(" · ");
}

/** A tensor's shape as "64×3×3×3" ("scalar" for []). */
export function formatShape(shape: unknown): string {
  if (Array.isArray(shape)) return shape.length ? shape.map(String).join("×") : "scalar";
  return shape === null || shape === undefined ? "" : String(shape);
}

/** The `n` largest tensors, largest first, as [name, dtype, shape, size] cells. */
export function largestTensors(sb: SizeBreakdown | Record<string, unknown> | null | undefined, n = 5): [string, string, string, string][] {
  const list = (sb as SizeBreakdown | null)?.largest;
  return (Array.isArray(list) ? list : [])
    .filter((t) => t !== null && typeof t === "object")
    .slice()
    .sort((a, b) => (isNum(b.bytes) ? b.bytes : -1) - (isNum(a.bytes) ? a.bytes : -1))
    .slice(0, Math.max(0, n))
    .map((t) => [String(t.name ?? ""), String(t.dtype ?? ""), formatShape(t.shape), formatBytes(t.bytes)]);
}

/** The file's segments, largest first, on one line: "weights 1.20 MB · graph 30.0 kB". */
export function segmentsLine(sb: SizeBreakdown | Record<string, unknown> | null | undefined): string {
  const seg = ((sb as SizeBreakdown | null)?.segments ?? {}) as Record<string, unknown>;
  return Object.entries(seg)
    .filter(([, v]) => isNum(v))
    .sort((a, b) => (b[1] as number) - (a[1] as number))
    .map(([k, v]) => `${k} ${formatBytes(v as number)}`)
    .join(" · ");
}

/** The breakdown's notes (strings only). */
export function sizeNotes(sb: SizeBreakdown | Record<string, unknown> | null | undefined): string[] {
  const notes = (sb as SizeBreakdown | null)?.notes;
  return Array.isArray(notes) ? notes.filter((x): x is string => typeof x === "string" && x !== "") : [];
}
