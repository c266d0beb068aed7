// The nbopt panel: an anywidget view. The widget's traits are the single source of truth; this view
// draws them and writes back only what the user changes (axis, budget, selection, recipe choice).
// Commands that make the kernel work (run, stop, export) are sent as messages; their results come
// back as traits. The view never runs a backend.
import type { AnyModel, RenderProps } from "@anywidget/types";
// plotly's "basic" bundle (scatter, bar, pie) is bundled by esbuild: nothing is fetched at run time.
// @ts-ignore -- the dist bundle has no types
import Plotly from "plotly.js-basic-dist-min";
import { buildFigure, buildSensitivityFigure } from "./figure";
import {
  AXES,
  AxisName,
  Row,
  SensRow,
  SortDir,
  budgetMax,
  describe,
  escapeHtml,
  estimateRemaining,
  formatCell,
  formatBudget,
  formatDuration,
  formatParams,
  isBaseline,
  paretoFront,
  plottable,
  recommend,
  sensitivitySummary,
  sortRows,
  withinBudget,
} from "./logic";

interface ExportStatus {
  id?: string;
  path?: string;
  error?: string;
  busy?: boolean;
}

export interface Model {
  mode: string;
  status: string;
  message: string;
  metric: string;
  higher_is_better: boolean;
  total: number;
  done: number;
  running: string;
  elapsed_s: number;
  durations: number[];
  rows: Row[];
  x_axis: AxisName;
  max_drop: number | null;
  selected: string;
  export_status: ExportStatus;
  available_recipes: string[];
  available_backends: string[];
  recipes: string[];
  backends: string[];
  waiting: boolean;
  result_name: string;
  sensitivity: SensRow[];
  sensitivity_note: string;
}

const TABLE_COLUMNS: [string, string][] = [
  ["name", "candidate"],
  ["backend", "backend"],
  ["status", "status"],
  ["accuracy", "metric"],
  ["accuracy_drop", "vs baseline"],
  ["size_bytes", "size"],
  ["size_ratio", "size ratio"],
  ["latency_ms", "latency"],
  ["peak_memory_mb", "memory"],
  ["notes", "notes"],
];

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function isDark(): boolean {
  const b = document.body;
  if (b.dataset.jpThemeLight === "false") return true;
  if (b.classList.contains("vscode-dark") || b.classList.contains("vscode-high-contrast")) return true;
  return false;
}

