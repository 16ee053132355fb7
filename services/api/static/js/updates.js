// Every job's changes, live: the job_update stream (GET /api/jobs/stream), re-dispatched on the
// document as "job-update" events. After a reconnect the page gets "updates-resync" to catch up
// on what it missed. Should the server have no such stream, a slow poll of GET /api/jobs stands in.
import { EventStream } from "./sse.js";

const POLL_MS = 3000;

function emit(update) {
  document.dispatchEvent(new CustomEvent("job-update", { detail: update }));
}

function resync() {
  document.dispatchEvent(new CustomEvent("updates-resync"));
}

export function normaliseUpdate(raw) {
  const progress = raw.progress;
  return {
    jobId: raw.jobId ?? raw.job_id ?? raw.id,
    jobType: raw.jobType ?? raw.job_type ?? null,
    status: raw.status,
    phase: raw.phase ?? null,
    percent: typeof progress === "number" ? progress : progress?.percent ?? raw.percent ?? null,
    current: progress?.current ?? raw.current ?? null,
    total: progress?.total ?? raw.total ?? null,
    message: raw.message ?? progress?.message ?? null,
    updatedAt: raw.updatedAt ?? raw.updated_at ?? null,
  };
}

function startPolling() {
  const seen = new Map();
  let first = true;
  const poll = async () => {
    try {
      const response = await fetch("/api/jobs?limit=50", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        const { items } = await response.json();
        for (const job of items) {
          const key = `${job.status}|${job.updated_at}`;
          if (!first && seen.get(job.id) !== key) emit(normaliseUpdate(job));
          seen.set(job.id, key);
        }
        first = false;
      }
    } catch { /* try again next round */ }
    setTimeout(poll, POLL_MS);
  };
  poll();
}

export function startUpdates() {
  new EventStream("/api/jobs/stream", {
    onEvent(type, data) {
      if (type === "job_update" || (type === "message" && data && (data.jobId || data.job_id))) {
        emit(normaliseUpdate(data));
      }
    },
    onReconnect: resync,
    onGone: (status) => { if (status === 404 || status === 405) startPolling(); },
  }).start();
}
