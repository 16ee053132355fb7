// One job's live SSE stream: every line once, in order, across reconnects.
import { EventStream } from "./sse.js";

/**
 * @param {string} jobId
 * @param {{line?: Function, progress?: Function, status?: Function, done?: Function,
 *          cancelRequested?: Function, reset?: Function}} on  reset: the stream was made anew
 *          (400 LAST_EVENT_ID_AHEAD) and is read from its start; what the page shows of the
 *          old one may not be the job's any more.
 */
export function followJob(jobId, on) {
  let lastSeq = 0;
  const stream = new EventStream(`/jobs/stream/${encodeURIComponent(jobId)}`, {
    onReset() {
      // The new stream numbers its lines from 1 again: the old count would drop them all.
      lastSeq = 0;
      on.reset?.();
    },
    onEvent(type, data) {
      switch (type) {
        case "message":
          // Last-Event-ID already resumes exactly; the sequence check makes a repeat impossible.
          if (typeof data.seq === "number") {
            if (data.seq <= lastSeq) return;
            lastSeq = data.seq;
          }
          on.line?.(data);
          break;
        case "progress": on.progress?.(data); break;
        case "status": on.status?.(data); break;
        case "cancel_requested": on.cancelRequested?.(data); break;
        case "done":
          stream.close();
          on.done?.(data);
          break;
      }
    },
  });
  return stream.start();
}
