// Details of the selected row, with Export for an ok row. Sets data-selected. `export_status` only
// updates the export line: the path typed in stays.
import { h, rebuiltListeners } from "../dom";
import { describe } from "../logic";
import type { Section, View } from "../view";

export interface DetailsSection extends Section {
  /** `export_status` changed. */
  updateExport(): void;
}

export function detailsSection(v: View): DetailsSection {
  const { m, root } = v;
  const listeners = rebuiltListeners();
  const el = h("div", { class: "nbopt-details" });
  let drawn: string | null = null; // what is shown (row and metric), to skip redraws that change nothing
  let exportParts: { id: string; btn: HTMLButtonElement; out: HTMLElement; path: HTMLInputElement } | null = null;

  function updateExport() {
    if (!exportParts) return;
    const { id, btn, out } = exportParts;
    const st = m.get("export_status") ?? {};
    out.textContent = "";
    out.classList.remove("nbopt-error");
    if (st.id === id) {
      if (st.busy) out.textContent = "Exporting…";
      else if (st.error) {
        out.textContent = st.error;
        out.classList.add("nbopt-error");
      } else if (st.path) out.textContent = `Written to ${st.path}`;
    }
    btn.disabled = !!(st.busy && st.id === id);
  }

  function update() {
    const id = m.get("selected");
    const row = v.rows().find((r) => r.id === id);
    root.dataset.selected = row ? row.id : "";
    const key = row ? JSON.stringify([v.metric(), row]) : "";
    if (key === drawn) return;
    drawn = key;
    const typed = exportParts && row && exportParts.id === row.id ? exportParts.path.value : "";
    exportParts = null;
    const on = listeners.next();
    if (!row) {
      el.replaceChildren();
      el.style.display = "none";
      return;
    }
    el.style.display = "";
    const dl = h("table", { class: "nbopt-kv" });
    for (const [k, val] of describe(row, v.metric())) dl.append(h("tr", {}, h("th", {}, k), h("td", {}, val)));
    const close = h("button", { class: "nbopt-close", title: "Clear the selection" }, "×");
    close.addEventListener("click", () => v.select(row.id), on);
    const children: Node[] = [h("div", { class: "nbopt-details-head" }, h("b", {}, row.name), close), dl];
    if (row.status === "ok") {
      const path = h("input", { type: "text", class: "nbopt-export-path", placeholder: "path (empty: a default next to the study store)" });
      path.value = typed;
      const btn = h("button", { class: "nbopt-export" }, "Export");
      const out = h("div", { class: "nbopt-export-status" });
      btn.addEventListener("click", () => m.send({ type: "export", id: row.id, path: path.value.trim() }), on);
      children.push(h("div", { class: "nbopt-export-row" }, path, btn), out);
      exportParts = { id: row.id, btn, out, path };
      updateExport();
    }
    el.replaceChildren(...children);
  }

  return { nodes: [el], update, updateExport, dispose: () => listeners.dispose() };
}
