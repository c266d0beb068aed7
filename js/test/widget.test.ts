// @vitest-environment happy-dom
// The view's wiring: each trait redraws only the sections that show it. Plotly is replaced by a mock.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Row } from "../src/logic";

const plotly = vi.hoisted(() => ({
  react: vi.fn((el: any, _data: unknown[], _layout?: unknown, _config?: unknown) => {
    el.on ??= () => {};
  }),
  purge: vi.fn(),
  Plots: { resize: vi.fn() },
}));
vi.mock("plotly.js-basic-dist-min", () => ({ default: plotly }));

import widget from "../src/widget";

class FakeModel {
  handlers = new Map<string, Set<() => void>>();
  sent: unknown[] = [];
  constructor(public attrs: Record<string, unknown>) {}
  get(k: string) {
    return this.attrs[k];
  }
  set(k: string, v: unknown) {
    this.attrs[k] = v;
    for (const f of this.handlers.get(`change:${k}`) ?? []) f();
  }
  on(ev: string, f: () => void) {
    if (!this.handlers.has(ev)) this.handlers.set(ev, new Set());
    this.handlers.get(ev)!.add(f);
  }
  off(ev: string, f: () => void) {
    this.handlers.get(ev)?.delete(f);
  }
  listenerCount() {
    return [...this.handlers.values()].reduce((n, s) => n + s.size, 0);
  }
  save_changes() {}
  send(msg: unknown) {
    this.sent.push(msg);
  }
}

function row(id: string, name: string, size: number, acc: number, extra: Partial<Row> = {}): Row {
  return { id, name, backend: "onnx", recipe: name === "baseline" ? "baseline" : name, params: {}, status: "ok", size_bytes: size, accuracy: acc, accuracy_drop: 0.994 - acc, latency_ms: 1, peak_memory_mb: 1, ...extra };
}

const ROWS = [row("0", "baseline", 400, 0.994), row("1", "fp16", 200, 0.994), row("2", "int8-dynamic", 100, 0.99), row("3", "int8-static", 0, 0, { status: "failed", error: "boom", size_bytes: null, accuracy: null })];

