// What the panel's sections share: the model's traits (typed), reads derived from them, and the
// writes the view makes back (selection, axis, budget, recipe choice).
import type { AnyModel } from "@anywidget/types";
import { AXES, AxisName, Row, SensRow, TrainingProgress, recommend } from "./logic";

export interface ExportStatus {
  id?: string;
  path?: string;
  error?: string;
  busy?: boolean;
}

export interface Model {
  mode: string;
  status: string;
  message: string;
  metric: string;
  higher_is_better: boolean;
  total: number;
  done: number;
  running: string;
  training: TrainingProgress;
  search: string; // search="auto": the rung each backend is on, and why
  elapsed_s: number;
  durations: number[];
  rows: Row[];
  x_axis: AxisName;
  max_drop: number | null;
  selected: string;
  export_status: ExportStatus;
  available_recipes: string[];
  available_backends: string[];
  recipes: string[];
  backends: string[];
  waiting: boolean;
  result_name: string;
  sensitivity: SensRow[];
  sensitivity_note: string;
}

export type Trait = keyof Model;

export interface View {
  m: AnyModel<Model>;
  /** The panel's root element: the sections write their data-* attributes on it. */
  root: HTMLElement;
  rows(): Row[];
  axis(): AxisName;
  higherIsBetter(): boolean;
  maxDrop(): number | null;
  metric(): string;
  /** A sweep is running or stopping. */
  active(): boolean;
  recommended(): Row | null;
  /** Select a row, or clear the selection when it is the selected one. */
  select(id: string): void;
  /** Write a trait back to the kernel. */
  save<K extends Trait>(key: K, value: Model[K]): void;
}

/** One part of the panel: its elements (in page order), a redraw from the traits, and a teardown. */
export interface Section {
  nodes: HTMLElement[];
  update(): void;
  dispose(): void;
}

export function makeView(m: AnyModel<Model>, root: HTMLElement): View {
  const v: View = {
    m,
    root,
    rows: () => m.get("rows") ?? [],
    axis: () => (m.get("x_axis") in AXES ? m.get("x_axis") : "size"),
    higherIsBetter: () => m.get("higher_is_better") !== false,
    maxDrop: () => m.get("max_drop") ?? null,
    metric: () => m.get("metric"),
    active: () => ["running", "stopping"].includes(m.get("status")),
    recommended: () => recommend(v.rows(), v.axis(), v.maxDrop(), v.higherIsBetter()),
    select(id) {
      v.save("selected", m.get("selected") === id ? "" : id);
    },
    save(key, value) {
      m.set(key, value);
      m.save_changes();
    },
  };
  return v;
}
