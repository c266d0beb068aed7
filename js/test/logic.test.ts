import { describe, expect, it } from "vitest";
import {
  Row,
  budgetMax,
  describe as describeRow,
  estimateRemaining,
  formatBytes,
  formatBudget,
  formatDrop,
  formatDuration,
  formatMetric,
  formatMs,
  hoverText,
  paretoFront,
  recommend,
  SensRow,
  formatPercent,
  sensitivityHover,
  sensitivitySummary,
  topSensitive,
  sortRows,
  stepLine,
  withinBudget,
  trainingText,
} from "../src/logic";
import { buildFigure, buildSensitivityFigure } from "../src/figure";

function row(id: string, size: number | null, acc: number | null, extra: Partial<Row> = {}): Row {
  return {
    id,
    name: id,
    backend: "torch",
    recipe: id === "base" ? "baseline" : "int8-dynamic",
    params: {},
    status: "ok",
    size_bytes: size,
    accuracy: acc,
    accuracy_drop: acc === null ? null : Number((0.9 - acc).toFixed(6)),
    latency_ms: size === null ? null : size / 1000,
    peak_memory_mb: 1,
    ...extra,
  };
}

const rows: Row[] = [
  row("base", 400, 0.9),
  row("a", 100, 0.8),
  row("b", 200, 0.88),
  row("c", 250, 0.85), // dominated by b
  row("d", 100, 0.7), // same size as a, worse
  row("e", 50, 0.5),
  row("f", 120, null, { status: "failed", error: "boom" }),
];

describe("paretoFront", () => {
  it("keeps the non-dominated points sorted by x", () => {
    expect(paretoFront(rows, "size", true).map((r) => r.id)).toEqual(["e", "a", "b", "base"]);
  });
  it("follows lower-is-better metrics", () => {
    const mse = [row("x", 10, 0.3), row("y", 20, 0.1), row("z", 30, 0.2)];
    expect(paretoFront(mse, "size", false).map((r) => r.id)).toEqual(["x", "y"]);
  });
  it("uses the chosen axis and skips rows without that number", () => {
    const r = [row("p", 10, 0.5, { latency_ms: 5 }), row("q", 20, 0.9, { latency_ms: 1 }), row("s", 5, 0.1, { latency_ms: null })];
    expect(paretoFront(r, "latency", true).map((x) => x.id)).toEqual(["q"]);
  });
  it("is empty for nothing usable", () => {
    expect(paretoFront([row("f", null, null, { status: "failed" })], "size", true)).toEqual([]);
  });
});

describe("stepLine", () => {
  it("draws a staircase through the front", () => {
    const front = paretoFront(rows, "size", true);
    expect(stepLine(front, "size")).toEqual({
      x: [50, 100, 100, 200, 200, 400, 400],
      y: [0.5, 0.5, 0.8, 0.8, 0.88, 0.88, 0.9],
    });
  });
  it("is one point for a single-point front", () => {
    expect(stepLine([row("a", 1, 0.5)], "size")).toEqual({ x: [1], y: [0.5] });
  });
});

describe("budget and recommendation", () => {
  it("filters by drop; no drop measured counts as none, as in Study.best", () => {
    expect(rows.filter((r) => withinBudget(r, 0.05)).map((r) => r.id)).toEqual(["base", "b", "c", "f"]);
    expect(rows.filter((r) => withinBudget(r, 0.049)).map((r) => r.id)).toEqual(["base", "b", "f"]);
    expect(rows.filter((r) => withinBudget(r, null)).length).toBe(rows.length);
  });
  it("recommends the smallest within the budget", () => {
    expect(recommend(rows, "size", 0.05, true)?.id).toBe("b");
    expect(recommend(rows, "size", 0.1, true)?.id).toBe("a"); // a and d tie on size, a is better
    expect(recommend(rows, "size", null, true)?.id).toBe("e");
    expect(recommend(rows, "size", 0, true)?.id).toBe("base");
    expect(recommend([], "size", 0.1, true)).toBeNull();
  });
  it("sizes the slider to the largest drop", () => {
    expect(budgetMax(rows)).toBeCloseTo(0.4);
    expect(budgetMax([row("a", 1, 0.899)])).toBeCloseTo(0.01);
    expect(budgetMax([row("a", 1, 0.87)])).toBeCloseTo(0.03);
  });
});