function attrs(): Record<string, unknown> {
  return {
    mode: "sweep", status: "done", message: "", metric: "accuracy", higher_is_better: true, total: 4, done: 4,
    running: "", elapsed_s: 12, durations: [3, 3, 3, 3], rows: ROWS, x_axis: "size", max_drop: null, selected: "",
    export_status: {}, available_recipes: [], available_backends: [], recipes: [], backends: [], waiting: false,
    result_name: "study", sensitivity: [], sensitivity_note: "",
  };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

let el: HTMLElement;
let model: FakeModel;
let teardown: () => void;

beforeEach(() => {
  plotly.react.mockClear();
  plotly.purge.mockClear();
  el = document.createElement("div");
  document.body.append(el);
  model = new FakeModel(attrs());
  teardown = widget.render({ model, el } as any) as () => void;
});
afterEach(() => {
  teardown?.();
  el.remove();
});

const panel = () => el.querySelector<HTMLElement>(".nbopt-panel")!;
const tbody = () => el.querySelector(".nbopt-table tbody")!;

describe("render", () => {
  it("draws every section once, with the data-* attributes the browser tests read", () => {
    const d = panel().dataset;
    expect(d).toMatchObject({ status: "done", done: "4", total: "4", points: "3", failed: "1", sensitivity: "0" });
    expect(panel().getAttribute("data-selected")).toBe(""); // (happy-dom leaves empty values out of {...dataset})
    expect(d.front).toBeDefined();
    expect(d.recommended).toBe("2");
    expect(plotly.react).toHaveBeenCalledTimes(1);
    expect(el.querySelectorAll(".nbopt-table tbody tr")).toHaveLength(4);
    expect(el.querySelector(".nbopt-failed")!.textContent).toContain("boom");
    expect(el.querySelector<HTMLElement>(".nbopt-details")!.style.display).toBe("none");
    const order = [...panel().children].map((c) => c.className.split(" ")[0]);
    expect(order).toEqual(["nbopt-header", "nbopt-progress", "nbopt-message", "nbopt-setup", "nbopt-toolbar", "nbopt-plot", "nbopt-details", "nbopt-failed", "nbopt-sens", "nbopt-table-wrap"]);
  });

  it("a selection moves the ring and the row mark only: the table is not rebuilt", async () => {
    const body = tbody();
    const toolbar = el.querySelector(".nbopt-recommended")!.innerHTML;
    const failed = el.querySelector(".nbopt-failed")!.firstChild;
    model.set("selected", "1");
    await settle();
    expect(tbody()).toBe(body);
    expect(el.querySelectorAll("tr.nbopt-selected")).toHaveLength(1);
    expect(el.querySelector("tr.nbopt-selected")!.getAttribute("data-id")).toBe("1");
    expect(panel().dataset.selected).toBe("1");
    expect(el.querySelector(".nbopt-details-head")!.textContent).toContain("fp16");
    expect(el.querySelector(".nbopt-failed")!.firstChild).toBe(failed);
    expect(el.querySelector(".nbopt-recommended")!.innerHTML).toBe(toolbar);
    expect(plotly.react).toHaveBeenCalledTimes(2);
    const data = plotly.react.mock.calls[1][1] as any[];
    expect(data[data.length - 1]).toMatchObject({ name: "selected", customdata: ["1"] });
    // the rest of the figure is the one drawn before (same objects)
    expect(data.slice(0, -1)).toEqual(plotly.react.mock.calls[0][1]);
    expect(data[0]).toBe((plotly.react.mock.calls[0][1] as any[])[0]);
  });

  it("the drop shows its interval; the details show per-class accuracy and where the bytes go", async () => {
    const extra = {
      accuracy_drop: 0.0019, accuracy_drop_low: -0.0041, accuracy_drop_high: 0.007,
      per_class: [{ class: "7", n: 50, accuracy: 0.88, baseline: 0.98, drop: 0.1 }, { class: "1", n: 54, accuracy: 1, baseline: 1, drop: 0 }],
      size_breakdown: { total_bytes: 1_500_000, by_dtype: { fp32: 1_200_000, int8: 300_000 }, largest: [{ name: "fc.weight", dtype: "int8", shape: [512, 256], bytes: 131_072 }], segments: { weights: 1_500_000 }, notes: ["packed"] },
    };
    model.set("rows", [ROWS[0], row("1", "fp16", 200, 0.994, extra), ...ROWS.slice(2)]);
    await settle();
    const cell = el.querySelector<HTMLElement>(".nbopt-table tbody tr[data-id='1'] td:nth-child(5)")!;
    expect(cell.textContent).toBe("0.19 pp worse [\u22120.41, +0.70]");
    expect(cell.classList.contains("nbopt-drop-noise")).toBe(true);
    expect(cell.title).toContain("may be noise");
    model.set("selected", "1");
    await settle();
    const cells = [...el.querySelectorAll(".nbopt-perclass tr")].map((tr) => [...tr.children].map((c) => c.textContent));
    expect(cells).toEqual([["class", "n", "accuracy", "baseline", "drop"], ["7", "50", "88.00 %", "98.00 %", "10.00 pp worse"], ["1", "54", "100.00 %", "100.00 %", "same"]]);
    const bytes = el.querySelector(".nbopt-bytes")!;
    expect(bytes.querySelector(".nbopt-subhead")!.textContent).toBe("Where the bytes go (1.50 MB)");
    expect(bytes.querySelector(".nbopt-bytes-dtypes")!.textContent).toBe("fp32 1.20 MB · int8 300 kB");
    expect(bytes.textContent).toContain("512×256");
    expect(bytes.querySelector(".nbopt-bytes-segments")!.textContent).toBe("Segments: weights 1.50 MB");
    expect(bytes.querySelector(".nbopt-bytes-notes")!.textContent).toBe("packed");
    expect(el.querySelector(".nbopt-export")).not.toBeNull();
    model.set("selected", "2"); // a row without them: no blocks
    await settle();
    expect(el.querySelector(".nbopt-perclass")).toBeNull();
    expect(el.querySelector(".nbopt-bytes")).toBeNull();
  });

  it("export_status updates the export line only, keeping the typed path", async () => {
    model.set("selected", "1");
    await settle();
    const path = el.querySelector<HTMLInputElement>(".nbopt-export-path")!;
    path.value = "out/model.onnx";
    el.querySelector<HTMLButtonElement>(".nbopt-export")!.click();
    expect(model.sent).toEqual([{ type: "export", id: "1", path: "out/model.onnx" }]);
    const calls = plotly.react.mock.calls.length;
    const body = tbody();
    model.set("export_status", { id: "1", busy: true });
    await settle();
    expect(el.querySelector(".nbopt-export-status")!.textContent).toBe("Exporting…");
    expect(el.querySelector<HTMLButtonElement>(".nbopt-export")!.disabled).toBe(true);
    model.set("export_status", { id: "1", path: "/tmp/x.onnx" });
    await settle();
    expect(el.querySelector(".nbopt-export-status")!.textContent).toBe("Written to /tmp/x.onnx");
    expect(el.querySelector(".nbopt-export-path")).toBe(path);
    expect(path.value).toBe("out/model.onnx");
    expect(plotly.react.mock.calls.length).toBe(calls);
    expect(tbody()).toBe(body);
  });

  it("traits set together redraw each section once", async () => {
    const more = [...ROWS, row("4", "int8-static-entropy", 90, 0.98)];
    model.set("rows", more);
    model.set("done", 5);
    model.set("total", 5);
    await settle();
    expect(plotly.react).toHaveBeenCalledTimes(2);
    expect(panel().dataset).toMatchObject({ done: "5", points: "4" });
    expect(el.querySelectorAll(".nbopt-table tbody tr")).toHaveLength(5);
  });

  it("status-only traits leave the plot and the table alone", async () => {
    const body = tbody();
    model.set("status", "running");
    model.set("running", "onnx:fp16");
    model.set("elapsed_s", 20);
    await settle();
    expect(plotly.react).toHaveBeenCalledTimes(1);
    expect(tbody()).toBe(body);
    expect(el.querySelector(".nbopt-status")!.textContent).toContain("running onnx:fp16");
    expect(el.querySelector<HTMLElement>(".nbopt-stop")!.style.display).toBe("");
  });

  it("the table sorts and selects by click", async () => {
    el.querySelector<HTMLElement>(".nbopt-table th[data-column=size_bytes]")!.click();
    const ids = () => [...el.querySelectorAll(".nbopt-table tbody tr")].map((r) => r.getAttribute("data-id"));
    expect(ids()).toEqual(["2", "1", "0", "3"]);
    el.querySelector<HTMLElement>(".nbopt-table th[data-column=size_bytes]")!.click();
    expect(ids()).toEqual(["0", "1", "2", "3"]);
    el.querySelector<HTMLElement>(".nbopt-table tbody tr[data-id='2'] td")!.click();
    expect(model.get("selected")).toBe("2");
    await settle();
    expect(el.querySelector("tr.nbopt-selected")!.getAttribute("data-id")).toBe("2");
    el.querySelector<HTMLElement>(".nbopt-close")!.click(); // clears the selection
    expect(model.get("selected")).toBe("");
    await settle();
    expect(el.querySelector<HTMLElement>(".nbopt-details")!.style.display).toBe("none");
    expect(el.querySelectorAll("tr.nbopt-selected")).toHaveLength(0);
    expect(ids()).toEqual(["0", "1", "2", "3"]); // the sort is kept
  });

  it("the axis and the budget write back and redraw the recommendation", async () => {
    const cb = el.querySelector<HTMLInputElement>(".nbopt-budget-on")!;
    cb.checked = true;
    cb.dispatchEvent(new Event("change"));
    expect(model.get("max_drop")).toBe(0.01);
    await settle();
    expect(panel().dataset.recommended).toBe("2");
    expect(el.querySelector(".nbopt-budget-text")!.textContent).toBe("1.00 pp");
    expect(plotly.react).toHaveBeenCalledTimes(2);
    model.set("max_drop", 0);
    await settle();
    expect(panel().dataset.recommended).toBe("1");
    expect(el.querySelector("tr.nbopt-rec")!.getAttribute("data-id")).toBe("1");
  });

  it("setup mode: check boxes write the choice back, keep their nodes, and lock while running", async () => {
    model.set("mode", "setup");
    model.set("status", "idle");
    model.set("available_recipes", ["fp16", "int8-dynamic"]);
    model.set("available_backends", ["onnx"]);
    await settle();
    expect(el.querySelector<HTMLElement>(".nbopt-setup")!.style.display).toBe("");
    const boxes = () => [...el.querySelectorAll<HTMLInputElement>(".nbopt-recipes input")];
    const first = boxes()[1];
    first.checked = true;
    first.dispatchEvent(new Event("change"));
    expect(model.get("recipes")).toEqual(["int8-dynamic"]);
    await settle();
    expect(boxes()[1]).toBe(first);
    expect(boxes().map((b) => b.checked)).toEqual([false, true]);
    el.querySelector<HTMLButtonElement>(".nbopt-run")!.click();
    expect(model.sent).toEqual([{ type: "run" }]);
    model.set("status", "running");
    await settle();
    expect(boxes().every((b) => b.disabled)).toBe(true);
    expect(el.querySelector<HTMLButtonElement>(".nbopt-run")!.disabled).toBe(true);
    expect(el.querySelector<HTMLElement>(".nbopt-progress")!.style.display).toBe("");
  });

  it("teardown removes every listener and purges the plot", async () => {
    expect(model.listenerCount()).toBeGreaterThan(0);
    teardown();
    teardown = () => {};
    expect(model.listenerCount()).toBe(0);
    expect(plotly.purge).toHaveBeenCalledTimes(1);
    model.set("rows", []);
    await settle();
    expect(plotly.react).toHaveBeenCalledTimes(1);
  });
});
