// The New job dialog (PRD-005 2.2): radio card per type, the generated form, the API's answers.
import { t, announce, isolated, formatTime, writeHeaders } from "./text.js";
import { collectParameters } from "./jobform.js";

const titles = JSON.parse(document.getElementById("job-titles")?.textContent || "{}");

function collect(form) {
  const jobType = form.querySelector('input[name="job_type"]:checked')?.value ?? null;
  return { jobType, parameters: collectParameters(form.querySelector("#job-params")) };
}

export function setUpNewJob({ onStarted }) {
  const dialog = document.getElementById("new-job-dialog");
  const form = document.getElementById("new-job-form");
  const alert = document.getElementById("new-job-alert");
  const submit = document.getElementById("new-job-submit");
  if (!dialog || !form) return;

  function clearErrors() {
    alert.hidden = true;
    for (const error of form.querySelectorAll("[data-error-for]")) { error.hidden = true; error.textContent = ""; }
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    for (const input of form.querySelectorAll(".input-error")) input.classList.remove("input-error");
  }

  function showAlert(title, text, link) {
    alert.querySelector("[data-alert-title]").textContent = title;
    alert.querySelector("[data-alert-text]").textContent = text;
    const anchor = alert.querySelector("[data-alert-link]");
    anchor.hidden = !link;
    if (link) anchor.href = link;
    alert.hidden = false;
  }

  function showFieldErrors(fields) {
    let first = null;
    const unplaced = [];
    for (const error of fields) {
      const name = String(error.field || "").replace(/^parameters\./, "");
      const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (!slot) { unplaced.push(`${name}: ${error.message}`); continue; }
      const known = t(`field.${error.code}`);
      slot.textContent = known === `field.${error.code}` ? error.message : `${known}: ${error.message}`;
      slot.hidden = false;
      const wrapper = slot.closest("[data-param]");
      for (const input of wrapper.querySelectorAll("input")) {
        input.setAttribute("aria-invalid", "true");
        if (input.classList.contains("input")) input.classList.add("input-error");
      }
      first ??= wrapper.querySelector("input");
    }
    showAlert(t("new.invalid"), unplaced.join("; "));
    first?.focus();
  }

  const callback = document.getElementById("new-job-callback");
  function showCallback(created) {
    form.hidden = true;
    callback.hidden = false;
    callback.querySelector("[data-callback-url]").value = created.callback_url ?? "";
    callback.querySelector("[data-callback-token]").value = created.callback_token;
    callback.querySelector("[data-callback-job]").href = `/jobs/${encodeURIComponent(created.id)}`;
    callback.querySelector("[data-callback-token]").focus();
  }
  for (const button of callback?.querySelectorAll("[data-copy]") ?? []) {
    button.addEventListener("click", async () => {
      const input = callback.querySelector(`[data-callback-${button.dataset.copy}]`);
      input.select();
      let copied = false;
      try { await navigator.clipboard.writeText(input.value); copied = true; } catch { /* no clipboard: selected for Ctrl-C */ }
      callback.querySelector("[data-copied]").textContent = copied ? t("new.copied") : t("new.copy_by_hand");
    });
  }
  // The token leaves the page when the dialog closes: it is not kept anywhere.
  dialog.addEventListener("close", () => {
    if (!callback || callback.hidden) return;
    for (const input of callback.querySelectorAll("input")) input.value = "";
    callback.querySelector("[data-copied]").textContent = "";
    callback.hidden = true;
    form.hidden = false;
  });

  document.getElementById("new-job-open")?.addEventListener("click", () => {
    clearErrors();
    dialog.showModal();
    form.querySelector('input[name="job_type"]:checked')?.focus();
  });
  // A different type brings a different form: its errors no longer apply.
  form.addEventListener("change", (event) => {
    if (event.target.name === "job_type") clearErrors();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const { jobType, parameters } = collect(form);
    if (!jobType) { showAlert(t("new.none_selected"), ""); return; }
    submit.disabled = true;
    submit.querySelector("[data-busy]").hidden = false;
    let response = null;
    try {
      response = await fetch("/api/jobs", {
        method: "POST",
        credentials: "same-origin",
        headers: writeHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ job_type: jobType, parameters }),
      });
    } catch {
      response = null;
    } finally {
      submit.disabled = false;
      submit.querySelector("[data-busy]").hidden = true;
    }
    if (!response) { showAlert(t("new.failed"), t("conn.lost")); return; }
    const body = await response.json().catch(() => ({}));
    if (response.status === 201) {
      announce(`${t("new.started")}: ${isolated(titles[jobType] ?? jobType)}`);
      onStarted?.(body);
      // An external job's worker needs its token, which the API shows this once: keep the
      // dialog open with it instead of closing.
      if (body.callback_token) showCallback(body);
      else dialog.close();
      return;
    }
    const error = body.error ?? {};
    if (error.code === "SLOT_BUSY") {
      const holder = error.running_job;
      let text = error.message ?? "";
      if (holder) {
        const when = holder.started_at ? `, ${t("job.started")} ${formatTime(new Date(holder.started_at))}` : "";
        text = `${t("new.busy_holder")}: ${titles[holder.job_type] ?? holder.job_type} (${holder.job_type}, ${t(`status.${holder.status}`)}${when})`;
      }
      showAlert(t("new.busy"), text, holder ? `/jobs/${encodeURIComponent(holder.id)}` : null);
      return;
    }
    if (error.code === "INVALID_PARAMETERS" && Array.isArray(error.fields)) {
      showFieldErrors(error.fields);
      return;
    }
    showAlert(t("new.failed"), error.message ?? `HTTP ${response.status}`);
  });
}
