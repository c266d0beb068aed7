// Failed or skipped candidates with their error; a click selects one. Sets data-failed.
import { h, rebuiltListeners } from "../dom";
import { formatParams } from "../logic";
import type { Section, View } from "../view";

export function failedSection(v: View): Section {
  const listeners = rebuiltListeners();
  const el = h("div", { class: "nbopt-failed" });
  let drawn: string | null = null;

  function update() {
    const bad = v.rows().filter((r) => r.status !== "ok");
    v.root.dataset.failed = String(bad.length);
    const key = JSON.stringify(bad.map((r) => [r.id, r.name, r.backend, r.params, r.status, r.error]));
    if (key === drawn) return;
    drawn = key;
    const on = listeners.next();
    if (bad.length === 0) {
      el.replaceChildren();
      el.style.display = "none";
      return;
    }
    el.style.display = "";
    const ul = h("ul");
    for (const r of bad) {
      const params = formatParams(r.params);
      const li = h("li", {}, h("b", {}, `${r.name} `), `(${r.backend}${params ? ", " + params : ""}) ${r.status}: `, h("span", { class: "nbopt-error-text" }, r.error || "no error text"));
      li.addEventListener("click", () => v.select(r.id), on);
      ul.append(li);
    }
    el.replaceChildren(h("b", {}, `Failed or skipped (${bad.length})`), ul);
  }

  return { nodes: [el], update, dispose: () => listeners.dispose() };
}
