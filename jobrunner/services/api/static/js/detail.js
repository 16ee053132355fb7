// The job detail (PRD-005 2.3): facts, the whole log (virtual, searchable), live while it runs.
import { t, announce, isolated, formatIn, tickClocks, formatNumber, formatDateTime, formatDuration } from "./text.js";
import { followJob } from "./jobstream.js";
import { refreshArtifacts } from "./artifacts.js";
import { LogView } from "./logview.js";
import { replaceBadges, setProgress, setUpCancel, markCancelRequested, TERMINAL } from "./widgets.js";

const SEARCH_BATCH = 1000;

function setUpSearch(view) {
  const form = document.getElementById("log-search");
  const input = form.querySelector('input[name="q"]');
  const status = form.querySelector("[data-hit-status]");
  const prev = form.querySelector('[data-hit="prev"]');
  const next = form.querySelector('[data-hit="next"]');
  let query = "";
  let hits = [];
  let more = false;
  let current = -1;

  const show = () => {
    prev.disabled = current <= 0;
    next.disabled = !(current < hits.length - 1 || more);
    if (!query) { status.textContent = ""; return; }
    if (!hits.length) { status.textContent = t("log.no_matches"); return; }
    status.textContent = `${formatNumber(current + 1)} / ${formatNumber(hits.length)}${more ? "+" : ""} ${t("log.matches")}`;
  };

  const fetchHits = async (after) => {
    const lines = await view.fetchLines({ search: query, after: String(after), limit: String(SEARCH_BATCH) });
    view.store(lines);
    more = lines.length === SEARCH_BATCH;
    return lines.map((line) => line.seq);
  };

  const go = (i) => {
    current = i;
    view.highlight = hits[i];
    view.scrollToIndex(hits[i] - 1);
    show();
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    query = input.value.trim();
    hits = [];
    current = -1;
    view.highlight = null;
    if (!query) { show(); view.schedule(); return; }
    status.textContent = t("log.loading");
    try { hits = await fetchHits(0); } catch { status.textContent = t("log.unavailable"); return; }
    if (hits.length) go(0); else { show(); view.schedule(); }
  });
  prev.addEventListener("click", () => { if (current > 0) go(current - 1); });
  next.addEventListener("click", async () => {
    if (current < hits.length - 1) { go(current + 1); return; }
    if (more) {
      const found = await fetchHits(hits[hits.length - 1]);
      hits.push(...found);
      if (current < hits.length - 1) go(current + 1); else show();
    }
  });
}

export function initDetailPage() {
  const root = document.getElementById("job-detail");
  if (!root) return;
  const jobId = root.dataset.jobId;
  formatIn(document);
  tickClocks();
  const clock = setInterval(() => tickClocks(), 1000);
  const viewport = document.getElementById("log-viewport");
  const view = new LogView(viewport, jobId, Number(root.dataset.logCount) || 0);
  view.store(JSON.parse(document.getElementById("log-first-lines")?.textContent || "[]"));
  view.schedule();
  const count = root.querySelector("[data-line-count]");
  view.onChange(() => { count.textContent = formatNumber(view.total); });
  setUpSearch(view);
  setUpCancel(root);
  document.addEventListener("click", (event) => {
    const jump = event.target.closest("[data-jump]");
    if (!jump) return;
    if (jump.dataset.jump === "end") view.toEnd(); else { viewport.scrollTop = 0; view.schedule(); }
    viewport.focus({ preventScroll: true });
  });
  window.logView = view; // for the benchmark and for people poking around in the console

  if (TERMINAL.has(root.dataset.status)) return;
  // Still running: follow the end and patch the facts as the job's stream says.
  const toggle = root.querySelector("[data-autoscroll]");
  view.followToggle = toggle;
  view.follow = true;
  toggle?.addEventListener("change", () => { view.follow = toggle.checked; if (view.follow) view.toEnd(); });
  view.toEnd();
  followJob(jobId, {
    line: (line) => view.append(line),
    // The job's stream was made anew: the page as the server renders it now (facts, first
    // lines, line count), then following the new stream.
    reset: () => window.location.reload(),
    progress: (progress) => setProgress(root.querySelector("[data-progress]"), progress, root.dataset.status),
    cancelRequested: () => markCancelRequested(jobId),
    status: (status) => {
      root.dataset.status = status.status;
      replaceBadges(root, status.status);
      const when = status.timestamp ? new Date(status.timestamp) : null;
      if (status.status === "running" && when) {
        root.querySelector('[data-field="started_at"]').textContent = formatDateTime(when);
        const since = document.createElement("span");
        since.dataset.elapsed = "";
        since.dataset.since = when.toISOString();
        root.querySelector('[data-field="duration"]').replaceChildren(since);
      }
      if (TERMINAL.has(status.status)) {
        clearInterval(clock);
        if (when) root.querySelector('[data-field="finished_at"]').textContent = formatDateTime(when);
        const since = root.querySelector("[data-elapsed]");
        if (since && when) root.querySelector('[data-field="duration"]').textContent = formatDuration((when - Date.parse(since.dataset.since)) / 1000);
        if (status.exit_code != null) root.querySelector('[data-field="exit_code"]').textContent = String(status.exit_code);
        if (status.error) root.querySelector('[data-field="error"]').textContent = `${status.error.code} ${status.error.message ?? ""}`;
        if (status.result) {
          const result = root.querySelector('[data-field="result"]');
          result.querySelector("[data-result]").textContent = JSON.stringify(status.result, null, 2);
          result.hidden = false;
        }
        for (const button of root.querySelectorAll("[data-cancel]")) button.closest(".card-actions")?.remove();
      }
    },
    done: (done) => {
      const title = document.querySelector("h1 bdi")?.textContent ?? "";
      announce(t("live.finished", { title: isolated(title), status: t(`status.${done.status}`) }));
      refreshArtifacts(document.getElementById("artifacts"));
      toggle?.closest("label")?.remove();
      view.followToggle = null;
    },
  });
}
