// The side panel (seed 001): jobs newest first, compact rows patched live from job_update.
import { t, isolated, formatRelative, formatDateTime } from "./text.js";
import { statusIcon, TERMINAL } from "./widgets.js";

const PAGE = 20;
// Rows kept in the list: a 10,000-job batch arriving live must not grow the page by 10,000 rows
// (older ones stay reachable through "Ältere laden" after a reload of the list).
const MAX_ROWS = 200;
const titles = JSON.parse(document.getElementById("job-titles")?.textContent || "{}");

export function setUpPanel() {
  const dialog = document.getElementById("side-panel");
  const list = document.getElementById("panel-list");
  const older = document.getElementById("panel-older");
  const template = document.getElementById("panel-row");
  const count = document.getElementById("panel-active-count");
  if (!dialog || !list) return;
  const jobs = new Map(); // id -> state
  const rows = new Map(); // id -> its row in the list (looked up per update: no DOM search)
  const active = new Set(); // ids of known jobs not ended, counted without a pass over all
  let cursor = null;
  let loadedOnce = false;
  let loading = false;

  function percentOf(job) {
    if (job.percent != null) return job.percent;
    if (job.current != null && job.total) return (job.current * 100) / job.total;
    return null;
  }

  function track(job) {
    if (TERMINAL.has(job.status)) active.delete(job.id); else active.add(job.id);
  }

  function render(job) {
    let row = rows.get(job.id);
    if (!row) {
      row = template.content.firstElementChild.cloneNode(true);
      row.dataset.jobId = job.id;
      rows.set(job.id, row);
    }
    track(job);
    const status = job.status;
    const percent = percentOf(job);
    row.dataset.status = status;
    row.classList.toggle("bg-info/10", status === "running");
    const link = row.querySelector("[data-link]");
    link.href = `/jobs/${encodeURIComponent(job.id)}`;
    row.querySelector("[data-icon]").replaceChildren(statusIcon(status));
    const title = titles[job.jobType] ?? job.jobType ?? job.id;
    row.querySelector("[data-title]").textContent = title;
    const bar = row.querySelector("[data-bar]");
    if (percent != null) { bar.value = percent; }
    else if (TERMINAL.has(status)) { bar.value = status === "completed" ? 100 : 0; }
    else { bar.removeAttribute("value"); } // indeterminate while nothing is known
    bar.hidden = !(percent != null || status === "running");
    const statusText = `${t("status.label")}: ${t(`status.${status}`)}${percent != null ? `, ${Math.round(percent)} %` : ""}`;
    bar.setAttribute("aria-label", statusText);
    const told = job.message || job.phase; // the tool's words, isolated in the label
    const message = told || t(`status.${status}`);
    row.querySelector("[data-message]").textContent = message;
    const time = row.querySelector("[data-relative]");
    if (job.updatedAt) {
      const d = new Date(job.updatedAt);
      time.dateTime = d.toISOString();
      time.textContent = formatRelative(d);
      time.title = formatDateTime(d);
    }
    link.setAttribute("aria-label", `${isolated(title)} – ${statusText} – ${told ? isolated(told) : message}`);
    return row;
  }

  function fromApi(job) {
    return {
      id: job.id, jobType: job.job_type, status: job.status, createdAt: job.created_at,
      updatedAt: job.updated_at, percent: job.progress?.percent ?? null,
      current: job.progress?.current ?? null, total: job.progress?.total ?? null,
      phase: job.progress?.phase ?? null, message: job.progress?.message ?? null,
    };
  }

  function updateCount() {
    count.textContent = String(active.size);
    count.hidden = active.size === 0;
    document.getElementById("panel-empty").hidden = jobs.size > 0;
  }

  async function loadPage(reset) {
    if (loading) return;
    loading = true;
    try {
      const params = new URLSearchParams({ limit: String(PAGE) });
      if (!reset && cursor) params.set("cursor", cursor);
      const response = await fetch(`/api/jobs?${params}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const page = await response.json();
      if (reset) { list.replaceChildren(); jobs.clear(); rows.clear(); active.clear(); }
      for (const item of page.items) {
        const job = fromApi(item);
        jobs.set(job.id, job);
        list.append(render(job));
      }
      cursor = page.next_cursor ?? null;
      const more = Boolean(cursor);
      older.hidden = !more;
      document.getElementById("panel-end").hidden = more || jobs.size === 0;
      loadedOnce = true;
      updateCount();
    } finally {
      loading = false;
    }
  }

  async function patch(update) {
    let job = jobs.get(update.jobId);
    if (!job) {
      // A job we have not seen: it is new, so it goes on top (the list is newest first).
      job = { id: update.jobId, jobType: update.jobType, status: update.status };
      jobs.set(job.id, job);
      list.prepend(render(job));
      while (list.children.length > MAX_ROWS) {
        const dropped = list.lastElementChild;
        rows.delete(dropped.dataset.jobId);
        dropped.remove();
      }
    }
    for (const key of ["status", "phase", "percent", "current", "total", "message", "updatedAt"]) {
      if (update[key] != null) job[key] = update[key];
    }
    if (update.jobType) job.jobType = update.jobType;
    // A job whose row left the list (MAX_ROWS) is still counted, but gets no row again.
    if (rows.has(job.id)) render(job); else track(job);
    updateCount();
  }

  document.getElementById("panel-open")?.addEventListener("click", () => {
    dialog.showModal();
    if (!loadedOnce) loadPage(true);
  });
  older.addEventListener("click", () => loadPage(false));
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a click on the backdrop
  });
  document.addEventListener("job-update", (event) => patch(event.detail));
  document.addEventListener("updates-resync", () => loadPage(true));
  // Keep relative times fresh while the panel is open.
  setInterval(() => {
    if (!dialog.open) return;
    for (const time of list.querySelectorAll("time[datetime]")) time.textContent = formatRelative(new Date(time.dateTime));
  }, 15000);
  loadPage(true);
}
