// Server-Sent Events over fetch: unlike EventSource it can send Last-Event-ID on every reconnect
// (also after the server answered an error), tell the page when the connection dropped, and
// back off while the server is away.
import { t, announce } from "./text.js";

const lost = new Set();

function showConnection() {
  const banner = document.getElementById("conn-banner");
  if (banner) banner.hidden = lost.size === 0;
}

async function errorCode(response) {
  try { return (await response.json())?.error?.code ?? null; } catch { return null; }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class EventStream {
  /**
   * @param {string} url
   * @param {{onEvent: (type: string, data: any, id: string|null) => void,
   *          onReconnect?: () => void, onReset?: () => void,
   *          onGone?: (status: number) => void, lastEventId?: string|null}} options
   */
  constructor(url, options) {
    this.url = url;
    this.options = options;
    this.lastEventId = options.lastEventId ?? null;
    this.closed = false;
    this.wasLost = false;
    this.controller = null;
    this.retryMs = 3000;
  }

  start() {
    this.run();
    return this;
  }

  close() {
    this.closed = true;
    this.controller?.abort();
    this.markLost(false);
  }

  markLost(isLost) {
    if (isLost) lost.add(this);
    else lost.delete(this);
    showConnection();
  }

  async run() {
    let attempt = 0;
    while (!this.closed) {
      this.controller = new AbortController();
      try {
        const headers = { Accept: "text/event-stream" };
        if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
        const response = await fetch(this.url, {
          headers, credentials: "same-origin", cache: "no-store", signal: this.controller.signal,
        });
        if ([401, 403, 404, 410].includes(response.status)) {
          this.closed = true;
          this.markLost(false);
          this.options.onGone?.(response.status);
          return;
        }
        if (response.status === 400 && this.lastEventId
            && (await errorCode(response)) === "LAST_EVENT_ID_AHEAD") {
          // No event of this stream has that id: the stream was made anew (a tab left open while
          // the installation was made again). Read it from the start, and have the page re-read
          // what it shows once connected (onReconnect), rather than retrying the id for ever.
          // onReset first: what the page counted from the old stream (a job's line sequence)
          // does not hold for the new one.
          this.lastEventId = null;
          this.wasLost = true;
          this.options.onReset?.();
          continue;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        attempt = 0;
        if (this.wasLost) {
          this.wasLost = false;
          this.markLost(false);
          if (lost.size === 0) announce(t("conn.back"));
          this.options.onReconnect?.();
        }
        await this.read(response.body);
      } catch (error) {
        if (this.closed) return;
      }
      if (this.closed) return;
      // The server closed the stream or went away: say so and come back.
      this.wasLost = true;
      this.markLost(true);
      attempt += 1;
      await sleep(Math.min(this.retryMs, 250 * 2 ** attempt));
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (!this.closed) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        this.dispatch(block);
        if (this.closed) { reader.cancel().catch(() => {}); return; }
      }
    }
  }

  dispatch(block) {
    let type = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
    }
    if (id !== null) this.lastEventId = id;
    if (!data.length) return;
    let parsed;
    try { parsed = JSON.parse(data.join("\n")); } catch { parsed = data.join("\n"); }
    if (type === "stale") {
      // The API is there but NATS does not answer it: live events stop meanwhile, as when the
      // API is away, and resume where they stopped (no reconnect needed).
      this.markLost(parsed?.stale === true);
      if (parsed?.stale !== true && lost.size === 0) announce(t("conn.back"));
      return;
    }
    this.options.onEvent(type, parsed, id);
  }
}
