// Multi-select on /jobs: tick running cards and recent rows (or all on the page), then restart,
// cancel or archive them with one confirmation, each job through its own action endpoint.
// The ticks survive the sections' live refreshes; a job that left the page leaves the selection.
import { t, announce, formatNumber, writeHeaders } from "./text.js";
import { confirmAction } from "./confirm.js";

const selected = new Set();
const PARALLEL = 4;

const REQUESTS = {
  restart: (id) => ({ url: `/api/jobs/${encodeURIComponent(id)}/restart`, method: "POST" }),
  cancel: (id) => ({ url: `/api/jobs/${encodeURIComponent(id)}`, method: "DELETE" }),
  archive: (id) => ({ url: `/api/jobs/${encodeURIComponent(id)}/archive`, method: "POST" }),
};

function boxes() {
  return [...document.querySelectorAll("input[data-select]")];
}

function sync() {
  const onPage = new Set(boxes().map((b) => b.dataset.select));
  for (const id of [...selected]) if (!onPage.has(id)) selected.delete(id);
  for (const box of boxes()) box.checked = selected.has(box.dataset.select);
  const all = document.querySelector("[data-select-all]");
  if (all) {
    all.checked = onPage.size > 0 && selected.size === onPage.size;
    all.indeterminate = selected.size > 0 && selected.size < onPage.size;
  }
  document.getElementById("selection-count").textContent = t("select.count", { count: formatNumber(selected.size) });
  // Hidden rather than disabled while nothing is ticked: nothing greyed out to read.
  for (const button of document.querySelectorAll("[data-selection-action]")) button.hidden = selected.size === 0;
}

async function runAll(action, ids) {
  const results = [];
  const queue = [...ids];
  const worker = async () => {
    while (queue.length) {
      const id = queue.shift();
      const { url, method } = REQUESTS[action](id);
      const response = await fetch(url, { method, credentials: "same-origin", headers: writeHeaders() }).catch(() => null);
      let message = null;
      if (!response?.ok) {
        message = response ? ((await response.json().catch(() => ({})))?.error?.message ?? `HTTP ${response.status}`) : t("conn.lost");
      }
      results.push({ id, ok: Boolean(response?.ok), message });
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, ids.length) }, worker));
  return results;
}

export function setUpJobSelection({ onChanged }) {
  const bar = document.getElementById("selection-bar");
  if (!bar) return;
  document.getElementById("main").addEventListener("change", (event) => {
    const box = event.target;
    if (box.matches("[data-select-all]")) {
      for (const b of boxes()) if (box.checked) selected.add(b.dataset.select); else selected.delete(b.dataset.select);
    } else if (box.matches("input[data-select]")) {
      if (box.checked) selected.add(box.dataset.select); else selected.delete(box.dataset.select);
    } else {
      return;
    }
    sync();
  });
  bar.addEventListener("click", (event) => {
    const button = event.target.closest("[data-selection-action]");
    if (!button || !selected.size) return;
    const action = button.dataset.selectionAction;
    const ids = [...selected];
    const count = formatNumber(ids.length);
    confirmAction({
      title: t(`select.confirm.${action}`, { count }),
      text: t(`select.confirm.${action}_text`),
      run: async () => {
        const results = await runAll(action, ids);
        const ok = results.filter((r) => r.ok).length;
        const failed = results.filter((r) => !r.ok);
        // Nothing happened: keep the dialog open with the reason.
        if (!ok && failed.length) return failed[0].message;
        const summary = t("select.result", { ok: formatNumber(ok), failed: formatNumber(failed.length) });
        document.getElementById("selection-result").textContent = failed.length ? `${summary} (${failed[0].message})` : summary;
        announce(summary);
        for (const r of results) if (r.ok) selected.delete(r.id);
        sync();
        onChanged?.();
        return null;
      },
    });
  });
  document.body.addEventListener("htmx:afterSettle", sync);
  sync();
}
