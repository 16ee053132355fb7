// The job page's artifacts: listed by the server; refreshed here once a live job ends (the
// runner stores them just before the job's end).
import { t, isolated, formatNumber } from "./text.js";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function formatBytes(size) {
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  if (unit === 0) return `${formatNumber(size)} B`;
  return `${value.toLocaleString(document.documentElement.lang || "de", { minimumFractionDigits: 1, maximumFractionDigits: 1 })} ${UNITS[unit]}`;
}

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const TRIES = 40;
const PAUSE_MS = 250;

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  return response.ok ? response.json() : null;
}

// The live stream says the job ended before the read model may know it. The job's end comes
// after its artifacts in the event stream, so once the read model has the end it has them all.
export async function refreshArtifacts(section) {
  if (!section) return;
  const id = encodeURIComponent(section.dataset.jobId);
  let body;
  try {
    for (let tries = 0; tries < TRIES; tries += 1) {
      const job = await getJson(`/api/jobs/${id}`);
      if (job && TERMINAL.has(job.status)) break;
      await new Promise((resolve) => setTimeout(resolve, PAUSE_MS));
    }
    body = await getJson(`/api/jobs/${id}/artifacts`);
  } catch { return; }
  if (!body) return;
  const rows = section.querySelector("[data-artifact-rows]");
  rows.replaceChildren(...body.items.map((item) => {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    name.className = "font-mono break-all";
    const link = document.createElement("a");
    link.className = "link";
    link.href = item.url;
    link.download = "";
    link.textContent = item.name;
    link.dir = "auto"; // a tool's name, isolated: it cannot reorder the text around it
    link.setAttribute("aria-label", t("artifacts.download", { name: isolated(item.name) }));
    name.append(link);
    const size = document.createElement("td");
    size.className = "text-right tabular-nums";
    size.dataset.bytes = String(item.size);
    size.textContent = formatBytes(item.size);
    row.append(name, size);
    return row;
  }));
  const any = body.items.length > 0;
  section.querySelector("[data-artifact-count]").textContent = formatNumber(body.items.length);
  section.querySelector("[data-artifacts-table]").hidden = !any;
  section.querySelector("[data-archive]").hidden = !any;
  const empty = section.querySelector("[data-artifacts-empty]");
  empty.hidden = any;
  empty.textContent = t("artifacts.none");
}
