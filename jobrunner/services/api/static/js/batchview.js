// A batch's status badge, progress and counters, drawn from its JSON (GET /api/batches, and the
// batch_update events of /api/jobs/stream): one function for the first load and every update.
import { t, formatNumber } from "./text.js";
import { statusBadge } from "./widgets.js";

const COUNTS = { pending: "pending_jobs", running: "processing_jobs", completed: "completed_jobs", failed: "failed_jobs", cancelled: "cancelled_jobs" };

export function endedOf(batch) {
  return (batch.completed_jobs ?? 0) + (batch.failed_jobs ?? 0) + (batch.cancelled_jobs ?? 0);
}

/** Patch every [data-status-slot], [data-batch-progress] and [data-count] under ``root``. */
export function drawBatch(root, batch) {
  root.dataset.status = batch.status;
  for (const slot of root.querySelectorAll("[data-status-slot]")) slot.replaceChildren(statusBadge(batch.status));
  const percent = Math.max(0, Math.min(100, Number(batch.progress_percent) || 0));
  const ended = endedOf(batch);
  const total = batch.total_jobs ?? 0;
  for (const block of root.querySelectorAll("[data-batch-progress]")) {
    const bar = block.querySelector("progress");
    bar.max = 100;
    bar.value = percent;
    bar.setAttribute("aria-label", `${t("status.label")}: ${t(`status.${batch.status}`)}, ${Math.round(percent)} %`);
    block.querySelector("[data-progress-text]").textContent = `${Math.round(percent)} %`;
  }
  for (const [kind, field] of Object.entries(COUNTS)) {
    for (const el of root.querySelectorAll(`[data-count="${kind}"]`)) el.textContent = formatNumber(batch[field] ?? 0);
  }
  for (const el of root.querySelectorAll('[data-field="ended"]')) {
    el.textContent = t("count.total", { done: formatNumber(ended), total: formatNumber(total) });
  }
}
