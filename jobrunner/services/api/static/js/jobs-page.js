// /jobs (PRD-005 2.1): live cards for running jobs, the recent jobs table, live without reloads.
import { t, announce, formatIn, tickClocks } from "./text.js";
import { followJob } from "./jobstream.js";
import { Terminal } from "./terminal.js";
import { replaceBadges, setProgress, setUpCancel, markCancelRequested, TERMINAL } from "./widgets.js";
import { setUpNewJob } from "./newjob.js";
import { setUpNewBatch } from "./newbatch.js";
import { setUpJobSelection } from "./jobselect.js";

const titles = JSON.parse(document.getElementById("job-titles")?.textContent || "{}");
const followed = new Map(); // job id -> {stream, terminal}
// Jobs whose stream said "done": never followed again, even while the read model still says
// "running" for a moment (the projector writes a little after the stream has the event).
const ended = new Set();
let refreshTimer = 0;

// Ask both sections to re-render (htmx listens for "jobs-changed" on the body).
export function refreshSoon(delay = 150) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => document.body.dispatchEvent(new CustomEvent("jobs-changed")), delay);
}

function card(jobId) {
  return document.querySelector(`[data-job-card][data-job-id="${CSS.escape(jobId)}"]`);
}

function follow(cardEl) {
  const jobId = cardEl.dataset.jobId;
  if (followed.has(jobId) || ended.has(jobId)) return;
  const view = document.querySelector(`#term-${CSS.escape(jobId)} [data-terminal]`);
  const toggle = document.querySelector(`#term-${CSS.escape(jobId)} [data-autoscroll]`);
  const terminal = new Terminal(view, toggle);
  const title = cardEl.querySelector("h3")?.firstChild?.textContent.trim() ?? jobId;
  const stream = followJob(jobId, {
    line: (line) => terminal.push(line),
    reset: () => terminal.clear(), // the new stream sends the job's lines from its first
    progress: (progress) => {
      const c = card(jobId);
      if (c) setProgress(c.querySelector("[data-progress]"), progress, c.dataset.status);
    },
    status: (status) => {
      const c = card(jobId);
      if (!c || c.dataset.status === status.status) return;
      c.dataset.status = status.status;
      replaceBadges(c, status.status);
      if (status.status === "running") refreshSoon(); // started: show its start time and clock
    },
    cancelRequested: () => markCancelRequested(jobId),
    done: (done) => {
      terminal.flush();
      announce(t("live.finished", { title, status: t(`status.${done.status}`) }));
      followed.delete(jobId);
      ended.add(jobId);
      refreshSoon(0);
    },
  });
  followed.set(jobId, { stream, terminal });
}

function syncCards() {
  const present = new Set();
  for (const c of document.querySelectorAll("[data-job-card]")) {
    present.add(c.dataset.jobId);
    follow(c);
    if (ended.has(c.dataset.jobId)) refreshSoon(500); // the read model has not caught up yet
  }
  for (const [jobId, { stream }] of followed) {
    if (!present.has(jobId)) { stream.close(); followed.delete(jobId); }
  }
}

function shownStatus(jobId) {
  const el = document.querySelector(`[data-job-card][data-job-id="${CSS.escape(jobId)}"], [data-job-row][data-job-id="${CSS.escape(jobId)}"]`);
  return el?.dataset.status ?? null;
}

export function initJobsPage() {
  formatIn(document);
  tickClocks();
  setInterval(() => tickClocks(), 1000);
  syncCards();
  setUpCancel(document.getElementById("main"), () => {});
  setUpNewJob({ onStarted: () => refreshSoon(0) });
  // A started batch is followed on its own page, as from /batches.
  setUpNewBatch({
    onStarted: (created) => {
      if (created?.batch_id) location.assign(`/batches/${encodeURIComponent(created.batch_id)}`);
      else refreshSoon(0);
    },
  });
  setUpJobSelection({ onChanged: () => refreshSoon(0) });

  document.body.addEventListener("htmx:afterSettle", (event) => {
    const target = event.detail?.target;
    if (!target) return;
    formatIn(target);
    tickClocks(target);
    if (target.id === "active") syncCards();
  });

  // A job started elsewhere appears, a finished one moves to the history.
  document.addEventListener("job-update", (event) => {
    const update = event.detail;
    const shown = shownStatus(update.jobId);
    if (shown === update.status) return;
    if (shown === null && !TERMINAL.has(update.status)) {
      announce(t("live.started", { title: titles[update.jobType] ?? update.jobType ?? "" }));
    }
    refreshSoon();
  });
  document.addEventListener("updates-resync", () => refreshSoon(0));
}
