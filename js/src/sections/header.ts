// Header: title, status line, progress bar, Stop button and the message line. Sets data-status,
// data-done and data-total on the panel. While a sweep runs, a 1 s clock advances the elapsed time.
import { h } from "../dom";
import { estimateRemaining, formatDuration, trainingText } from "../logic";
import type { Section, View } from "../view";

export interface HeaderSection extends Section {
  /** `elapsed_s` changed: restart the local clock that runs on from it. */
  resetClock(): void;
}

export function headerSection(v: View): HeaderSection {
  const { m, root } = v;
  const ac = new AbortController();
  const title = h("span", { class: "nbopt-title" }, "nbopt");
  const statusEl = h("span", { class: "nbopt-status" });
  const stopBtn = h("button", { class: "nbopt-stop", title: "End the sweep after the running candidate; keeps everything measured" }, "Stop");
  const header = h("div", { class: "nbopt-header" }, title, statusEl, stopBtn);
  const bar = h("div", { class: "nbopt-bar" });
  const progress = h("div", { class: "nbopt-progress" }, bar);
  const messageEl = h("div", { class: "nbopt-message" });
  let elapsedAt = performance.now();

  stopBtn.addEventListener("click", () => m.send({ type: "stop" }), { signal: ac.signal });

  function update() {
    const st = m.get("status");
    const total = m.get("total");
    const done = m.get("done");
    const active = v.active();
    const runningFor = (performance.now() - elapsedAt) / 1000;
    const elapsed = m.get("elapsed_s") + (active ? runningFor : 0);
    const parts: string[] = [];
    if (st === "idle") parts.push(m.get("mode") === "setup" ? "choose recipes and backends, then Run" : "starting…");
    else parts.push(`${done}/${total} done`);
    if (active && m.get("running")) parts.push(`running ${m.get("running")}`);
    const training = m.get("training");
    if (active && training && training.name === m.get("running")) parts.push(trainingText(training));
    if (active && m.get("search")) parts.push(m.get("search"));
    if (st !== "idle") parts.push(`elapsed ${formatDuration(elapsed)}`);
    if (active) {
      const eta = estimateRemaining({ total, done, durations: m.get("durations") ?? [], runningFor: m.get("running") ? runningFor : 0 });
      parts.push(eta === null ? "time left: after the first candidate" : `about ${formatDuration(eta)} left`);
    }
    if (st === "stopping") parts.push("stopping after the running candidate");
    if (st === "stopped") parts.push("stopped: everything finished is kept");
    if (st === "done") parts.push("finished");
    if (st === "error") parts.push("the sweep ended with an error");
    if (m.get("result_name") && (st === "done" || st === "stopped")) parts.push(`study stored in \`${m.get("result_name")}\``);
    statusEl.textContent = parts.join(" · ");
    root.dataset.status = st;
    root.dataset.done = String(done);
    root.dataset.total = String(total);
    bar.style.width = total > 0 ? `${Math.min(100, (100 * done) / total)}%` : "0%";
    progress.style.display = st === "idle" ? "none" : "";
    stopBtn.style.display = active ? "" : "none";
    stopBtn.disabled = st === "stopping";
    const msg = m.get("message") || (m.get("waiting") && active ? "The next cell waits for this sweep; interrupt the kernel to stop it." : "");
    messageEl.textContent = msg;
    messageEl.style.display = msg ? "" : "none";
    messageEl.classList.toggle("nbopt-error", st === "error");
  }

  const tick = setInterval(() => {
    if (v.active()) update();
  }, 1000);

  return {
    nodes: [header, progress, messageEl],
    update,
    resetClock() {
      elapsedAt = performance.now();
      update();
    },
    dispose() {
      clearInterval(tick);
      ac.abort();
    },
  };
}
