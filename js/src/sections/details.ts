// Details of the selected row, with Export for an ok row. Sets data-selected. `export_status` only
// updates the export line: the path typed in stays.
import { h, rebuiltListeners } from "../dom";
import { Row, byDtypeLine, describe, formatBytes, formatClassRow, largestTensors, perClassRows, segmentsLine, sizeNotes } from "../logic";
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
    const perClass = perClassBlock(row);
    if (perClass) children.push(perClass);
    const bytes = bytesBlock(row);
    if (bytes) children.push(bytes);
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

/** A small table: a header row and rows of text cells. */
function miniTable(head: string[], rows: string[][]): HTMLTableElement {
  const t = h("table", { class: "nbopt-mini" }, h("tr", {}, ...head.map((c) => h("th", {}, c))));
  for (const r of rows) t.append(h("tr", {}, ...r.map((c) => h("td", {}, c))));
  return t;
}

/** Per-class accuracy against the baseline, the classes that lost the most first (top 10); null without any. */
function perClassBlock(row: Row): HTMLElement | null {
  const all = Array.isArray(row.per_class) ? row.per_class.length : 0;
  const rows = perClassRows(row.per_class, 10);
  if (!rows.length) return null;
  const head = `Per class: accuracy against the baseline, biggest loss first${all > rows.length ? ` (${rows.length} of ${all})` : ""}`;
  return h(
    "div",
    { class: "nbopt-perclass" },
    h("div", { class: "nbopt-subhead" }, head),
    miniTable(["class", "n", "accuracy", "baseline", "drop"], rows.map(formatClassRow)),
  );
}

/** Where the artifact's bytes go: by dtype, the largest tensors, the segments, notes; null without it. */
function bytesBlock(row: Row): HTMLElement | null {
  const sb = row.size_breakdown;
  if (!sb || typeof sb !== "object") return null;
  const total = formatBytes(sb["total_bytes"] as number);
  const parts: Node[] = [h("div", { class: "nbopt-subhead" }, total === "–" ? "Where the bytes go" : `Where the bytes go (${total})`)];
  const dtypes = byDtypeLine(sb);
  if (dtypes) parts.push(h("div", { class: "nbopt-bytes-dtypes" }, dtypes));
  const largest = largestTensors(sb, 5);
  if (largest.length) parts.push(miniTable(["largest tensors", "dtype", "shape", "size"], largest));
  const segments = segmentsLine(sb);
  if (segments) parts.push(h("div", { class: "nbopt-bytes-segments" }, `Segments: ${segments}`));
  const notes = sizeNotes(sb);
  if (notes.length) parts.push(h("ul", { class: "nbopt-bytes-notes" }, ...notes.map((n) => h("li", {}, n))));
  return h("div", { class: "nbopt-bytes" }, ...parts);
}
