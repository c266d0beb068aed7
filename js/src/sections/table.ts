// The results table: every row, sortable by a click on a header (view-local state); a click on a row
// selects it. A new selection or recommendation only moves the row classes; rows / metric rebuild it.
import { h } from "../dom";
import { SortDir, dropIsNoise, dropTitle, field, isBaseline, rowCell, sortRows } from "../logic";
import type { Section, View } from "../view";

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
  ["train_seconds", "training"],
  ["notes", "notes"],
];

export interface TableSection extends Section {
  /** `selected` or the recommendation changed: move the nbopt-selected / nbopt-rec classes. */
  updateMarks(): void;
}

export function tableSection(v: View): TableSection {
  const ac = new AbortController();
  const table = h("table", { class: "nbopt-table" });
  const wrap = h("div", { class: "nbopt-table-wrap" }, table);
  let sort: { column: string; dir: SortDir } = { column: "", dir: "asc" };

  // one delegated listener: the rows and headers are rebuilt often
  table.addEventListener(
    "click",
    (ev) => {
      const target = ev.target as Element;
      const th = target.closest("thead th[data-column]");
      if (th) {
        const col = th.getAttribute("data-column")!;
        sort = sort.column === col ? { column: col, dir: sort.dir === "asc" ? "desc" : "asc" } : { column: col, dir: "asc" };
        update();
        return;
      }
      const tr = target.closest("tbody tr[data-id]");
      if (tr) v.select(tr.getAttribute("data-id")!);
    },
    { signal: ac.signal },
  );

  function updateMarks() {
    const sel = v.m.get("selected");
    const rec = v.recommended();
    for (const tr of table.querySelectorAll<HTMLTableRowElement>("tbody tr[data-id]")) {
      const id = tr.getAttribute("data-id");
      tr.classList.toggle("nbopt-selected", id === sel);
      tr.classList.toggle("nbopt-rec", !!rec && id === rec.id);
    }
  }

  function update() {
    const metric = v.metric();
    const all = v.rows();
    const shown = sort.column ? sortRows(all, sort.column, sort.dir) : all;
    const head = h("tr");
    for (const [col, label] of TABLE_COLUMNS) {
      const arrow = sort.column === col ? (sort.dir === "asc" ? " ▲" : " ▼") : "";
      head.append(h("th", { "data-column": col, title: "Sort" }, (col === "accuracy" ? metric : label) + arrow));
    }
    const body = h("tbody");
    for (const r of shown) {
      const tr = h("tr", { "data-id": r.id });
      if (r.status !== "ok") tr.classList.add("nbopt-row-failed");
      for (const [col] of TABLE_COLUMNS) {
        let text = rowCell(r, col, metric);
        if (col === "name" && isBaseline(r)) text += " ★";
        const title = col === "notes" || col === "name" ? String(field(r, col) ?? "") : col === "accuracy_drop" ? dropTitle(r) : "";
        const td = h("td", { title }, text);
        // a drop whose interval holds 0 may be noise: drawn muted
        if (col === "accuracy_drop" && dropIsNoise(r)) td.classList.add("nbopt-drop-noise");
        tr.append(td);
      }
      body.append(tr);
    }
    table.replaceChildren(h("thead", {}, head), body);
    updateMarks();
  }

  return { nodes: [wrap], update, updateMarks, dispose: () => ac.abort() };
}
