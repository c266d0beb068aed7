// The drop's interval, per-class accuracy and the bytes breakdown: pure formatting (logic.ts).
import { describe, expect, it } from "vitest";
import {
  Row,
  byDtypeLine,
  describe as describeRow,
  dropIsNoise,
  dropTitle,
  formatClassRow,
  formatDropInterval,
  formatRowDrop,
  formatShape,
  formatSignedDrop,
  hoverText,
  largestTensors,
  perClassRows,
  rowCell,
  segmentsLine,
  sizeNotes,
} from "../src/logic";

function row(extra: Partial<Row> = {}): Row {
  return { id: "1", name: "onnx:int8-static", backend: "onnx", recipe: "int8-static", params: {}, status: "ok", accuracy: 0.9, accuracy_drop: 0.0019, ...extra };
}

describe("the drop's interval", () => {
  it("signs the ends: positive = worse, in pp for percent metrics", () => {
    expect(formatSignedDrop(0.007, "accuracy")).toBe("+0.70");
    expect(formatSignedDrop(-0.0041, "accuracy")).toBe("\u22120.41");
    expect(formatSignedDrop(0, "accuracy")).toBe("0.00");
    expect(formatSignedDrop(-0.00001, "accuracy")).toBe("0.00");
    expect(formatSignedDrop(-0.0049, "mse")).toBe("\u22120.0049");
    expect(formatSignedDrop(null, "mse")).toBe("–");
  });
  it("formats [low, high], empty when not measured", () => {
    expect(formatDropInterval(-0.0041, 0.007, "accuracy")).toBe("[\u22120.41, +0.70]");
    expect(formatDropInterval(0.0123, 0.0456, "mae")).toBe("[+0.0123, +0.0456]");
    expect(formatDropInterval(null, 0.1, "accuracy")).toBe("");
    expect(formatDropInterval(undefined, undefined, "accuracy")).toBe("");
  });
  it("puts the interval after the drop, as nbopt.stats.drop_text does", () => {
    const r = row({ accuracy_drop_low: -0.0041, accuracy_drop_high: 0.007 });
    expect(formatRowDrop(r, "accuracy")).toBe("0.19 pp worse [\u22120.41, +0.70]");
    expect(formatRowDrop(row(), "accuracy")).toBe("0.19 pp worse");
    expect(formatRowDrop(row({ accuracy_drop: -0.02, accuracy_drop_low: -0.031, accuracy_drop_high: -0.0049 }), "mse")).toBe(
      "0.02 better [\u22120.031, \u22120.0049]",
    );
    expect(formatRowDrop(row({ accuracy_drop: null, accuracy_drop_low: 0, accuracy_drop_high: 0 }), "accuracy")).toBe("–");
    expect(rowCell(r, "accuracy_drop", "accuracy")).toBe("0.19 pp worse [\u22120.41, +0.70]");
    expect(rowCell(r, "accuracy", "accuracy")).toBe("90.00 %");
  });
  it("says whether the drop may be noise", () => {
    expect(dropIsNoise(row({ accuracy_drop_low: -0.0041, accuracy_drop_high: 0.007 }))).toBe(true);
    expect(dropIsNoise(row({ accuracy_drop_low: 0.08, accuracy_drop_high: 0.13 }))).toBe(false);
    expect(dropIsNoise(row())).toBeNull();
    expect(dropIsNoise(row({ recipe: "baseline", accuracy_drop: 0, accuracy_drop_low: 0, accuracy_drop_high: 0 }))).toBeNull();
    expect(dropTitle(row({ accuracy_drop_low: -0.0041, accuracy_drop_high: 0.007 }))).toContain("may be noise");
    expect(dropTitle(row({ accuracy_drop_low: 0.08, accuracy_drop_high: 0.13 }))).toContain("real");
    expect(dropTitle(row())).toBe("");
  });
  it("shows in the hover and the details, and the raw ends and blocks do not repeat there", () => {
    const r = row({ accuracy_drop_low: -0.0041, accuracy_drop_high: 0.007, per_class: [{ class: 3 }], size_breakdown: { total_bytes: 1 } });
    expect(hoverText(r, "accuracy")).toContain("vs baseline (95 % interval): 0.19 pp worse [\u22120.41, +0.70]");
    expect(hoverText(row(), "accuracy")).toContain("vs baseline: 0.19 pp worse");
    const d = describeRow(r, "accuracy");
    expect(d).toContainEqual(["vs baseline (95 % interval)", "0.19 pp worse [\u22120.41, +0.70]"]);
    const cols = d.map(([c]) => c);
    for (const c of ["accuracy_drop_low", "accuracy_drop_high", "per_class", "size_breakdown"]) expect(cols).not.toContain(c);
  });
});

