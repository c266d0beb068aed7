// Setup (nbopt.Panel before a run): recipe and backend check boxes, and the Run button. Shown in
// "setup" mode only; the choices are disabled while a sweep runs.
import { h } from "../dom";
import type { Section, View } from "../view";

type ChoiceKey = "recipes" | "backends";

export function setupSection(v: View): Section {
  const { m } = v;
  const ac = new AbortController();
  const recipeBox = h("div", { class: "nbopt-choices nbopt-recipes" });
  const backendBox = h("div", { class: "nbopt-choices nbopt-backends" });
  const runBtn = h("button", { class: "nbopt-run" }, "Run");
  const setup = h(
    "div",
    { class: "nbopt-setup" },
    h("div", {}, h("b", {}, "Recipes "), h("span", { class: "nbopt-hint" }, "(none checked: the default sweep)")),
    recipeBox,
    h("div", {}, h("b", {}, "Backends "), h("span", { class: "nbopt-hint" }, "(none checked: the model's own)")),
    backendBox,
    runBtn,
  );
  runBtn.addEventListener("click", () => m.send({ type: "run" }), { signal: ac.signal });

  const available = { recipes: "available_recipes", backends: "available_backends" } as const;
  const drawn: Record<ChoiceKey, string | null> = { recipes: null, backends: null };

  /** The check boxes, rebuilt only when the names on offer change; then checked / disabled synced. */
  function box(el: HTMLElement, key: ChoiceKey) {
    const all = m.get(available[key]) ?? [];
    const sig = JSON.stringify(all);
    if (drawn[key] !== sig) {
      drawn[key] = sig;
      el.replaceChildren(
        ...all.map((name) => {
          const cb = h("input", { type: "checkbox", value: name });
          cb.addEventListener(
            "change",
            () => {
              const cur = new Set(m.get(key) ?? []);
              if (cb.checked) cur.add(name);
              else cur.delete(name);
              v.save(key, (m.get(available[key]) ?? []).filter((n) => cur.has(n)));
            },
            { signal: ac.signal },
          );
          return h("label", { class: "nbopt-choice" }, cb, ` ${name}`);
        }),
      );
    }
    const chosen = m.get(key) ?? [];
    for (const cb of el.querySelectorAll<HTMLInputElement>("input[type=checkbox]")) {
      cb.checked = chosen.includes(cb.value);
      cb.disabled = v.active();
    }
  }

  function update() {
    setup.style.display = m.get("mode") === "setup" ? "" : "none";
    runBtn.disabled = v.active();
    box(recipeBox, "recipes");
    box(backendBox, "backends");
  }

  return { nodes: [setup], update, dispose: () => ac.abort() };
}
