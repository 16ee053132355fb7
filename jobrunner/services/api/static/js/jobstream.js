// One job's live SSE stream: every line once, in order, across reconnects.
import { EventStream } from "./sse.js";

/**
 * @param {string} jobId
 * @param {{line?: Function, progress?: Function, status?: Function, done?: Function,
 *          cancelRequested?: Function}} on
 */
export function followJob(jobId, on) {
  let lastSeq = 0;
  const stream = new EventStream(`/jobs/stream/${encodeURIComponent(jobId)}`, {
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