describe("per class", () => {
  const pc = [
    { class: "0", n: 54, accuracy: 1, baseline: 1, drop: 0 },
    { class: "7", n: 50, accuracy: 0.88, baseline: 0.98, drop: 0.1 },
    { class: "bad" },
    { class: 3, n: 52, accuracy: 0.95, baseline: 0.96, drop: 0.01 },
    null,
  ] as Array<Record<string, unknown>>;
  it("lists the biggest loss first, missing drops last, the top n", () => {
    expect(perClassRows(pc).map((r) => r.cls)).toEqual(["7", "3", "0", "bad"]);
    expect(perClassRows(pc, 2).map((r) => r.cls)).toEqual(["7", "3"]);
    expect(perClassRows(null)).toEqual([]);
    expect(perClassRows(Array.from({ length: 30 }, (_, k) => ({ class: k, drop: k / 100 }))).length).toBe(10);
  });
  it("formats class, n, accuracy, baseline and drop", () => {
    expect(formatClassRow(perClassRows(pc)[0])).toEqual(["7", "50", "88.00 %", "98.00 %", "10.00 pp worse"]);
    expect(formatClassRow(perClassRows(pc)[3])).toEqual(["bad", "–", "–", "–", "–"]);
  });
});

describe("where the bytes go", () => {
  const sb = {
    total_bytes: 1_560_000,
    by_dtype: { int8: 300_000, other: 0, fp32: 1_200_000, fp16: 0, int4: 0, uint8: 60_000 },
    largest: [
      { name: "fc1.weight", dtype: "int8", shape: [512, 256], bytes: 131_072 },
      { name: "conv.weight", dtype: "fp32", shape: [64, 3, 3, 3], bytes: 6912 },
      { name: "big", dtype: "fp32", shape: [1000, 300], bytes: 1_200_000 },
      { name: "scale", dtype: "fp32", shape: [], bytes: 4 },
      { name: "b1", dtype: "fp32", shape: [10], bytes: 40 },
      { name: "b2", dtype: "fp32", shape: [8], bytes: 32 },
    ],
    segments: { graph: 30_000, weights: 1_500_000 },
    notes: ["int4 weights are packed two per byte", 7],
  };
  it("puts the dtypes on one line, usual ones first, empty ones out", () => {
    expect(byDtypeLine(sb)).toBe("fp32 1.20 MB · int8 300 kB · uint8 60.0 kB");
    expect(byDtypeLine(null)).toBe("");
    expect(byDtypeLine({})).toBe("");
  });
  it("lists the largest tensors, largest first, top 5", () => {
    const t = largestTensors(sb);
    expect(t).toHaveLength(5);
    expect(t[0]).toEqual(["big", "fp32", "1000×300", "1.20 MB"]);
    expect(t[1]).toEqual(["fc1.weight", "int8", "512×256", "131 kB"]);
    expect(t.map((x) => x[0])).not.toContain("scale");
    expect(largestTensors({ largest: "nope" } as unknown as Record<string, unknown>)).toEqual([]);
  });
  it("formats shapes, segments and notes", () => {
    expect(formatShape([64, 3, 3, 3])).toBe("64×3×3×3");
    expect(formatShape([])).toBe("scalar");
    expect(formatShape("dynamic")).toBe("dynamic");
    expect(segmentsLine(sb)).toBe("weights 1.50 MB · graph 30.0 kB");
    expect(sizeNotes(sb)).toEqual(["int4 weights are packed two per byte"]);
    expect(sizeNotes({})).toEqual([]);
  });
});
