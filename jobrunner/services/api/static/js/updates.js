// Every job's changes, live: the job_update stream (GET /api/jobs/stream), re-dispatched on the
// document as "job-update" events (and each batch's as "batch-update"). After a reconnect,
// and when the stream says "resync" (it could not read the read models for a while), the page
// gets "updates-resync" to catch up.
import { EventStream } from "./sse.js";

function normalise(raw) {
  return {
    jobId: raw.jobId,
    jobType: raw.jobType ?? null,
    status: raw.status,
    phase: raw.phase ?? null,
    percent: raw.progress ?? null,
    current: raw.current ?? null,
    total: raw.total ?? null,
    message: raw.message ?? null,
    updatedAt: raw.updatedAt ?? null,
  };
}

export function startUpdates() {
  new EventStream("/api/jobs/stream", {
    onEvent(type, data) {
      if (type === "job_update" && data?.jobId) {
        document.dispatchEvent(new CustomEvent("job-update", { detail: normalise(data) }));
      } else if (type === "resync") {
        // The stream could not read the read models for a while and sent only what the events
        // told: the page loads its lists again, as after a reconnect.
        document.dispatchEvent(new CustomEvent("updates-resync"));
      } else if (type === "batch_update" && data?.id) {
        // A batch's counters or status changed: data is the Batch JSON of GET /api/batches.
        document.dispatchEvent(new CustomEvent("batch-update", { detail: data }));
      }
    },
    onReconnect: () => document.dispatchEvent(new CustomEvent("updates-resync")),
  }).start();
}
