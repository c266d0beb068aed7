// Toolbar: x axis choice, accuracy budget (max drop) and the recommendation. Sets data-recommended.
import { h } from "../dom";
import { AXES, AxisName, budgetMax, escapeHtml, formatBudget, formatCell, isBaseline, plottable } from "../logic";
import type { Section, View } from "../view";

export function toolbarSection(v: View): Section {
  const { m, root } = v;
  const ac = new AbortController();
  const on = { signal: ac.signal };
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

  axisSel.addEventListener("change", () => v.save("x_axis", axisSel.value as AxisName), on);
  budgetOn.addEventListener("change", () => v.save("max_drop", budgetOn.checked ? Math.min(0.01, budgetMax(v.rows())) : null), on);
  budget.addEventListener("input", () => v.save("max_drop", Number(budget.value)), on);
  recEl.addEventListener(
    "click",
    (ev) => {
      const rec = v.recommended();
      if ((ev.target as HTMLElement).classList.contains("nbopt-rec-link") && rec) {
        ev.preventDefault();
        v.select(rec.id);
      }
    },
    on,
  );

  function update() {
    const rows = v.rows();
    const axis = v.axis();
    const metric = v.metric();
    axisSel.value = axis;
    const md = v.maxDrop();
    const max = Math.max(budgetMax(rows), md ?? 0);
    budget.max = String(max);
    budgetOn.checked = md !== null;
    budget.disabled = !budgetOn.checked;
    if (md !== null) budget.value = String(Math.min(md, max));
    budgetText.textContent = md !== null ? formatBudget(md, metric) : "off";
    const rec = v.recommended();
    if (plottable(rows, axis).length === 0) recEl.textContent = "";
    else if (!rec) recEl.textContent = "No candidate within the budget.";
    else
      recEl.innerHTML =
        `Recommended: <a href="#" class="nbopt-rec-link">${escapeHtml(rec.name)}</a> ` +
        `(${escapeHtml(formatCell(AXES[axis].key, rec[AXES[axis].key], metric))}, ` +
        `${escapeHtml(formatCell("accuracy", rec.accuracy, metric))})` +
        (isBaseline(rec) ? " – nothing smaller stays within the budget" : "");
    root.dataset.recommended = rec ? rec.id : "";
  }

  return { nodes: [toolbar], update, dispose: () => ac.abort() };
}
