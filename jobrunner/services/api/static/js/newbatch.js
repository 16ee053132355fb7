// "Neuer Batch": jobs composed with the New job dialog's fields or imported from a file of
// parameter rows; every row is checked here first, and a file with a bad row sends nothing.
// POST /api/batches then starts all of them or none; its INVALID_BATCH errors go to their rows.
import { t, announce, isolated, fillIsolated, formatNumber, writeHeaders } from "./text.js";
import { collectParameters } from "./jobform.js";
import { checkParameters, rowsOfFile, FileProblem, MAX_FILE_BYTES } from "./paramrows.js";

const titles = JSON.parse(document.getElementById("job-titles")?.textContent || "{}");
const schemas = JSON.parse(document.getElementById("parameter-schemas")?.textContent || "{}");
const LIST_SHOWN = 200; // good rows listed; rows with a problem are always listed

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID(); // only in secure contexts
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function labelOf(jobType, field) {
  // A problem of the whole row (not an object, a cell too many) is the row's.
  if (["", "parameters", "row", "job"].includes(String(field ?? ""))) return t("newbatch.row");
  const name = String(field).replace(/^parameters\./, "");
  const param = schemas[jobType]?.[name];
  return (param?.label || name) || t("newbatch.row");
}

function sentence(error) {
  const known = t(`field.${error.code}`);
  return known === `field.${error.code}` ? error.message : `${known}: ${error.message}`;
}

// A row's parameters as parts for fillIsolated: "label: " and each value isolated (a value or a
// file name from an imported file may hold a bidirectional override).
function summaryParts(jobType, parameters) {
  if (parameters === null || typeof parameters !== "object") return [{ value: String(parameters) }];
  return Object.entries(parameters).flatMap(([name, value], index) => [
    `${index ? ", " : ""}${labelOf(jobType, name)}: `,
    { value: Array.isArray(value) ? value.join(",") : String(value) },
  ]);
}

