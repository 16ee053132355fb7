// The live log terminal of a running job: appends lines once per frame, keeps the newest
// MAX_ROWS in the page, and follows the end unless the reader scrolled up.
import { buildRow } from "./logline.js";

const MAX_ROWS = 5000;

export class Terminal {
  constructor(view, toggle) {
    this.view = view;
    this.toggle = toggle;
    this.pending = [];
    this.frame = 0;
    this.follow = toggle ? toggle.checked : true;
    view.addEventListener("scroll", () => this.onScroll(), { passive: true });
    toggle?.addEventListener("change", () => {
      this.follow = toggle.checked;
      if (this.follow) this.scrollToEnd();
    });
  }

  atBottom() {
    const v = this.view;
    return v.scrollHeight - v.scrollTop - v.clientHeight < 4;
  }

  onScroll() {
    // Scrolling up switches following off; reaching the bottom again switches it back on.
    const follow = this.atBottom();
    if (follow !== this.follow) {
      this.follow = follow;
      if (this.toggle) this.toggle.checked = follow;
    }
  }

  scrollToEnd() {
    this.view.scrollTop = this.view.scrollHeight;
  }

  push(line) {
    this.pending.push(line);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  clear() {
    this.pending.length = 0;
    this.view.querySelectorAll(".log-row").forEach((row) => row.remove());
  }

  flush() {
    this.frame = 0;
    const lines = this.pending.splice(0, this.pending.length).slice(-MAX_ROWS);
    if (!lines.length) return;
    this.view.querySelector("[data-placeholder]")?.remove();
    const fragment = document.createDocumentFragment();
    for (const line of lines) fragment.append(buildRow(line));
    this.view.append(fragment);
    const excess = this.view.childElementCount - MAX_ROWS;
    for (let i = 0; i < excess; i++) this.view.firstElementChild.remove();
    if (this.follow) this.scrollToEnd();
  }
}
