// Small pieces several screens share: status badges, progress bars, cancel confirmation.
import { t, announce, writeHeaders } from "./text.js";

const BADGE = { pending: "badge-ghost", running: "badge-info", completed: "badge-success", failed: "badge-error", cancelled: "badge-warning" };
export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

export function statusIcon(status) {
  const template = document.getElementById("status-icons");
  const icon = template?.content.querySelector(`[data-for="${status}"]`);
  return icon ? icon.cloneNode(true) : document.createElement("span");
}

export function statusBadge(status) {
  const badge = document.createElement("span");
  badge.className = `badge ${BADGE[status] ?? "badge-ghost"} gap-1 whitespace-nowrap`;
  badge.dataset.statusBadge = "";
  badge.dataset.status = status;
  badge.setAttribute("role", "img");
  badge.setAttribute("aria-label", `${t("status.label")}: ${t(`status.${status}`)}`);
  const icon = statusIcon(status);
  icon.removeAttribute("class");
  const label = document.createElement("span");
  label.setAttribute("aria-hidden", "true");
  label.textContent = t(`status.${status}`);
  badge.append(icon, label);
  return badge;
}

export function replaceBadges(root, status) {
  for (const old of root.querySelectorAll("[data-status-badge]")) old.replaceWith(statusBadge(status));
}

/** Update a [data-progress] block from a progress event {current, total, percent}. */
export function setProgress(block, progress, status) {
  if (!block || !progress) return;
  const bar = block.querySelector("progress");
  const text = block.querySelector("[data-progress-text]");
  const { current, total } = progress;
  let percent = progress.percent;
  if (percent == null && current != null && total) percent = (current * 100) / total;
  if (total) {
    bar.max = total;
    bar.value = current ?? 0;
    text.textContent = `${current ?? 0} / ${total}`;
  } else if (percent != null) {
    bar.max = 100;
    bar.value = percent;
    text.textContent = `${Math.round(percent)} %`;
  } else {
    return;
  }
  block.hidden = false;
  const label = `${t("status.label")}: ${t(`status.${status ?? "running"}`)}${percent != null ? `, ${Math.round(percent)} %` : ""}`;
  bar.setAttribute("aria-label", label);
}

/** The confirmation dialog behind every Cancel button; resolves once the API accepted. */
export function setUpCancel(root, onCancelled) {
  const dialog = document.getElementById("cancel-dialog");
  if (!dialog) return;
  let target = null;
  root.addEventListener("click", (event) => {
    const button = event.target.closest("[data-cancel]");
    if (!button || button.disabled) return;
    target = button;
    dialog.querySelector("[data-cancel-name]").textContent = button.dataset.title || "";
    dialog.querySelector("[data-cancel-error]").hidden = true;
    dialog.showModal();
  });
  dialog.querySelector("[data-cancel-confirm]").addEventListener("click", async () => {
    if (!target) return;
    const jobId = target.dataset.cancel;
    const error = dialog.querySelector("[data-cancel-error]");
    const response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}`, {
      method: "DELETE", credentials: "same-origin", headers: writeHeaders(),
    }).catch(() => null);
    if (response && (response.ok || response.status === 409)) {
      dialog.close();
      markCancelRequested(jobId);
      announce(t("job.cancel_requested"));
      onCancelled?.(jobId);
      target.focus();
    } else {
      let message = t("log.unavailable");
      try { message = (await response.json()).error.message; } catch { /* keep the default */ }
      error.textContent = message;
      error.hidden = false;
    }
  });
}

export function markCancelRequested(jobId) {
  for (const button of document.querySelectorAll(`[data-cancel="${CSS.escape(jobId)}"]`)) {
    button.disabled = true;
    const last = button.lastChild;
    if (last && last.nodeType === Node.TEXT_NODE) last.textContent = t("job.cancel_requested");
  }
}

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

function tabbable(dialog) {
  const all = [...dialog.querySelectorAll(FOCUSABLE)].filter((el) => el.getClientRects().length > 0 && !el.closest("[hidden]"));
  // Only the checked radio of a group takes part in the Tab order.
  return all.filter((el) => !(el.type === "radio" && !el.checked && all.some((o) => o !== el && o.type === "radio" && o.name === el.name && o.checked)));
}

/** Every [data-close-dialog] closes its <dialog>; Tab and Shift+Tab stay inside an open modal. */
export function setUpDialogs() {
  document.addEventListener("click", (event) => {
    const closer = event.target.closest("[data-close-dialog]");
    if (closer) closer.closest("dialog")?.close();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") return;
    const dialog = [...document.querySelectorAll("dialog[open]")].pop();
    if (!dialog) return;
    const items = tabbable(dialog);
    if (!items.length) return;
    const first = items[0];
    const last = items[items.length - 1];
    const inside = dialog.contains(document.activeElement);
    if (event.shiftKey && (document.activeElement === first || !inside)) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && (document.activeElement === last || !inside)) {
      event.preventDefault();
      first.focus();
    }
  });
}