export function setUpNewBatch({ onStarted }) {
  const dialog = document.getElementById("new-batch-dialog");
  const form = document.getElementById("new-batch-form");
  if (!dialog || !form) return;
  const params = document.getElementById("batch-job-params");
  const body = document.getElementById("batch-list-body");
  const alert = document.getElementById("new-batch-alert");
  const submit = document.getElementById("new-batch-submit");
  const importStatus = document.getElementById("batch-import-status");
  const nameInput = document.getElementById("batch-name");
  const nameError = document.getElementById("batch-name-error");
  let entries = []; // {jobType, parameters, errors, source: {file, row} of an imported one}
  let idempotencyKey = newKey();

  function loadFields() {
    const jobType = chosenType();
    if (jobType) window.htmx?.ajax("GET", `/ui/batch-job-form/${encodeURIComponent(jobType)}`, { target: params, swap: "innerHTML" });
  }

  const chosenType = () => form.querySelector('input[name="batch_job_type"]:checked')?.value ?? null;

  function showAlert(title, text) {
    alert.querySelector("[data-alert-title]").textContent = title;
    alert.querySelector("[data-alert-text]").textContent = text ?? "";
    alert.hidden = false;
  }

  function clearFieldErrors() {
    for (const slot of params.querySelectorAll("[data-error-for]")) { slot.hidden = true; slot.textContent = ""; }
    for (const input of params.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }

  function render() {
    const template = document.getElementById("batch-list-row");
    // Every row with a problem, and the first LIST_SHOWN others: a 10,000-row import stays a
    // page of rows (the rest are counted), and no bad row is ever out of sight.
    const shownIndexes = [];
    let others = 0;
    entries.forEach((entry, index) => {
      if (entry.errors.length || others < LIST_SHOWN) shownIndexes.push(index);
      if (!entry.errors.length) others += 1;
    });
    const rows = shownIndexes.map((index) => {
      const entry = entries[index];
      const row = template.content.firstElementChild.cloneNode(true);
      row.dataset.index = String(index);
      row.querySelector("[data-row]").textContent = formatNumber(index + 1);
      row.querySelector("[data-type]").textContent = entry.jobType;
      const parts = summaryParts(entry.jobType, entry.parameters);
      const where = entry.source ? [" (", { value: entry.source.file }, `, ${t("newbatch.row")} ${entry.source.row})`] : [];
      fillIsolated(row.querySelector("[data-summary]"), [...(parts.length ? parts : [t("job.no_parameters")]), ...where]);
      const list = row.querySelector("[data-row-errors]");
      for (const error of entry.errors) {
        const item = document.createElement("li");
        item.dataset.field = String(error.field ?? "");
        item.textContent = `${labelOf(entry.jobType, error.field)}: ${sentence(error)}`;
        list.append(item);
      }
      if (entry.errors.length) row.dataset.invalid = "true";
      const remove = row.querySelector("[data-remove]");
      remove.setAttribute("aria-label", t("newbatch.remove_row", { row: formatNumber(index + 1) }));
      return row;
    });
    const hidden = entries.length - shownIndexes.length;
    if (hidden > 0) {
      const note = document.createElement("tr");
      const cell = document.createElement("td");
      cell.colSpan = 4;
      cell.className = "text-sm opacity-70";
      cell.textContent = t("newbatch.more_rows", { count: formatNumber(hidden) });
      note.append(cell);
      rows.push(note);
    }
    body.replaceChildren(...rows);
    document.getElementById("batch-list-count").textContent = formatNumber(entries.length);
    document.getElementById("batch-list-empty").hidden = entries.length > 0;
  }

  function add() {
    alert.hidden = true;
    clearFieldErrors();
    const jobType = chosenType();
    if (!jobType) { showAlert(t("new.none_selected")); return; }
    const parameters = collectParameters(params);
    const errors = checkParameters(jobType, schemas[jobType] ?? {}, parameters);
    if (errors.length) {
      let first = null;
      for (const error of errors) {
        const name = String(error.field).replace(/^parameters\./, "");
        const slot = params.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
        if (!slot) continue;
        slot.textContent = sentence(error);
        slot.hidden = false;
        const input = slot.closest("[data-param]").querySelector("input");
        input?.setAttribute("aria-invalid", "true");
        first ??= input;
      }
      showAlert(t("new.invalid"));
      first?.focus();
      return;
    }
    entries.push({ jobType, parameters, errors: [], source: null });
    render();
    announce(t("newbatch.added", { title: isolated(titles[jobType] ?? jobType) }));
  }

  async function importFile(file) {
    alert.hidden = true;
    const jobType = chosenType();
    if (!jobType || !file) return;
    if (file.size > MAX_FILE_BYTES) {
      fillIsolated(importStatus, [`${t("newbatch.unreadable")}: `, { value: file.name }, ` > ${formatNumber(MAX_FILE_BYTES / 1024 / 1024)} MiB`]);
      return;
    }
    let rows;
    try {
      rows = rowsOfFile(file.name, await file.text(), jobType, schemas[jobType] ?? {});
    } catch (error) {
      const reason = error instanceof FileProblem ? error.message : String(error);
      fillIsolated(importStatus, [`${t("newbatch.unreadable")}: `, { value: file.name }, ` ${reason}`]);
      return;
    }
    for (const row of rows) {
      entries.push({ jobType, parameters: row.parameters, errors: row.errors, source: { file: file.name, row: row.source } });
    }
    render();
    const bad = rows.filter((r) => r.errors.length).length;
    importStatus.textContent = bad
      ? `${t("newbatch.import_done", { count: formatNumber(rows.length) })} ${t("newbatch.import_errors", { count: formatNumber(bad) })}`
      : t("newbatch.import_done", { count: formatNumber(rows.length) });
  }

  function focusFirstBad() {
    body.querySelector('[data-invalid="true"] [data-remove]')?.focus();
  }

  document.querySelectorAll("[data-new-batch-open], #new-batch-open").forEach((opener) => {
    opener.addEventListener("click", () => {
      alert.hidden = true;
      nameError.hidden = true;
      idempotencyKey = newKey();
      loadFields();
      dialog.showModal();
      nameInput.focus();
    });
  });
  dialog.addEventListener("close", () => params.replaceChildren());
  form.addEventListener("change", (event) => {
    if (event.target.name === "batch_job_type") { clearFieldErrors(); alert.hidden = true; }
  });
  document.getElementById("batch-add").addEventListener("click", add);
  // Enter in a parameter field adds the job, as the button next to it does; it never starts
  // the batch half composed.
  params.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.tagName === "INPUT") { event.preventDefault(); add(); }
  });
  document.getElementById("batch-clear").addEventListener("click", () => { entries = []; importStatus.textContent = ""; render(); });
  const fileInput = document.getElementById("batch-import");
  fileInput.addEventListener("change", async () => {
    await importFile(fileInput.files?.[0]);
    fileInput.value = ""; // the same file again, once fixed, is a new change
  });
  body.addEventListener("click", (event) => {
    const remove = event.target.closest("[data-remove]");
    if (!remove) return;
    const index = Number(remove.closest("[data-batch-list-row]").dataset.index);
    entries.splice(index, 1);
    render();
    (body.querySelector(`[data-index="${Math.min(index, entries.length - 1)}"] [data-remove]`) ?? nameInput).focus();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.hidden = true;
    nameError.hidden = true;
    nameInput.removeAttribute("aria-invalid");
    const batchName = nameInput.value.trim();
    if (!batchName) {
      nameError.textContent = t("newbatch.name_required");
      nameError.hidden = false;
      nameInput.setAttribute("aria-invalid", "true");
      nameInput.focus();
      return;
    }
    if (!entries.length) { showAlert(t("newbatch.no_jobs")); return; }
    if (entries.some((e) => e.errors.length)) { showAlert(t("newbatch.invalid")); focusFirstBad(); return; }
    submit.disabled = true;
    submit.querySelector("[data-busy]").hidden = false;
    let response = null;
    try {
      response = await fetch("/api/batches", {
        method: "POST",
        credentials: "same-origin",
        headers: writeHeaders({ "Content-Type": "application/json", "Idempotency-Key": idempotencyKey }),
        body: JSON.stringify({ batch_name: batchName, jobs: entries.map((e) => ({ job_type: e.jobType, parameters: e.parameters })) }),
      });
    } catch {
      response = null;
    } finally {
      submit.disabled = false;
      submit.querySelector("[data-busy]").hidden = true;
    }
    // No answer: the retry keeps the key, so a batch the server did store is not stored twice.
    if (!response) { showAlert(t("newbatch.failed"), t("conn.lost")); return; }
    idempotencyKey = newKey();
    const answer = await response.json().catch(() => ({}));
    if (response.status === 201) {
      dialog.close();
      announce(`${t("newbatch.started")}: ${isolated(batchName)}`);
      entries = [];
      nameInput.value = "";
      importStatus.textContent = "";
      render();
      onStarted?.(answer);
      return;
    }
    const error = answer.error ?? {};
    const perJob = error.errors ?? answer.errors;
    if (error.code === "INVALID_BATCH" && Array.isArray(perJob)) {
      // A job's problem goes to its row; the batch's own (its name, too many jobs) to the alert.
      const general = [];
      for (const item of perJob) {
        const entry = Number.isInteger(item.index) ? entries[item.index] : undefined;
        if (entry) entry.errors.push({ field: item.field, code: item.code, message: item.message });
        else if (item.field === "batch_name") {
          nameError.textContent = item.message;
          nameError.hidden = false;
          nameInput.setAttribute("aria-invalid", "true");
        } else general.push(item.message);
      }
      render();
      showAlert(t("newbatch.invalid"), [error.message, ...general].filter(Boolean).join(" "));
      if (!nameError.hidden) nameInput.focus(); else focusFirstBad();
      return;
    }
    showAlert(t("newbatch.failed"), error.message ?? `HTTP ${response.status}`);
  });
}