describe("sortRows", () => {
  it("sorts numbers both ways with missing values last", () => {
    expect(sortRows(rows, "size_bytes", "asc").map((r) => r.id)).toEqual(["e", "a", "d", "f", "b", "c", "base"]);
    expect(sortRows(rows, "accuracy", "desc").map((r) => r.id)).toEqual(["base", "b", "c", "a", "d", "e", "f"]);
    expect(sortRows(rows, "accuracy", "asc")[rows.length - 1].id).toBe("f");
  });
  it("sorts text naturally and does not mutate", () => {
    const r = [row("n10", 1, 1), row("n9", 1, 1), row("n100", 1, 1)];
    expect(sortRows(r, "name", "asc").map((x) => x.id)).toEqual(["n9", "n10", "n100"]);
    expect(r.map((x) => x.id)).toEqual(["n10", "n9", "n100"]);
  });
});

describe("estimateRemaining", () => {
  it("is unknown before the first candidate", () => {
    expect(estimateRemaining({ total: 5, done: 0, durations: [] })).toBeNull();
  });
  it("uses the mean duration and the running candidate's time", () => {
    expect(estimateRemaining({ total: 5, done: 2, durations: [2, 4] })).toBe(9);
    expect(estimateRemaining({ total: 5, done: 2, durations: [2, 4], runningFor: 2 })).toBe(7);
    expect(estimateRemaining({ total: 2, done: 2, durations: [2, 4], runningFor: 1 })).toBe(0);
  });
});

describe("formatting", () => {
  it("formats sizes, times and durations", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(12_345)).toBe("12.3 kB");
    expect(formatBytes(1_234_567)).toBe("1.23 MB");
    expect(formatBytes(null)).toBe("–");
    expect(formatMs(0.1234)).toBe("0.12 ms");
    expect(formatMs(45.67)).toBe("45.7 ms");
    expect(formatMs(2500)).toBe("2.50 s");
    expect(formatDuration(5.4)).toBe("5 s");
    expect(formatDuration(65)).toBe("1 min 05 s");
    expect(formatDuration(3720)).toBe("1 h 02 min");
  });
  it("formats metrics and drops by kind", () => {
    expect(formatMetric(0.9731, "accuracy")).toBe("97.31 %");
    expect(formatMetric(0.0123456, "mse")).toBe("0.01235");
    expect(formatDrop(0.0053, "accuracy")).toBe("0.53 pp worse");
    expect(formatDrop(-0.002, "accuracy")).toBe("0.20 pp better");
    expect(formatDrop(0, "accuracy")).toBe("same");
    expect(formatDrop(0.00001, "accuracy")).toBe("same");
    expect(formatDrop(0.5, "mse")).toBe("0.5 worse");
    expect(formatBudget(0.015, "accuracy")).toBe("1.50 pp");
  });
  it("describes every column and escapes the hover", () => {
    const r = row("a<b", 100, 0.8, { params: { amount: 0.5 }, notes: "3/3 Linear", threads: 1, custom_col: 7 } as Partial<Row>);
    const cols = describeRow(r, "accuracy").map(([c]) => c);
    expect(cols.slice(0, 4)).toEqual(["name", "backend", "recipe", "params"]);
    expect(cols).toContain("custom_col");
    expect(cols).not.toContain("id");
    const text = hoverText(r, "accuracy");
    expect(text).toContain("<b>a&lt;b</b>");
    expect(text).toContain("params: amount=0.5");
    expect(text).toContain("accuracy: 80.00 %");
    expect(text).toContain("vs baseline: 10.00 pp worse");
    expect(text).toContain("size: 100 B");
    expect(text).toContain("latency (median): 0.10 ms");
    expect(text).toContain("peak memory: 1.00 MB");
    expect(text).toContain("notes: 3/3 Linear");
    expect(text).not.toContain("custom_col");
  });
});

describe("buildFigure", () => {
  it("draws candidates, the baseline, the front and the selection", () => {
    const fig = buildFigure(rows, {
      axis: "size",
      metric: "accuracy",
      higherIsBetter: true,
      maxDrop: null,
      selectedId: "c",
      recommendedId: "e",
    });
    const byName = Object.fromEntries(fig.data.map((t) => [t.name as string, t]));
    expect((byName["candidates"].customdata as string[]).sort()).toEqual(["a", "b", "c", "d", "e"]);
    expect(byName["baseline"].customdata).toEqual(["base"]);
    expect(byName["Pareto front"].x).toEqual([50, 100, 100, 200, 200, 400, 400]);
    expect(byName["selected"].customdata).toEqual(["c"]);
    expect(byName["recommended"].customdata).toEqual(["e"]);
  });
  it("re-filters the front with the budget", () => {
    const fig = buildFigure(rows, { axis: "size", metric: "accuracy", higherIsBetter: true, maxDrop: 0.05, selectedId: null, recommendedId: null });
    const front = fig.data.find((t) => t.name === "Pareto front")!;
    expect(front.x).toEqual([200, 400, 400]);
    expect(fig.data.some((t) => t.name === "selected")).toBe(false);
  });
});

