import { describe, expect, it } from "vitest";
import { buildFigure } from "../src/figure";
import { Row, fitRange } from "../src/logic";

function row(id: string, size: number, acc: number, extra: Partial<Row> = {}): Row {
  return { id, name: id, backend: "onnx", recipe: id === "base" ? "baseline" : "int8-dynamic", params: {}, status: "ok", size_bytes: size, accuracy: acc, ...extra };
}

const span = (r: [number, number]) => r[1] - r[0];
const contains = (r: [number, number], v: number) => r[0] < v && v < r[1];

describe("fitRange", () => {
  it("all points equal at 0.994: a narrow range around them, not 0..150 %", () => {
    const r = fitRange([0.994, 0.994, 0.994], { fraction: true })!;
    expect(contains(r, 0.994)).toBe(true);
    expect(span(r)).toBeLessThan(0.05);
    expect(span(r)).toBeGreaterThan(0);
    expect(r[0]).toBeGreaterThan(0.9);
    expect(r[1]).toBeLessThan(1.05);
  });
  it("contains every point, with some padding, and does not force 0 in", () => {
    const values = [0.9812, 0.994, 0.9901, 0.9733];
    const r = fitRange(values, { pad: 0.08, fraction: true })!;
    for (const v of values) expect(contains(r, v)).toBe(true);
    expect(r[0]).toBeGreaterThan(0.9);
    const pad = (0.994 - 0.9733) * 0.08;
    expect(r[0]).toBeCloseTo(0.9733 - pad, 9);
    expect(r[1]).toBeCloseTo(0.994 + pad, 9);
  });
  it("works for lower-is-better metrics (mse), with a relative minimum span", () => {
    const mse = [0.0123, 0.0131, 0.0502];
    const r = fitRange(mse)!;
    for (const v of mse) expect(contains(r, v)).toBe(true);
    expect(r[0]).toBeGreaterThan(0);
    const same = fitRange([0.0123, 0.0123])!;
    expect(contains(same, 0.0123)).toBe(true);
    expect(span(same)).toBeLessThan(0.001);
    expect(same[0]).toBeGreaterThan(0.01);
    const zero = fitRange([0, 0])!;
    expect(contains(zero, 0)).toBe(true);
  });
  it("fits large x values (bytes) and ignores missing values", () => {
    const r = fitRange([400_000, 400_000, null, undefined, NaN])!;
    expect(contains(r, 400_000)).toBe(true);
    expect(r[0]).toBeGreaterThan(350_000);
    expect(fitRange([])).toBeNull();
    expect(fitRange([null, NaN])).toBeNull();
  });
});

describe("buildFigure axis ranges", () => {
  const opts = { axis: "size" as const, metric: "accuracy", higherIsBetter: true, maxDrop: null, selectedId: null, recommendedId: null };

  it("fits the y axis to points all at 99.4 % (and the x axis to one size)", () => {
    const rows = [row("base", 400_000, 0.994), row("a", 200_000, 0.994), row("b", 100_000, 0.994)];
    const layout = buildFigure(rows, opts).layout as any;
    const y = layout.yaxis.range as [number, number];
    expect(contains(y, 0.994)).toBe(true);
    expect(span(y)).toBeLessThan(0.05);
    expect(layout.yaxis.autorangeoptions).toEqual({ minallowed: y[0], maxallowed: y[1] });
    const x = layout.xaxis.range as [number, number];
    for (const r of rows) expect(contains(x, r.size_bytes as number)).toBe(true);
    expect(x[0]).toBeGreaterThan(0);
    const one = (buildFigure([row("base", 400_000, 0.994)], opts).layout as any).xaxis.range as [number, number];
    expect(contains(one, 400_000)).toBe(true);
    expect(span(one)).toBeLessThan(40_000);
  });
  it("contains every plotted point, out-of-budget ones too; lower-is-better metrics", () => {
    const rows = [row("base", 400, 0.01), row("a", 100, 0.05, { accuracy_drop: 0.04 }), row("b", 200, 0.02, { accuracy_drop: 0.01 })];
    const layout = buildFigure(rows, { ...opts, metric: "mse", higherIsBetter: false, maxDrop: 0.02 }).layout as any;
    for (const r of rows) {
      expect(contains(layout.yaxis.range, r.accuracy as number)).toBe(true);
      expect(contains(layout.xaxis.range, r.size_bytes as number)).toBe(true);
    }
    expect(layout.yaxis.range[0]).toBeGreaterThan(0);
  });
  it("leaves the axes to plotly when nothing is plotted", () => {
    const layout = buildFigure([row("f", 1, 0.5, { status: "failed" })], opts).layout as any;
    expect(layout.yaxis.range).toBeUndefined();
    expect(layout.xaxis.range).toBeUndefined();
  });
});
