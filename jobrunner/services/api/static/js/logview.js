// A virtual list over a job's whole log: only the rows in view exist in the page, pages of lines
// load on demand from GET /api/jobs/{id}/logs, so a log of millions of lines opens at once and
// scrolls smoothly. Line seq n sits at row n - 1.
import { buildRow } from "./logline.js";
import { t, formatNumber } from "./text.js";

const PAGE = 500;
// Browsers cap an element's height (Firefox near 17.9 million px): beyond this the scrollbar
// maps proportionally onto the rows instead of one pixel per pixel.
const MAX_SPACER_PX = 15_000_000;
const MAX_CACHED_PAGES = 400;

export class LogView {
  constructor(viewport, jobId, total) {
    this.viewport = viewport;
    this.spacer = viewport.querySelector("[data-spacer]");
    this.rowsEl = viewport.querySelector("[data-rows]");
    this.empty = viewport.querySelector("[data-log-empty]");
    this.jobId = jobId;
    this.total = total;
    this.pages = new Map(); // page index -> array of lines (sparse while live lines arrive)
    this.loading = new Map(); // page index -> promise
    this.failed = new Set();
    this.rowHeight = this.measureRow();
    this.follow = false;
    this.highlight = null;
    this.frame = 0;
    this.listeners = [];
    viewport.addEventListener("scroll", () => { this.onScroll(); this.schedule(); }, { passive: true });
    new ResizeObserver(() => this.schedule()).observe(viewport);
    this.layout();
  }

  onChange(listener) { this.listeners.push(listener); }

  measureRow() {
    const probe = buildRow({ seq: 0, level: "INFO", text: "x", timestamp: null });
    probe.style.visibility = "hidden";
    this.rowsEl.append(probe);
    const height = probe.getBoundingClientRect().height || 20;
    probe.remove();
    return height;
  }

  get scaled() { return this.total * this.rowHeight > MAX_SPACER_PX; }

  layout() {
    const height = Math.min(this.total * this.rowHeight, MAX_SPACER_PX);
    this.spacer.style.height = `${height}px`;
    this.empty.hidden = this.total > 0;
    this.schedule();
  }

  visibleCount() { return Math.ceil(this.viewport.clientHeight / this.rowHeight) + 1; }

  // The (fractional) index of the row at the top of the viewport.
  topIndex() {
    const v = this.viewport;
    if (!this.scaled) return v.scrollTop / this.rowHeight;
    const range = v.scrollHeight - v.clientHeight;
    const rows = Math.max(0, this.total - (v.clientHeight / this.rowHeight));
    return range > 0 ? (v.scrollTop / range) * rows : 0;
  }

  scrollToIndex(index, where = "center") {
    const v = this.viewport;
    const inView = v.clientHeight / this.rowHeight;
    let top = where === "center" ? index - inView / 2 + 0.5 : index;
    top = Math.max(0, Math.min(top, this.total - inView));
    if (!this.scaled) v.scrollTop = top * this.rowHeight;
    else {
      const rows = Math.max(1, this.total - inView);
      v.scrollTop = (top / rows) * (v.scrollHeight - v.clientHeight);
    }
    this.schedule();
  }

  atEnd() {
    const v = this.viewport;
    return v.scrollHeight - v.scrollTop - v.clientHeight < 2;
  }

  onScroll() {
    if (this.followToggle) {
      const follow = this.atEnd();
      if (follow !== this.follow) { this.follow = follow; this.followToggle.checked = follow; }
    }
  }

  toEnd() {
    this.viewport.scrollTop = this.viewport.scrollHeight;
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  line(index) {
    const page = this.pages.get(Math.floor(index / PAGE));
    return page ? page[index % PAGE] : undefined;
  }

  render() {
    const top = this.topIndex();
    const first = Math.max(0, Math.floor(top));
    const last = Math.min(this.total, first + this.visibleCount());
    // Rows sit where the top row's fraction says, so scrolling stays smooth within a row.
    const offset = this.viewport.scrollTop - (top - first) * this.rowHeight;
    this.rowsEl.style.transform = `translateY(${offset}px)`;
    const need = new Set();
    const rows = this.rowsEl.children;
    let i = 0;
    for (let index = first; index < last; index++, i++) {
      const line = this.line(index);
      let row = rows[i];
      if (!row) { row = document.createElement("div"); this.rowsEl.append(row); }
      if (line) {
        if (row.dataset.seq !== String(line.seq) || row.dataset.stale) {
          buildRow(line, row);
          delete row.dataset.stale;
        }
      } else {
        row.className = "log-row opacity-75";
        row.dataset.seq = "";
        row.dataset.stale = "1";
        row.textContent = `${formatNumber(index + 1)}  ${t("log.loading")}`;
        need.add(Math.floor(index / PAGE));
      }
      row.classList.toggle("hit", this.highlight === index + 1);
    }
    while (rows.length > i) this.rowsEl.lastElementChild.remove();
    for (const page of need) this.load(page);
    this.evict(first);
    for (const listener of this.listeners) listener(first, last);
  }

  load(page) {
    if (this.loading.has(page) || this.failed.has(page)) return this.loading.get(page);
    const promise = this.fetchLines({ after: String(page * PAGE), limit: String(PAGE) })
      .then((lines) => {
        this.store(lines);
        // Rows the read model has not caught up with yet: ask again shortly, not every frame.
        const end = Math.min(this.total, (page + 1) * PAGE);
        const rows = this.pages.get(page);
        for (let index = page * PAGE; index < end; index++) {
          if (!rows?.[index % PAGE]) { this.cooldown(page); break; }
        }
      })
      .catch(() => this.cooldown(page))
      .finally(() => { this.loading.delete(page); this.schedule(); });
    this.loading.set(page, promise);
    return promise;
  }

  cooldown(page) {
    this.failed.add(page);
    setTimeout(() => { this.failed.delete(page); this.schedule(); }, 1000);
  }

  async fetchLines(params) {
    const query = new URLSearchParams(params);
    const response = await fetch(`/api/jobs/${encodeURIComponent(this.jobId)}/logs?${query}`, {
      credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    return body.items ?? body.lines ?? body;
  }

  store(lines) {
    for (const line of lines) {
      const index = line.seq - 1;
      const pageIndex = Math.floor(index / PAGE);
      let page = this.pages.get(pageIndex);
      if (!page) { page = new Array(PAGE); this.pages.set(pageIndex, page); }
      page[index % PAGE] = line;
      if (line.seq > this.total) this.total = line.seq;
    }
  }

  // A live line from the job's stream.
  append(line) {
    this.store([line]);
    if (line.seq >= this.total) {
      this.total = line.seq;
      this.layout();
      if (this.follow) this.toEnd();
    }
    this.schedule();
  }

  evict(first) {
    if (this.pages.size <= MAX_CACHED_PAGES) return;
    const here = Math.floor(first / PAGE);
    const far = [...this.pages.keys()].sort((a, b) => Math.abs(b - here) - Math.abs(a - here));
    for (const page of far.slice(0, this.pages.size - MAX_CACHED_PAGES)) this.pages.delete(page);
  }
}
