// The Pareto plot. Sets data-points and data-front. A new selection swaps only the selection ring
// (the figure's last trace); everything else redraws the figure.
// @ts-ignore -- the dist bundle has no types
import Plotly from "plotly.js-basic-dist-min";
import { PLOT_CONFIG, h, isDark } from "../dom";
import { Trace, buildFigure, selectionTrace } from "../figure";
import { paretoFront, plottable, withinBudget } from "../logic";
import type { Section, View } from "../view";

export interface PlotSection extends Section {
  /** `selected` changed: move the selection ring. */
  updateSelection(): void;
  /** `status` changed: the placeholder text shown before the first point. */
  updatePlaceholder(): void;
}

export function plotSection(v: View): PlotSection {
  const { m, root } = v;
  const el = h("div", { class: "nbopt-plot" });
  let plotted = false;
  let base: { data: Trace[]; layout: Record<string, unknown> } | null = null; // the figure without the selection ring
  let drawnSelected: string | null = null;

  const selectedId = () => m.get("selected") || null;

  function draw(ring: Trace | null) {
    if (!base) return;
    Plotly.react(el, ring ? [...base.data, ring] : base.data, base.layout, PLOT_CONFIG);
    if (!plotted) {
      plotted = true;
      (el as any).on("plotly_click", (ev: any) => {
        const id = ev?.points?.[0]?.customdata;
        if (typeof id === "string") v.select(id);
      });
    }
  }

  function updatePlaceholder() {
    if (!plotted) el.textContent = m.get("status") === "idle" ? "" : "Points appear here as candidates finish.";
  }

  function update() {
    const rows = v.rows();
    const axis = v.axis();
    const n = plottable(rows, axis).length;
    root.dataset.points = String(n);
    root.dataset.front = String(paretoFront(rows.filter((r) => withinBudget(r, v.maxDrop())), axis, v.higherIsBetter()).length);
    if (n === 0 && !plotted) {
      updatePlaceholder();
      el.classList.add("nbopt-plot-empty");
      return;
    }
    if (!plotted) {
      el.textContent = "";
      el.classList.remove("nbopt-plot-empty");
    }
    const metric = v.metric();
    const rec = v.recommended();
    base = buildFigure(rows, {
      axis,
      metric,
      higherIsBetter: v.higherIsBetter(),
      maxDrop: v.maxDrop(),
      selectedId: null,
      recommendedId: rec ? rec.id : null,
      dark: isDark(),
    });
    drawnSelected = selectedId();
    draw(selectionTrace(rows, { axis, metric, selectedId: drawnSelected }));
  }

  function updateSelection() {
    const id = selectedId();
    if (!base || id === drawnSelected) return;
    drawnSelected = id;
    draw(selectionTrace(v.rows(), { axis: v.axis(), metric: v.metric(), selectedId: id }));
  }

  const resize = new ResizeObserver(() => {
    if (plotted && el.isConnected && el.clientWidth > 0) Plotly.Plots.resize(el);
  });
  resize.observe(el);

  return {
    nodes: [el],
    update,
    updateSelection,
    updatePlaceholder,
    dispose() {
      resize.disconnect();
      if (plotted) Plotly.purge(el);
    },
  };
}