describe("layer sensitivity", () => {
  const sens: SensRow[] = Array.from({ length: 20 }, (_, i) => ({
    node: `/conv${i}`,
    op_type: i % 2 ? "MatMul" : "Conv",
    params: 1000 * (i + 1),
    rel_error: 0.2 / (i + 1),
    rank: i + 1,
  }));
  const broken: SensRow = { node: "/gather", op_type: "Gather", params: 64, rel_error: null, rank: 21 };

  it("topSensitive keeps the n most sensitive measured layers, by rank", () => {
    const shuffled = [broken, ...sens].reverse();
    const top = topSensitive(shuffled, 15);
    expect(top.map((r) => r.rank)).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    expect(topSensitive([broken], 15)).toEqual([]);
    expect(topSensitive(undefined)).toEqual([]);
    expect(topSensitive(sens, 3).map((r) => r.node)).toEqual(["/conv0", "/conv1", "/conv2"]);
  });
  it("formats relative errors as percentages", () => {
    expect(formatPercent(0.2)).toBe("20.0 %");
    expect(formatPercent(0.0123)).toBe("1.23 %");
    expect(formatPercent(0.0000456)).toBe("0.0046 %");
    expect(formatPercent(0)).toBe("0 %");
    expect(formatPercent(null)).toBe("–");
  });
  it("hover says op type, rank and error; the summary names the worst layer", () => {
    const text = sensitivityHover(sens[1], 21);
    expect(text).toContain("<b>/conv1</b>");
    expect(text).toContain("MatMul · rank 2 of 21");
    expect(text).toContain("relative output error: 10.0 %");
    expect(text).toContain("weights: 2,000");
    expect(sensitivityHover({ ...broken, node: "<x>" }, 1)).toContain("&lt;x&gt;");
    expect(sensitivitySummary([broken, ...sens])).toBe("21 layers; most sensitive: /conv0 (Conv, 20.0 %)");
    expect(sensitivitySummary([])).toBe("");
  });
  it("buildSensitivityFigure draws the top 15 as horizontal bars, most sensitive on top", () => {
    const fig = buildSensitivityFigure([...sens, broken], { top: 15 });
    expect(fig.data).toHaveLength(1);
    const bar = fig.data[0];
    expect(bar.type).toBe("bar");
    expect(bar.orientation).toBe("h");
    expect(bar.y).toEqual(sens.slice(0, 15).map((r) => r.node));
    expect(bar.x).toEqual(sens.slice(0, 15).map((r) => r.rel_error));
    expect((bar.text as string[])[0]).toContain("rank 1 of 21");
    expect((fig.layout.yaxis as any).autorange).toBe("reversed");
    expect((fig.layout.xaxis as any).tickformat).toContain("%");
  });
});

describe("training-based candidates", () => {
  it("get their own marker and show their training time", () => {
    const trained = row("t", 60, 0.85, { train_seconds: 42.5, student: "MobileNetV3-style, width 0.5" } as Partial<Row>);
    const fig = buildFigure([...rows, trained], { axis: "size", metric: "accuracy", higherIsBetter: true, maxDrop: null, selectedId: null, recommendedId: null });
    const cands = fig.data.find((t) => t.name === "candidates")!;
    const ids = cands.customdata as string[];
    const symbols = (cands.marker as { symbol: string[] }).symbol;
    expect(symbols[ids.indexOf("t")]).toBe("diamond");
    expect(symbols[ids.indexOf("a")]).toBe("circle");
    const text = hoverText(trained, "accuracy");
    expect(text).toContain("training: 43 s");
    expect(text).toContain("student: MobileNetV3-style, width 0.5");
    expect(describeRow(trained, "accuracy").map(([c]) => c)).toContain("train_seconds");
  });
  it("describe training progress in one line", () => {
    expect(trainingText({ phase: "qat", epoch: 2, epochs: 5, loss: 0.31234, seconds: 12 })).toBe("qat epoch 2/5, loss 0.312, 12 s");
    expect(trainingText({ epoch: 1, epochs: 3, loss: 1.5, holdout_loss: 1.25 })).toBe("training epoch 1/3, loss 1.5, held-out 1.25");
    expect(trainingText({})).toBe("");
    expect(trainingText(null)).toBe("");
  });
});