function render({ model, el }: RenderProps<Model>) {
  const m = model as unknown as AnyModel<Model>;
  const root = h("div", { class: "nbopt-panel" });
  el.append(root);

  // ---- header: status, progress, stop
  const title = h("span", { class: "nbopt-title" }, "nbopt");
  const statusEl = h("span", { class: "nbopt-status" });
  const stopBtn = h("button", { class: "nbopt-stop", title: "End the sweep after the running candidate; keeps everything measured" }, "Stop");
  const header = h("div", { class: "nbopt-header" }, title, statusEl, stopBtn);
  const bar = h("div", { class: "nbopt-bar" });
  const progress = h("div", { class: "nbopt-progress" }, bar);
  const messageEl = h("div", { class: "nbopt-message" });

  // ---- setup controls (nbopt.Panel): recipes, backends, run
  const recipeBox = h("div", { class: "nbopt-choices nbopt-recipes" });
  const backendBox = h("div", { class: "nbopt-choices nbopt-backends" });
  const runBtn = h("button", { class: "nbopt-run" }, "Run");
  const setup = h(
    "div",
    { class: "nbopt-setup" },
    h("div", {}, h("b", {}, "Recipes "), h("span", { class: "nbopt-hint" }, "(none checked: the default sweep)")),
    recipeBox,
    h("div", {}, h("b", {}, "Backends "), h("span", { class: "nbopt-hint" }, "(none checked: the model's own)")),
    backendBox,
    runBtn,
  );

  // ---- toolbar: axis, budget, recommendation
  const axisSel = h("select", { class: "nbopt-axis", "aria-label": "x axis" });
  for (const [k, a] of Object.entries(AXES)) axisSel.append(h("option", { value: k }, a.label));
  const budgetOn = h("input", { type: "checkbox", class: "nbopt-budget-on" });
  const budget = h("input", { type: "range", class: "nbopt-budget", min: "0", step: "0.0005" });
  const budgetText = h("span", { class: "nbopt-budget-text" });
  const recEl = h("span", { class: "nbopt-recommended" });
  const toolbar = h(
    "div",
    { class: "nbopt-toolbar" },
    h("label", {}, "x axis ", axisSel),
    h("label", { title: "Keep only candidates whose metric drop against their baseline is at most this" }, budgetOn, " max drop ", budget, " ", budgetText),
    recEl,
  );

  const plotEl = h("div", { class: "nbopt-plot" });
  const details = h("div", { class: "nbopt-details" });
  const failed = h("div", { class: "nbopt-failed" });
  const table = h("table", { class: "nbopt-table" });
  const tableWrap = h("div", { class: "nbopt-table-wrap" }, table);

  // ---- layer sensitivity (onnx backend): collapsible, the chart drawn only while open
  const sensSummary = h("span", { class: "nbopt-sens-summary" });
  const sensNote = h("div", { class: "nbopt-sens-note" });
  const sensPlot = h("div", { class: "nbopt-sens-plot" });
  const sens = h(
    "details",
    { class: "nbopt-sens" },
    h("summary", {}, h("b", {}, "Layer sensitivity "), sensSummary),
    h("div", { class: "nbopt-hint" }, "How far the model's output moves when only that layer is quantized to int8 (most sensitive first): the layers to keep in float if accuracy breaks."),
    sensNote,
    sensPlot,
  );

  root.append(header, progress, messageEl, setup, toolbar, plotEl, details, failed, sens, tableWrap);

  // ---- view-local state (not model state): table sort, clock for the elapsed time
  let sort: { column: string; dir: SortDir } = { column: "", dir: "asc" };
  let elapsedAt = performance.now();
  let plotted = false;
  let sensPlotted = false;

  const rows = () => m.get("rows") ?? [];
  const axis = (): AxisName => (m.get("x_axis") in AXES ? m.get("x_axis") : "size");
  const hib = () => m.get("higher_is_better") !== false;
  const maxDrop = () => m.get("max_drop");
  const active = () => ["running", "stopping"].includes(m.get("status"));

  function select(id: string) {
    m.set("selected", m.get("selected") === id ? "" : id);
    m.save_changes();
  }

  // ------------------------------------------------------------------ drawing
  function drawStatus() {
    const st = m.get("status");
    const total = m.get("total");
    const done = m.get("done");
    const runningFor = (performance.now() - elapsedAt) / 1000;
    const elapsed = m.get("elapsed_s") + (active() ? runningFor : 0);
    const parts: string[] = [];
    if (st === "idle") parts.push(m.get("mode") === "setup" ? "choose recipes and backends, then Run" : "starting…");
    else parts.push(`${done}/${total} done`);
    if (active() && m.get("running")) parts.push(`running ${m.get("running")}`);
    if (st !== "idle") parts.push(`elapsed ${formatDuration(elapsed)}`);
    if (active()) {
      const eta = estimateRemaining({ total, done, durations: m.get("durations") ?? [], runningFor: m.get("running") ? runningFor : 0 });
      parts.push(eta === null ? "time left: after the first candidate" : `about ${formatDuration(eta)} left`);
    }
    if (st === "stopping") parts.push("stopping after the running candidate");
    if (st === "stopped") parts.push("stopped: everything finished is kept");
    if (st === "done") parts.push("finished");
    if (st === "error") parts.push("the sweep ended with an error");
    if (m.get("result_name") && (st === "done" || st === "stopped")) parts.push(`study stored in \`${m.get("result_name")}\``);
    statusEl.textContent = parts.join(" · ");
    root.dataset.status = st;
    root.dataset.done = String(done);
    root.dataset.total = String(total);
    bar.style.width = total > 0 ? `${Math.min(100, (100 * done) / total)}%` : "0%";
    progress.style.display = st === "idle" ? "none" : "";
    stopBtn.style.display = active() ? "" : "none";
    stopBtn.disabled = st === "stopping";
    runBtn.disabled = active();
    const msg = m.get("message") || (m.get("waiting") && active() ? "The next cell waits for this sweep; interrupt the kernel to stop it." : "");
    messageEl.textContent = msg;
    messageEl.style.display = msg ? "" : "none";
    messageEl.classList.toggle("nbopt-error", st === "error");
  }

  function drawSetup() {
    setup.style.display = m.get("mode") === "setup" ? "" : "none";
    const box = (el: HTMLElement, all: string[], chosen: string[], key: "recipes" | "backends") => {
      el.replaceChildren(
        ...all.map((name) => {
          const cb = h("input", { type: "checkbox", value: name });
          cb.checked = chosen.includes(name);
          cb.disabled = active();
          cb.addEventListener("change", () => {
            const cur = new Set(m.get(key) ?? []);
            if (cb.checked) cur.add(name);
            else cur.delete(name);
            m.set(key, all.filter((n) => cur.has(n)));
            m.save_changes();
          });
          return h("label", { class: "nbopt-choice" }, cb, ` ${name}`);
        }),
      );
    };
    box(recipeBox, m.get("available_recipes") ?? [], m.get("recipes") ?? [], "recipes");
    box(backendBox, m.get("available_backends") ?? [], m.get("backends") ?? [], "backends");
  }

  function drawToolbar(): Row | null {
    axisSel.value = axis();
    const md = maxDrop();
    const max = Math.max(budgetMax(rows()), md ?? 0);
    budget.max = String(max);
    budgetOn.checked = md !== null && md !== undefined;
    budget.disabled = !budgetOn.checked;
    if (budgetOn.checked) budget.value = String(Math.min(md as number, max));
    budgetText.textContent = budgetOn.checked ? formatBudget(md as number, m.get("metric")) : "off";
    const rec = recommend(rows(), axis(), md, hib());
    if (plottable(rows(), axis()).length === 0) recEl.textContent = "";
    else if (!rec) recEl.textContent = "No candidate within the budget.";
    else
      recEl.innerHTML =
        `Recommended: <a href="#" class="nbopt-rec-link">${escapeHtml(rec.name)}</a> ` +
        `(${escapeHtml(formatCell(AXES[axis()].key, rec[AXES[axis()].key], m.get("metric")))}, ` +
        `${escapeHtml(formatCell("accuracy", rec.accuracy, m.get("metric")))})` +
        (isBaseline(rec) ? " – nothing smaller stays within the budget" : "");
    root.dataset.recommended = rec ? rec.id : "";
    return rec;
  }

  function drawPlot(rec: Row | null) {
    const n = plottable(rows(), axis()).length;
    root.dataset.points = String(n);
    root.dataset.front = String(paretoFront(rows().filter((r) => withinBudget(r, maxDrop())), axis(), hib()).length);
    if (n === 0 && !plotted) {
      plotEl.textContent = m.get("status") === "idle" ? "" : "Points appear here as candidates finish.";
      plotEl.classList.add("nbopt-plot-empty");
      return;
    }
    if (!plotted) {
      plotEl.textContent = "";
      plotEl.classList.remove("nbopt-plot-empty");
    }
    const fig = buildFigure(rows(), {
      axis: axis(),
      metric: m.get("metric"),
      higherIsBetter: hib(),
      maxDrop: maxDrop() ?? null,
      selectedId: m.get("selected") || null,
      recommendedId: rec ? rec.id : null,
      dark: isDark(),
    });
    Plotly.react(plotEl, fig.data, fig.layout, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
    if (!plotted) {
      plotted = true;
      (plotEl as any).on("plotly_click", (ev: any) => {
        const id = ev?.points?.[0]?.customdata;
        if (typeof id === "string") select(id);
      });
    }
  }

  function drawDetails() {
    const id = m.get("selected");
    const row = rows().find((r) => r.id === id);
    root.dataset.selected = row ? row.id : "";
    if (!row) {
      details.replaceChildren();
      details.style.display = "none";
      return;
    }
    details.style.display = "";
    const dl = h("table", { class: "nbopt-kv" });
    for (const [k, v] of describe(row, m.get("metric"))) dl.append(h("tr", {}, h("th", {}, k), h("td", {}, v)));
    const close = h("button", { class: "nbopt-close", title: "Clear the selection" }, "×");
    close.addEventListener("click", () => select(row.id));
    const children: Node[] = [h("div", { class: "nbopt-details-head" }, h("b", {}, row.name), close), dl];
    if (row.status === "ok") {
      const path = h("input", { type: "text", class: "nbopt-export-path", placeholder: "path (empty: a default next to the study store)" });
      const btn = h("button", { class: "nbopt-export" }, "Export");
      const st = m.get("export_status") ?? {};
      const out = h("div", { class: "nbopt-export-status" });
      if (st.id === row.id) {
        if (st.busy) out.textContent = "Exporting…";
        else if (st.error) {
          out.textContent = st.error;
          out.classList.add("nbopt-error");
        } else if (st.path) out.textContent = `Written to ${st.path}`;
      }
      btn.disabled = !!(st.busy && st.id === row.id);
      btn.addEventListener("click", () => m.send({ type: "export", id: row.id, path: path.value.trim() }));
      children.push(h("div", { class: "nbopt-export-row" }, path, btn), out);
    }
    details.replaceChildren(...children);
  }

  function drawFailed() {
    const bad = rows().filter((r) => r.status !== "ok");
    root.dataset.failed = String(bad.length);
    if (bad.length === 0) {
      failed.replaceChildren();
      failed.style.display = "none";
      return;
    }
    failed.style.display = "";
    const ul = h("ul");
    for (const r of bad) {
      const params = formatParams(r.params);
      const li = h("li", {}, h("b", {}, `${r.name} `), `(${r.backend}${params ? ", " + params : ""}) ${r.status}: `, h("span", { class: "nbopt-error-text" }, r.error || "no error text"));
      li.addEventListener("click", () => select(r.id));
      ul.append(li);
    }
    failed.replaceChildren(h("b", {}, `Failed or skipped (${bad.length})`), ul);
  }

  function drawTable(rec: Row | null) {
    const metric = m.get("metric");
    const all = rows();
    const shown = sort.column ? sortRows(all, sort.column, sort.dir) : all;
    const head = h("tr");
    for (const [col, label] of TABLE_COLUMNS) {
      const arrow = sort.column === col ? (sort.dir === "asc" ? " ▲" : " ▼") : "";
      const th = h("th", { "data-column": col, title: "Sort" }, (col === "accuracy" ? metric : label) + arrow);
      th.addEventListener("click", () => {
        sort = sort.column === col ? { column: col, dir: sort.dir === "asc" ? "desc" : "asc" } : { column: col, dir: "asc" };
        drawTable(recommend(rows(), axis(), maxDrop(), hib()));
      });
      head.append(th);
    }
    const body = h("tbody");
    const sel = m.get("selected");
    for (const r of shown) {
      const tr = h("tr", { "data-id": r.id });
      if (r.id === sel) tr.classList.add("nbopt-selected");
      if (rec && r.id === rec.id) tr.classList.add("nbopt-rec");
      if (r.status !== "ok") tr.classList.add("nbopt-row-failed");
      for (const [col] of TABLE_COLUMNS) {
        let text = formatCell(col, r[col], metric);
        if (col === "name" && isBaseline(r)) text += " ★";
        tr.append(h("td", { title: col === "notes" || col === "name" ? String(r[col] ?? "") : "" }, text));
      }
      tr.addEventListener("click", () => select(r.id));
      body.append(tr);
    }
    table.replaceChildren(h("thead", {}, head), body);
  }

  function drawSensitivity() {
    const data = m.get("sensitivity") ?? [];
    const note = m.get("sensitivity_note") ?? "";
    root.dataset.sensitivity = String(data.length);
    sens.style.display = data.length || note ? "" : "none";
    sensSummary.textContent = data.length ? `(${sensitivitySummary(data)})` : "";
    sensNote.textContent = note;
    sensNote.style.display = note ? "" : "none";
    sensNote.classList.toggle("nbopt-error", note.startsWith("Layer sensitivity failed"));
    if (!data.length || !sens.open) {
      if (sensPlotted && !data.length) {
        Plotly.purge(sensPlot);
        sensPlotted = false;
      }
      return;
    }
    const fig = buildSensitivityFigure(data, { top: 15, dark: isDark() });
    Plotly.react(sensPlot, fig.data, fig.layout, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
    sensPlotted = true;
  }

  function drawAll() {
    drawStatus();
    drawSetup();
    const rec = drawToolbar();
    drawPlot(rec);
    drawDetails();
    drawFailed();
    drawTable(rec);
    drawSensitivity();
  }

  // ------------------------------------------------------------------ user input
  stopBtn.addEventListener("click", () => m.send({ type: "stop" }));
  sens.addEventListener("toggle", drawSensitivity);
  runBtn.addEventListener("click", () => m.send({ type: "run" }));
  axisSel.addEventListener("change", () => {
    m.set("x_axis", axisSel.value as AxisName);
    m.save_changes();
  });
  budgetOn.addEventListener("change", () => {
    m.set("max_drop", budgetOn.checked ? Math.min(0.01, budgetMax(rows())) : null);
    m.save_changes();
  });
  budget.addEventListener("input", () => {
    m.set("max_drop", Number(budget.value));
    m.save_changes();
  });
  recEl.addEventListener("click", (ev) => {
    const rec = recommend(rows(), axis(), maxDrop(), hib());
    if ((ev.target as HTMLElement).classList.contains("nbopt-rec-link") && rec) {
      ev.preventDefault();
      select(rec.id);
    }
  });

  // ------------------------------------------------------------------ model events
  const onElapsed = () => {
    elapsedAt = performance.now();
    drawStatus();
  };
  const onStatus = () => {
    drawStatus();
    drawSetup();
  };
  const listeners: [string, () => void][] = [
    ["change:rows", drawAll],
    ["change:x_axis", drawAll],
    ["change:max_drop", drawAll],
    ["change:selected", drawAll],
    ["change:higher_is_better", drawAll],
    ["change:metric", drawAll],
    ["change:export_status", drawDetails],
    ["change:status", onStatus],
    ["change:done", drawStatus],
    ["change:total", drawStatus],
    ["change:running", drawStatus],
    ["change:message", drawStatus],
    ["change:waiting", drawStatus],
    ["change:result_name", drawStatus],
    ["change:elapsed_s", onElapsed],
    ["change:mode", drawSetup],
    ["change:available_recipes", drawSetup],
    ["change:available_backends", drawSetup],
    ["change:recipes", drawSetup],
    ["change:backends", drawSetup],
    ["change:sensitivity", drawSensitivity],
    ["change:sensitivity_note", drawSensitivity],
  ];
  for (const [ev, fn] of listeners) m.on(ev as any, fn);
  const tick = setInterval(() => {
    if (active()) drawStatus();
  }, 1000);
  const resize = new ResizeObserver(() => {
    if (plotted && plotEl.isConnected && plotEl.clientWidth > 0) Plotly.Plots.resize(plotEl);
    if (sensPlotted && sens.open && sensPlot.isConnected && sensPlot.clientWidth > 0) Plotly.Plots.resize(sensPlot);
  });
  resize.observe(plotEl);
  resize.observe(sensPlot);

  drawAll();

  return () => {
    clearInterval(tick);
    resize.disconnect();
    for (const [ev, fn] of listeners) m.off(ev as any, fn);
    if (plotted) Plotly.purge(plotEl);
    if (sensPlotted) Plotly.purge(sensPlot);
  };
}

export default { render };
