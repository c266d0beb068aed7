// Small DOM helpers shared by the panel's sections.

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

export function isDark(): boolean {
  const b = document.body;
  if (b.dataset.jpThemeLight === "false") return true;
  if (b.classList.contains("vscode-dark") || b.classList.contains("vscode-high-contrast")) return true;
  return false;
}

/** Plotly's config for both charts. */
export const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

/**
 * Listeners of content that is rebuilt: `next()` drops those added for the previous content and
 * returns the options to add the new ones with; `dispose()` drops all.
 */
export function rebuiltListeners() {
  let ac = new AbortController();
  return {
    next(): AddEventListenerOptions {
      ac.abort();
      ac = new AbortController();
      return { signal: ac.signal };
    },
    dispose() {
      ac.abort();
    },
  };
}
