// The nbopt panel: an anywidget view. The widget's traits are the single source of truth; this view
// draws them and writes back only what the user changes (axis, budget, selection, recipe choice).
// Commands that make the kernel work (run, stop, export) are sent as messages; their results come
// back as traits. The view never runs a backend.
//
// The panel is made of sections (src/sections/), each with its own elements, update() and dispose().
// `render` creates them and connects each trait to the sections that draw it, nothing more.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { h } from "./dom";
import { detailsSection } from "./sections/details";
import { failedSection } from "./sections/failed";
import { headerSection } from "./sections/header";
import { plotSection } from "./sections/plot";
import { sensitivitySection } from "./sections/sensitivity";
import { setupSection } from "./sections/setup";
import { tableSection } from "./sections/table";
import { toolbarSection } from "./sections/toolbar";
import { Model, Trait, makeView } from "./view";

export type { ExportStatus, Model } from "./view";

function render({ model, el }: RenderProps<Model>) {
  const m = model as unknown as AnyModel<Model>;
  const root = h("div", { class: "nbopt-panel" });
  el.append(root);
  const v = makeView(m, root);

  const header = headerSection(v);
  const setup = setupSection(v);
  const toolbar = toolbarSection(v);
  const plot = plotSection(v);
  const details = detailsSection(v);
  const failed = failedSection(v);
  const sens = sensitivitySection(v);
  const table = tableSection(v);
  const sections = [header, setup, toolbar, plot, details, failed, sens, table];
  for (const s of sections) root.append(...s.nodes);

  // Which sections draw which trait. The recommendation (toolbar text, plot ring, table row) follows
  // rows, x_axis, max_drop, higher_is_better.
  const recommendation = [toolbar.update, plot.update, table.updateMarks];
  const wiring: [Trait, (() => void)[]][] = [
    ["rows", [toolbar.update, plot.update, details.update, failed.update, table.update]],
    ["x_axis", recommendation],
    ["max_drop", recommendation],
    ["higher_is_better", recommendation],
    ["metric", [toolbar.update, plot.update, details.update, table.update]],
    ["selected", [plot.updateSelection, details.update, table.updateMarks]],
    ["export_status", [details.updateExport]],
    ["status", [header.update, setup.update, plot.updatePlaceholder]],
    ["mode", [header.update, setup.update]],
    ["done", [header.update]],
    ["total", [header.update]],
    ["running", [header.update]],
    ["training", [header.update]],
    ["search", [header.update]],
    ["message", [header.update]],
    ["waiting", [header.update]],
    ["result_name", [header.update]],
    ["durations", [header.update]],
    ["elapsed_s", [header.resetClock]],
    ["available_recipes", [setup.update]],
    ["available_backends", [setup.update]],
    ["recipes", [setup.update]],
    ["backends", [setup.update]],
    ["sensitivity", [sens.update]],
    ["sensitivity_note", [sens.update]],
  ];

  // Traits that change together (one kernel message sets rows and done) draw each section once:
  // the updates are collected and run once the current event has been handled.
  const pending = new Set<() => void>();
  let queued = false;
  let disposed = false;
  // full redraws before the partial ones they include (a partial one after them finds nothing to do)
  const order = [
    header.resetClock, header.update, setup.update, toolbar.update, plot.update, plot.updateSelection,
    plot.updatePlaceholder, details.update, details.updateExport, failed.update, table.update, table.updateMarks,
    sens.update,
  ];
  const rank = (fn: () => void) => (order.includes(fn) ? order.indexOf(fn) : order.length);
  const flush = () => {
    queued = false;
    if (disposed) return;
    const due = [...pending].sort((a, b) => rank(a) - rank(b));
    pending.clear();
    for (const fn of due) fn();
  };
  const listeners = wiring.map(([trait, fns]) => {
    const fn = () => {
      for (const f of fns) pending.add(f);
      if (!queued) {
        queued = true;
        queueMicrotask(flush);
      }
    };
    const ev = `change:${trait}` as const;
    m.on(ev, fn);
    return () => m.off(ev, fn);
  });

  for (const s of sections) s.update();

  return () => {
    disposed = true;
    for (const off of listeners) off();
    for (const s of sections) s.dispose();
  };
}

export default { render };
