// Layer sensitivity (onnx backend): a collapsible section, its chart drawn only while open. Sets
// data-sensitivity.
// @ts-ignore -- the dist bundle has no types
import Plotly from "plotly.js-basic-dist-min";
import { PLOT_CONFIG, h, isDark } from "../dom";
import { buildSensitivityFigure } from "../figure";
import { sensitivitySummary } from "../logic";
import type { Section, View } from "../view";

export function sensitivitySection(v: View): Section {
  const { m, root } = v;
  const ac = new AbortController();
  const summary = h("span", { class: "nbopt-sens-summary" });
  const note = h("div", { class: "nbopt-sens-note" });
  const plot = h("div", { class: "nbopt-sens-plot" });
  const sens = h(
    "details",
    { class: "nbopt-sens" },
    h("summary", {}, h("b", {}, "Layer sensitivity "), summary),
    h("div", { class: "nbopt-hint" }, "How far the model's output moves when only that layer is quantized to int8 (most sensitive first): the layers to keep in float if accuracy breaks."),
    note,
    plot,
  );
  let plotted = false;

  function update() {
    const data = m.get("sensitivity") ?? [];
    const text = m.get("sensitivity_note") ?? "";
    root.dataset.sensitivity = String(data.length);
    sens.style.display = data.length || text ? "" : "none";
    summary.textContent = data.length ? `(${sensitivitySummary(data)})` : "";
    note.textContent = text;
    note.style.display = text ? "" : "none";
    note.classList.toggle("nbopt-error", text.startsWith("Layer sensitivity failed"));
    if (!data.length || !sens.open) {
      if (plotted && !data.length) {
        Plotly.purge(plot);
        plotted = false;
      }
      return;
    }
    const fig = buildSensitivityFigure(data, { top: 15, dark: isDark() });
    Plotly.react(plot, fig.data, fig.layout, PLOT_CONFIG);
    plotted = true;
  }

  sens.addEventListener("toggle", update, { signal: ac.signal });
  const resize = new ResizeObserver(() => {
    if (plotted && sens.open && plot.isConnected && plot.clientWidth > 0) Plotly.Plots.resize(plot);
  });
  resize.observe(plot);

  return {
    nodes: [sens],
    update,
    dispose() {
      ac.abort();
      resize.disconnect();
      if (plotted) Plotly.purge(plot);
    },
  };
}
