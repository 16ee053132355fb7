// /jobs (PRD-005 2.1): live cards for running jobs, the recent jobs table, live without reloads.
import { t, announce, isolated, formatIn, tickClocks } from "./text.js";
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
// The latest status each job's stream has said. A re-render asked before a status arrived may be
// answered after it (the request was in flight, or htmx queued the next one behind it): its card
// would show the older status, and the stream says each status once, so nothing would correct
// it while the re-render after the job's end fails (Postgres down). syncCards puts it back.
const streamStatus = new Map(); // job id -> status
// How far along each of contracts/events.py's JobStatus is: keep the two in step. A status
// missing here (added there since) is taken as the stream says it: the stream is the later word.
const STATUS_ORDER = { pending: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };
// Jobs whose stream said "done", until a re-render of the recent table shows their row. The two
// sections are read at moments apart: the running card may be gone (its end projected) from an
// answer read after the table's, which was read before. Nothing else would ask again, so the job
// was in neither section until some other job changed. Asked again a few times only: a job
// older than the table's newest rows never shows there.
const endedUnseen = new Map(); // job id -> re-renders asked for it
const ENDED_ROW_ASKS = 5;

function showStatus(c, status) {
  c.dataset.status = status;
  replaceBadges(c, status);
}

// A card rendered before the stream's latest status gets that status; one rendered later keeps
// its own (the stream will say it too).
function catchUpStatus(c) {
  const status = streamStatus.get(c.dataset.jobId);
  if (status === undefined || c.dataset.status === status) return;
  const shown = STATUS_ORDER[c.dataset.status];
  const said = STATUS_ORDER[status];
  if (shown === undefined || said === undefined || shown < said) showStatus(c, status);
}
let refreshTimer = 0;
let refreshDueAt = Infinity; // when the pending re-render is due (performance.now()); none: Infinity
let refreshRound = 0; // re-renders of both sections asked for so far
// How soon a failed re-render of the sections is asked again: 2 s after the first failure,
// doubling each failed round up to 30 s (a page left open through a long outage asks twice a
// minute, not every 2 s: each refused request is a warning line in the API's log), back to 2 s
// once both sections have re-rendered.
const REFRESH_RETRY_FIRST_MS = 2000;
const REFRESH_RETRY_LONGEST_MS = 30000;
let refreshRetryMs = REFRESH_RETRY_FIRST_MS;
let roundBackedOff = -1; // the round whose failure last asked again and doubled the wait
const renderedSinceFailure = new Set(); // the sections re-rendered since the last failure

// Ask both sections to re-render (htmx listens for "jobs-changed" on the body), at the latest in
// `delay` ms: one asked for sooner stands (it re-renders both).
export function refreshSoon(delay = 150) {
  const due = performance.now() + delay;
  if (due >= refreshDueAt) return;
  clearTimeout(refreshTimer);
  refreshDueAt = due;
  refreshTimer = setTimeout(() => {
    refreshDueAt = Infinity;
    refreshRound += 1;
    document.body.dispatchEvent(new CustomEvent("jobs-changed"));
  }, delay);
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
  const title = cardEl.querySelector("h3 bdi")?.textContent ?? jobId;
  const stream = followJob(jobId, {
    line: (line) => terminal.push(line),
    reset: () => terminal.clear(), // the new stream sends the job's lines from its first
    progress: (progress) => {
      const c = card(jobId);
      if (c) setProgress(c.querySelector("[data-progress]"), progress, c.dataset.status);
    },
    status: (status) => {
      streamStatus.set(jobId, status.status);
      const c = card(jobId);
      if (!c || c.dataset.status === status.status) return;
      showStatus(c, status.status);
      if (status.status === "running") refreshSoon(); // started: show its start time and clock
    },
    cancelRequested: () => markCancelRequested(jobId),
    done: (done) => {
      streamStatus.set(jobId, done.status);
      terminal.flush();
      announce(t("live.finished", { title: isolated(title), status: t(`status.${done.status}`) }));
      followed.delete(jobId);
      ended.add(jobId);
      endedUnseen.set(jobId, 0);
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
    catchUpStatus(c);
    if (ended.has(c.dataset.jobId)) refreshSoon(500); // the read model has not caught up yet
  }
  for (const [jobId, { stream }] of followed) {
    if (!present.has(jobId)) { stream.close(); followed.delete(jobId); }
  }
  // What the streams said of jobs no longer shown is not needed again (a page left open on
  // /jobs would otherwise keep every job it ever saw end); a card of one shown again later is
  // followed afresh, and its stream says its status again.
  for (const jobId of ended) if (!present.has(jobId)) ended.delete(jobId);
  for (const jobId of streamStatus.keys()) {
    if (!present.has(jobId) && !followed.has(jobId)) streamStatus.delete(jobId);
  }
}

function rowShown(jobId) {
  return document.querySelector(`#recent [data-job-row][data-job-id="${CSS.escape(jobId)}"]`) !== null;
}

// After either section re-rendered: an ended job neither shows (no card, no row) is asked for
// again, as a card whose job ended is (syncCards).
function askForEndedRows() {
  for (const [jobId, asked] of endedUnseen) {
    if (rowShown(jobId) || asked >= ENDED_ROW_ASKS) endedUnseen.delete(jobId);
    else if (card(jobId) === null) {
      endedUnseen.set(jobId, asked + 1);
      refreshSoon(500 * 2 ** asked); // 0.5 s, doubling: about 15 s in all (the projector may lag)
    }
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
    if (target.id === "active" || target.id === "recent") {
      renderedSinceFailure.add(target.id);
      if (renderedSinceFailure.size === 2) refreshRetryMs = REFRESH_RETRY_FIRST_MS;
    }
    if (target.id === "active") syncCards();
    if (target.id === "active" || target.id === "recent") askForEndedRows();
  });

  // A job started elsewhere appears, a finished one moves to the history.
  document.addEventListener("job-update", (event) => {
    const update = event.detail;
    const shown = shownStatus(update.jobId);
    if (shown === update.status) return;
    if (shown === null && !TERMINAL.has(update.status)) {
      announce(t("live.started", { title: isolated(titles[update.jobType] ?? update.jobType ?? "") }));
    }
    refreshSoon();
  });
  document.addEventListener("updates-resync", () => refreshSoon(0));

  // A re-render that failed (the read models away: 503 while Postgres is down; the API gone)
  // would leave a finished job on its running card, its clock ticking, until some other job
  // changed: nothing else asks again. Ask again, backing off, until one succeeds. Not after a
  // 4xx: asking again gets the same answer (a session ended, a page gone).
  const retryFailedRefresh = (event) => {
    const id = event.detail?.elt?.id;
    if (id !== "active" && id !== "recent") return;
    if (event.type === "htmx:responseError" && !(event.detail.xhr?.status >= 500)) return;
    renderedSinceFailure.clear();
    // Both sections fail together: one round asks again once and doubles the wait once.
    if (roundBackedOff === refreshRound) return;
    roundBackedOff = refreshRound;
    refreshSoon(refreshRetryMs);
    refreshRetryMs = Math.min(refreshRetryMs * 2, REFRESH_RETRY_LONGEST_MS);
  };
  document.body.addEventListener("htmx:responseError", retryFailedRefresh);
  document.body.addEventListener("htmx:sendError", retryFailedRefresh);
}
