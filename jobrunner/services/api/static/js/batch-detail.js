// /batches/{id}: the aggregates (live from batch_update), the jobs of the batch page by page
// (a button and scrolling both load the next page), and the actions, each confirmed first.
import { t, announce, isolated, withoutBidiControls, formatNumber, formatDateTime, formatDuration, writeHeaders } from "./text.js";
import { drawBatch } from "./batchview.js";
import { statusBadge } from "./widgets.js";
import { confirmAction, problemOf } from "./confirm.js";

const JOBS_PAGE = 100;
const MAX_LIMIT = 500; // GET /api/batches/{id}'s most jobs in one answer
const titles = JSON.parse(document.getElementById("job-titles")?.textContent || "{}");

let batchId = "";
let jobsCursor = null;
let loadingJobs = false;
let jobsDone = false;
let pendingShown = 0;
let reloadTimer = 0;

function setText(root, field, value) {
  const el = root.querySelector(`[data-field="${field}"]`);
  if (el) el.textContent = value ?? "–";
}

const when = (iso) => (iso ? formatDateTime(new Date(iso)) : "–");

function drawFacts(batch) {
  const card = document.getElementById("batch-card");
  setText(card, "name", batch.name || batch.id);
  setText(card, "created_at", when(batch.created_at));
  setText(card, "started_at", when(batch.started_at));
  setText(card, "finished_at", when(batch.finished_at));
  setText(card, "requested_by", batch.requested_by || "–");
  setText(card, "job_types", (batch.job_types ?? []).join(", ") || "–");
  setText(card, "failed_reason", batch.failed_reason || "–");
  card.querySelector('[data-field="archived"]').hidden = !batch.archived;
  card.querySelector('[data-batch-action="archive"]').hidden = Boolean(batch.archived);
  card.querySelector('[data-batch-action="unarchive"]').hidden = !batch.archived;
  // Only a batch still going can be failed (the API answers 409 BATCH_FINISHED otherwise).
  card.querySelector('[data-batch-action="fail"]').hidden = !["pending", "running"].includes(batch.status);
  drawBatch(card, batch);
  document.title = `${isolated(batch.name || batch.id)} · ${t("app.title")}`;
}

function jobRow(job) {
  const row = document.getElementById("batch-job-row").content.firstElementChild.cloneNode(true);
  fillJobRow(row, job);
  return row;
}

function fillJobRow(row, job) {
  row.dataset.jobId = job.id;
  row.dataset.place = String(job.batch_index);
  row.dataset.status = job.status;
  row.querySelector("[data-index]").textContent = job.batch_index != null ? formatNumber(job.batch_index + 1) : "–";
  row.querySelector("[data-title]").textContent = titles[job.job_type] ?? job.job_type;
  row.querySelector("[data-type]").textContent = job.job_type;
  row.querySelector("[data-status-slot]").replaceChildren(statusBadge(job.status));
  row.querySelector("[data-attempt]").textContent = formatNumber(job.attempt ?? 1);
  row.querySelector("[data-started]").textContent = job.started_at ? formatDateTime(new Date(job.started_at)) : "–";
  row.querySelector("[data-duration]").textContent = job.duration_seconds != null ? formatDuration(job.duration_seconds) : "–";
  const link = row.querySelector("[data-link]");
  link.href = `/jobs/${encodeURIComponent(job.id)}`;
  link.setAttribute("aria-label", `${t("job.logs")}: ${isolated(titles[job.job_type] ?? job.job_type)} ${job.batch_index != null ? job.batch_index + 1 : ""}`.trim());
}

async function fetchBatch(params) {
  const response = await fetch(`/api/batches/${encodeURIComponent(batchId)}?${params}`, { credentials: "same-origin" });
  if (response.status === 404) return { missing: true };
  if (!response.ok) throw new Error(String(response.status));
  return { batch: await response.json() };
}

function showJobs(page, append) {
  const body = document.getElementById("batch-jobs-body");
  if (append) {
    body.append(...(page.items ?? []).map(jobRow));
  } else {
    // Read again: each place's row is patched where it is (a new attempt takes its job's
    // place), so focus and scroll stay; places not shown yet are added.
    const places = new Map([...body.children].map((row) => [row.dataset.place, row]));
    for (const job of page.items ?? []) {
      const row = places.get(String(job.batch_index));
      if (row) fillJobRow(row, job); else body.append(jobRow(job));
    }
  }
  jobsCursor = page.next_cursor ?? null;
  jobsDone = !jobsCursor;
  document.getElementById("batch-jobs-none").hidden = body.children.length > 0;
  document.getElementById("batch-jobs-more").hidden = jobsDone;
  document.getElementById("batch-jobs-end").hidden = !jobsDone || body.children.length === 0;
}

/** The batch with its jobs read again (after an action, or live: attempts changed), as many
 * as are shown up to one answer's most, so a reload takes away no page one loaded. */
function loadAll() {
  return serial(readAll);
}

// Reads one after another: a live re-read and "more jobs" each see what the other did.
let chain = Promise.resolve();
function serial(read) {
  chain = chain.then(read, read);
  return chain;
}

