// The one confirmation dialog (templates/_confirm_dialog.html) for batch actions and actions on
// selected jobs: nothing happens before "Ja, ausführen"; the dialog stays open with the reason
// when the action fails.
import { t } from "./text.js";

let pending = null; // {run, reason, returnTo}

/**
 * Ask first, then ``run(reason)``; it resolves to null when done or to a sentence saying why not.
 * @param {{title: string, text: string, reason?: boolean, run: (reason: string) => Promise<string|null>}} options
 */
export function confirmAction(options) {
  const dialog = document.getElementById("confirm-dialog");
  if (!dialog) return;
  pending = { ...options, returnTo: document.activeElement };
  dialog.querySelector("[data-confirm-title]").textContent = options.title;
  dialog.querySelector("[data-confirm-text]").textContent = options.text;
  dialog.querySelector("[data-confirm-reason]").hidden = !options.reason;
  dialog.querySelector("#confirm-reason").value = "";
  dialog.querySelector("[data-confirm-error]").hidden = true;
  dialog.showModal();
  if (options.reason) dialog.querySelector("#confirm-reason").focus();
}

export function setUpConfirm() {
  const dialog = document.getElementById("confirm-dialog");
  if (!dialog) return;
  const error = dialog.querySelector("[data-confirm-error]");
  const yes = dialog.querySelector("[data-confirm-yes]");
  const reasonBox = dialog.querySelector("#confirm-reason");
  dialog.addEventListener("close", () => {
    pending?.returnTo?.focus?.();
    pending = null;
  });
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!pending || yes.disabled) return;
    const reason = reasonBox.value.trim();
    if (pending.reason && !reason) {
      error.textContent = t("confirm.reason_required");
      error.hidden = false;
      reasonBox.setAttribute("aria-invalid", "true");
      reasonBox.focus();
      return;
    }
    reasonBox.removeAttribute("aria-invalid");
    yes.disabled = true;
    yes.querySelector("[data-busy]").hidden = false;
    let problem;
    try {
      problem = await pending.run(reason);
    } catch {
      problem = t("log.unavailable");
    } finally {
      yes.disabled = false;
      yes.querySelector("[data-busy]").hidden = true;
    }
    if (problem) {
      error.textContent = problem;
      error.hidden = false;
      return;
    }
    dialog.close();
  });
}

/** The API's sentence from an error response, or a general one. */
export async function problemOf(response) {
  if (!response) return t("conn.lost");
  try {
    const body = await response.json();
    return body?.error?.message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}
