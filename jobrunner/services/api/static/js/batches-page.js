// /batches (seed 003's job center): every batch with status, progress and counters, filtered
// through GET /api/batches, paged by its cursor, patched live by batch_update events.
import { t, announce, isolated, formatNumber, formatRelativeDay, formatDateTime } from "./text.js";
import { drawBatch } from "./batchview.js";
import { setUpNewBatch } from "./newbatch.js";

const PAGE = 50;
const FILTERS = ["status", "archived", "job_type", "search", "created_from", "created_to"];

let cursor = null;
let shown = 0;
let reloadTimer = 0;
let generation = 0; // a slower answer to an older query never overwrites a newer one

function query(form) {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (!value) continue;
    // A day in the reader's time zone: from its first to its last moment.
    if (name === "created_from") params.set(name, new Date(`${value}T00:00:00`).toISOString());
    else if (name === "created_to") params.set(name, new Date(`${value}T23:59:59.999`).toISOString());
    else params.set(name, value);
  }
  return params;
}

function pageAddress(form) {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (value && !(name === "archived" && value === "false")) params.set(name, value);
  }
  const text = params.toString();
  return text ? `/batches?${text}` : "/batches";
}

function rowOf(batchId) {
  return document.querySelector(`[data-batch-row][data-batch-id="${CSS.escape(batchId)}"]`);
}

function fillRow(row, batch) {
  row.dataset.batchId = batch.id;
  row.dataset.archived = String(Boolean(batch.archived));
  const link = row.querySelector("[data-batch-link]");
  link.href = `/batches/${encodeURIComponent(batch.id)}`;
  link.textContent = batch.name || batch.id;
  row.querySelector("[data-batch-id]").textContent = batch.id;
  const created = row.querySelector("[data-created]");
  if (batch.created_at) {
    const when = new Date(batch.created_at);
    created.dateTime = batch.created_at;
    created.textContent = formatRelativeDay(when);
    created.title = formatDateTime(when);
  }
  drawBatch(row, batch);
}

function newRow(batch) {
  const row = document.getElementById("batch-row").content.firstElementChild.cloneNode(true);
  fillRow(row, batch);
  return row;
}

async function load(form, { append, limit = PAGE }) {
  // A filter the page could not show (its alert says which): listing what the form holds
  // instead would be a wider list than the address asked for. Applying the form clears it.
  if (form.hasAttribute("data-filter-error")) return;
  const mine = ++generation;
  const params = query(form);
  params.set("limit", String(limit));
  if (append && cursor) params.set("cursor", cursor);
  const body = document.getElementById("batches-body");
  const error = document.getElementById("batches-error");
  let page;
  try {
    const response = await fetch(`/api/batches?${params}`, { credentials: "same-origin" });
    if (!response.ok) throw new Error(String(response.status));
    page = await response.json();
  } catch {
    if (mine === generation) error.hidden = false;
    return;
  }
  if (mine !== generation) return;
  error.hidden = true;
  const rows = (page.items ?? []).map(newRow);
  if (append) body.append(...rows); else body.replaceChildren(...rows);
  shown = body.children.length;
  cursor = page.next_cursor ?? null;
  document.getElementById("batches-empty").hidden = shown > 0;
  document.getElementById("batches-more").hidden = !cursor;
  document.getElementById("batches-end").hidden = Boolean(cursor) || shown === 0;
  document.getElementById("batches-status").textContent = t("batches.shown", { count: formatNumber(shown) });
}

export function initBatchesPage() {
  const form = document.getElementById("batch-filters");
  if (!form) return;
  // At most one reload waits at a time: a busy batch's stream of updates must not keep
  // postponing it. It asks for as many rows as are shown, so it takes away no page one loaded.
  const reload = (delay = 0) => {
    if (reloadTimer) return;
    reloadTimer = setTimeout(() => {
      reloadTimer = 0;
      load(form, { append: false, limit: Math.max(PAGE, shown) });
    }, delay);
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState(null, "", pageAddress(form));
    cursor = null;
    form.removeAttribute("data-filter-error");
    document.getElementById("batches-filter-error")?.remove();
    load(form, { append: false });
  });
  document.getElementById("batches-more").addEventListener("click", () => load(form, { append: true }));
  setUpNewBatch({
    onStarted: (created) => {
      if (created?.batch_id) location.assign(`/batches/${encodeURIComponent(created.batch_id)}`);
    },
  });

  document.addEventListener("batch-update", (event) => {
    const batch = event.detail;
    const row = rowOf(batch.id);
    const filtered = form.elements.status.value !== "" || form.elements.archived.value !== "all";
    if (!row) {
      // A new batch, or one that now matches the filters: reload if it falls among the rows
      // shown (newest first), not for every update of a batch pages further down.
      const last = document.getElementById("batches-body").lastElementChild;
      const oldest = last?.querySelector("[data-created]")?.dateTime ?? "";
      if (!cursor || !oldest || (batch.created_at ?? "") >= oldest) reload(300);
      return;
    }
    const before = { status: row.dataset.status, archived: row.dataset.archived };
    fillRow(row, batch);
    if (before.status !== batch.status) {
      announce(t("batch.live", { name: isolated(batch.name || batch.id), status: t(`status.${batch.status}`) }));
    }
    // It may no longer match the filters.
    if (filtered && (before.status !== row.dataset.status || before.archived !== row.dataset.archived)) reload(300);
  });
  document.addEventListener("updates-resync", () => { clearTimeout(reloadTimer); reloadTimer = 0; reload(0); });
  load(form, { append: false });
}