async function readAll() {
  const root = document.getElementById("batch-detail");
  const shown = document.getElementById("batch-jobs-body").children.length;
  let found;
  try {
    found = await fetchBatch(new URLSearchParams({ jobs_limit: String(Math.min(MAX_LIMIT, Math.max(JOBS_PAGE, shown))) }));
  } catch {
    document.getElementById("batch-error").hidden = false;
    return;
  }
  root.removeAttribute("aria-busy");
  document.getElementById("batch-error").hidden = true;
  if (found.missing) {
    document.getElementById("batch-missing").hidden = false;
    return;
  }
  document.getElementById("batch-card").hidden = false;
  document.getElementById("batch-jobs").hidden = false;
  pendingShown = found.batch.pending_jobs ?? 0;
  drawFacts(found.batch);
  showJobs(found.batch.jobs ?? {}, false);
}

function moreJobs() {
  if (loadingJobs || jobsDone || !jobsCursor) return;
  loadingJobs = true;
  serial(readMore);
}

async function readMore() {
  if (jobsDone || !jobsCursor) { loadingJobs = false; return; }
  try {
    const found = await fetchBatch(new URLSearchParams({ jobs_limit: String(JOBS_PAGE), jobs_cursor: jobsCursor }));
    if (found.batch) {
      drawFacts(found.batch);
      showJobs(found.batch.jobs ?? {}, true);
    }
  } catch {
    document.getElementById("batch-error").hidden = false;
  } finally {
    loadingJobs = false;
  }
}

const ACTIONS = {
  restart: { reason: false },
  pending: { reason: false },
  fail: { reason: true },
  archive: { reason: false },
  unarchive: { reason: false },
};

function setUpActions() {
  document.getElementById("batch-card").addEventListener("click", (event) => {
    const button = event.target.closest("[data-batch-action]");
    if (!button) return;
    const action = button.dataset.batchAction;
    confirmAction({
      title: t(`batch.confirm.${action}`),
      text: t(`batch.confirm.${action}_text`),
      reason: ACTIONS[action].reason,
      run: async (typed) => {
        // The API takes a reason of one line without control characters or bidirectional
        // overrides (a pasted text may hold them): dropped here, not refused there.
        const reason = withoutBidiControls(typed).replace(/[\x00-\x1f\x7f-\x9f]+/g, " ").trim();
        const response = await fetch(`/api/batches/${encodeURIComponent(batchId)}/${action}`, {
          method: "POST",
          credentials: "same-origin",
          headers: writeHeaders({ "Content-Type": "application/json" }),
          body: JSON.stringify(reason ? { reason } : {}),
        }).catch(() => null);
        if (!response?.ok) return problemOf(response);
        const body = await response.json().catch(() => ({}));
        announce(t("action.done", { action: t(`batch.action.${action}`), count: formatNumber((body.jobs ?? []).length) }));
        await loadAll();
        return null;
      },
    });
  });
}

export function initBatchDetailPage() {
  const root = document.getElementById("batch-detail");
  if (!root) return;
  batchId = root.dataset.batchId;
  setUpActions();
  document.getElementById("batch-jobs-more").addEventListener("click", moreJobs);
  // Scrolling near the end of the table loads the next page, as the button does.
  const more = document.getElementById("batch-jobs-more");
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) moreJobs();
  }, { rootMargin: "200px" }).observe(more.parentElement); // the button itself may be hidden

  document.addEventListener("batch-update", (event) => {
    if (event.detail.id !== batchId || document.getElementById("batch-card").hidden) return;
    const before = document.getElementById("batch-card").dataset.status;
    // A restart (from here or elsewhere) puts new attempts in the rows' places. The rows are
    // read again after every burst of updates while one answer holds them all; beyond that,
    // only when more jobs pend than before (the mark of new attempts).
    const oneAnswer = document.getElementById("batch-jobs-body").children.length <= MAX_LIMIT;
    const morePending = (event.detail.pending_jobs ?? 0) > pendingShown;
    if ((oneAnswer || morePending) && !reloadTimer) {
      reloadTimer = setTimeout(() => { reloadTimer = 0; loadAll(); }, 300);
    }
    pendingShown = event.detail.pending_jobs ?? 0;
    drawFacts(event.detail);
    if (before !== event.detail.status) {
      announce(t("batch.live", { name: isolated(event.detail.name || batchId), status: t(`status.${event.detail.status}`) }));
    }
  });
  // A job of this batch shown in the table: its status badge follows the job's stream.
  document.addEventListener("job-update", (event) => {
    const row = document.querySelector(`#batch-jobs-body [data-job-id="${CSS.escape(event.detail.jobId)}"]`);
    if (!row || row.dataset.status === event.detail.status || !event.detail.status) return;
    row.dataset.status = event.detail.status;
    row.querySelector("[data-status-slot]").replaceChildren(statusBadge(event.detail.status));
  });
  document.addEventListener("updates-resync", () => loadAll());
  loadAll();
}
