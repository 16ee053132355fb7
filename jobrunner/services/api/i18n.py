"""The web UI's words, in German (the default, as the source documents are) and English.

The language comes from ``?lang=`` (remembered in a cookie), then the cookie, then the browser's
``Accept-Language``. Dates and durations are formatted in the browser with ``Intl`` for the same
language and the reader's time zone.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import Cookie

LANGUAGES = ("de", "en")
DEFAULT_LANGUAGE = "de"
COOKIE = "lang"
COOKIE_MAX_AGE = 365 * 24 * 3600

TEXT: dict[str, dict[str, str]] = {
    "de": {
        "app.title": "Jobrunner",
        "nav.jobs": "Jobs",
        "nav.panel": "Verarbeitung",
        "nav.language": "Sprache",
        "nav.skip": "Zum Inhalt springen",
        "jobs.title": "Jobs",
        "jobs.new": "Neuer Job",
        "jobs.running": "Laufender Job",
        "jobs.none_running": "Gerade läuft kein Job.",
        "jobs.recent": "Letzte Jobs",
        "jobs.none": "Noch keine Jobs.",
        "col.type": "Typ",
        "col.status": "Status",
        "col.started": "Gestartet",
        "col.duration": "Dauer",
        "col.action": "Aktion",
        "job.started": "Gestartet",
        "job.created": "Angelegt",
        "job.finished": "Beendet",
        "job.elapsed": "Laufzeit",
        "job.duration": "Dauer",
        "job.exit_code": "Exit-Code",
        "job.error": "Fehler",
        "job.result": "Ergebnis",
        "webhooks.title": "Letzte Webhook-Logs",
        "webhooks.delivered": "zugestellt",
        "webhooks.failed": "fehlgeschlagen",
        "webhooks.retrying": "wird wiederholt",
        "webhooks.attempt": "Versuch",
        "webhooks.time": "Zeit",
        "webhooks.status_code": "HTTP-Status",
        "webhooks.error": "Fehler",
        "webhooks.delivery": "Zustell-ID",
        "job.parameters": "Parameter",
        "job.no_parameters": "Keine Parameter",
        "job.logs": "Logs anzeigen",
        "job.log": "Log-Ausgabe",
        "job.lines": "Zeilen",
        "job.cancel": "Abbrechen",
        "job.cancel_confirm": "Job wirklich abbrechen?",
        "job.cancel_confirm_text": (
            "Der Prozess wird beendet; bereits geschriebene Ergebnisse bleiben."
        ),
        "job.cancel_yes": "Ja, abbrechen",
        "job.cancel_no": "Weiterlaufen lassen",
        "job.cancel_requested": "Abbruch angefordert …",
        "job.download": "Log herunterladen",
        "artifacts.title": "Artefakte",
        "artifacts.archive": "Alle als ZIP herunterladen",
        "artifacts.none": "Keine Artefakte.",
        "artifacts.pending": (
            "Dateien, die der Job in JOBRUNNER_OUTPUT_DIR ablegt, erscheinen hier, sobald er endet."
        ),
        "artifacts.name": "Datei",
        "artifacts.size": "Größe",
        "artifacts.download": "{name} herunterladen",
        "job.back": "Zurück zur Übersicht",
        "job.autoscroll": "Auto-Scroll",
        "job.waiting": "Warte auf Ausgabe …",
        "job.progress": "Fortschritt",
        "job.entries": "Einträge",
        "job.id": "Job-ID",
        "job.external": (
            "Dieser Job wird extern bearbeitet: sein Worker meldet Fortschritt, Log-Zeilen und "
            "Ergebnis über die Callback-Adresse des Jobs."
        ),
        "job.external_waiting": "Warte auf die erste Meldung des externen Workers …",
        "log.search": "Im Log suchen",
        "log.search_button": "Suchen",
        "log.matches": "Treffer",
        "log.no_matches": "Keine Treffer",
        "log.prev": "Vorheriger Treffer",
        "log.next": "Nächster Treffer",
        "log.top": "Zum Anfang",
        "log.end": "Zum Ende",
        "log.loading": "Lade …",
        "log.empty": "Keine Log-Zeilen.",
        "log.unavailable": "Das Log kann gerade nicht geladen werden.",
        "new.title": "Neuen Job starten",
        "new.type": "Job-Typ",
        "new.parameters_for": "Parameter für",
        "new.start": "Job starten",
        "new.cancel": "Abbrechen",
        "new.close": "Schließen",
        "new.busy": "Es läuft bereits ein Job",
        "new.busy_holder": "Die Sperre hält",
        "new.busy_open": "Laufenden Job ansehen",
        "new.invalid": "Bitte die markierten Felder korrigieren.",
        "new.failed": "Der Job konnte nicht gestartet werden",
        "new.started": "Job gestartet",
        "new.external_title": "Externer Job gestartet",
        "new.external_text": "Diese Arbeit erledigt ein Worker außerhalb von jobrunner. Geben Sie "
        "ihm die Adresse und den Token: Der Token wird nur jetzt angezeigt und nirgends "
        "gespeichert.",
        "new.callback_url": "Adresse für Meldungen (callback_url)",
        "new.callback_token": "Token (callback_token)",
        "new.copy": "Kopieren",
        "new.copied": "In die Zwischenablage kopiert.",
        "new.copy_by_hand": "Markiert: mit Strg+C kopieren.",
        "new.external_open": "Job ansehen",
        "new.none_selected": "Bitte einen Job-Typ wählen.",
        "new.required": "Pflichtfeld",
        "new.range": "Bereich",
        "new.pattern": "muss dem Muster entsprechen:",
        "status.pending": "Wartend",
        "status.running": "Läuft",
        "status.completed": "Erfolgreich",
        "status.failed": "Fehlgeschlagen",
        "status.cancelled": "Abgebrochen",
        "status.label": "Status",
        "panel.title": "Verarbeitung",
        "panel.close": "Panel schließen",
        "panel.older": "Ältere laden",
        "panel.empty": "Keine Jobs.",
        "panel.end": "Keine älteren Jobs.",
        "conn.lost": "Verbindung unterbrochen \u2013 verbinde neu …",
        "conn.back": "Wieder verbunden.",
        "live.finished": "Job {title} beendet: {status}",
        "live.started": "Job {title} gestartet",
        "bool.true": "ja",
        "bool.false": "nein",
        "error.not_found": "Diesen Job gibt es nicht.",
        "notfound.title": "Nicht gefunden",
        "notfound.page": "Unter dieser Adresse gibt es nichts.",
        "notfound.back_jobs": "Zurück zu den Jobs",
        "notfound.back_batches": "Zurück zu den Batches",
        # The sign-in page (its own template, security/templates/login.html). login.intro is
        # markup: the commands are set as code.
        "login.title": "Anmelden",
        "login.intro": "Melden Sie sich mit einem API-Token an. <code>jobrunner up</code> hat "
        "den Admin-Token beim ersten Start ausgegeben; <code>jobrunner token create</code> "
        "erstellt weitere.",
        "login.signed_in_as": "Angemeldet als",
        "login.token": "Token",
        "login.submit": "Anmelden",
        "login.unknown_token": "Diesen Token gibt es nicht, oder er ist widerrufen oder "
        "abgelaufen.",
        # Batches, the job center (issue 13).
        "nav.batches": "Batches",
        "nav.main": "Bereiche",
        "batches.title": "Batches",
        "batches.new": "Neuer Batch",
        "batches.none": "Keine Batches gefunden.",
        "batches.filters": "Filter",
        "batches.any": "Alle",
        "batches.archived": "Archiv",
        "batches.archived_false": "Ohne archivierte",
        "batches.archived_true": "Nur archivierte",
        "batches.archived_all": "Alle",
        "batches.search": "Suche",
        "batches.search_placeholder": "Name oder ID",
        "batches.created_from": "Angelegt ab",
        "batches.created_to": "Angelegt bis",
        "batches.apply": "Filtern",
        "batches.reset": "Zurücksetzen",
        "filters.bad_choice": (
            "„{value}“ ist kein möglicher Wert für {name}: möglich sind {choices}."
        ),
        "filters.search_too_long": (
            "Die Suche ({name}) ist länger als {max} Zeichen: bitte kürzen."
        ),
        "filters.search_nul": (
            "Die Suche ({name}) enthält ein NUL-Zeichen (%00), das kein Name und keine ID "
            "enthält: bitte entfernen."
        ),
        "filters.bad_date": (
            "„{value}“ ist kein Datum für {name}: bitte als JJJJ-MM-TT (YYYY-MM-DD)."
        ),
        "filters.bad_range": (
            "created_from {start} liegt nach created_to {end}: nichts könnte passen; "
            "bitte tauschen."
        ),
        "filters.fix": (
            "Die Liste bleibt leer, bis der Filter berichtigt ist (oder „Zurücksetzen“)."
        ),
        "batches.more": "Weitere laden",
        "batches.end": "Keine weiteren Batches.",
        "batches.unavailable": "Die Batches können gerade nicht geladen werden.",
        "batches.shown": "{count} Batches angezeigt",
        "col.name": "Name",
        "col.progress": "Fortschritt",
        "col.jobs": "Jobs",
        "col.created": "Angelegt",
        "col.index": "Nr.",
        "col.attempt": "Versuch",
        "col.parameters": "Parameter",
        "col.select": "Auswahl",
        "count.pending": "wartend",
        "count.running": "laufend",
        "count.completed": "erfolgreich",
        "count.failed": "fehlgeschlagen",
        "count.cancelled": "abgebrochen",
        "count.total": "{done} von {total} beendet",
        "batch.id": "Batch-ID",
        "batch.back": "Zurück zu den Batches",
        "batch.jobs": "Jobs des Batches",
        "batch.jobs_more": "Weitere Jobs laden",
        "batch.jobs_end": "Alle Jobs geladen.",
        "batch.jobs_none": "Keine Jobs.",
        "batch.archived": "Archiviert",
        "batch.requested_by": "Angelegt von",
        "batch.reason": "Grund",
        "batch.job_types": "Job-Typen",
        "batch.not_found": "Diesen Batch gibt es nicht.",
        "batch.live": "Batch {name}: {status}",
        "batch.actions": "Aktionen",
        "batch.action.restart": "Alle neu starten",
        "batch.action.pending": "Ausstehende neu starten",
        "batch.action.fail": "Batch abbrechen (fehlgeschlagen)",
        "batch.action.archive": "Archivieren",
        "batch.action.unarchive": "Aus dem Archiv holen",
        "batch.confirm.restart": "Alle Jobs des Batches neu starten?",
        "batch.confirm.restart_text": (
            "Jeder Job läuft als neuer Versuch noch einmal; laufende werden zuerst abgebrochen."
        ),
        "batch.confirm.pending": "Ausstehende Jobs neu starten?",
        "batch.confirm.pending_text": (
            "Fehlgeschlagene und abgebrochene Jobs laufen als neuer Versuch; erfolgreiche, "
            "laufende und wartende bleiben."
        ),
        "batch.confirm.fail": "Batch als fehlgeschlagen beenden?",
        "batch.confirm.fail_text": "Wartende Jobs starten nicht mehr, laufende werden abgebrochen.",
        "batch.confirm.archive": "Batch archivieren?",
        "batch.confirm.archive_text": (
            "Er verschwindet aus der Standardliste; nichts wird gelöscht."
        ),
        "batch.confirm.unarchive": "Batch aus dem Archiv holen?",
        "batch.confirm.unarchive_text": "Er erscheint wieder in der Standardliste.",
        "confirm.yes": "Ja, ausführen",
        "confirm.no": "Zurück",
        "confirm.reason": "Grund",
        "confirm.reason_required": "Bitte einen Grund angeben.",
        "action.done": "{action}: {count} Jobs betroffen",
        "newbatch.title": "Neuen Batch zusammenstellen",
        "newbatch.name": "Name des Batches",
        "newbatch.add": "Zum Batch hinzufügen",
        "newbatch.added": "Job hinzugefügt: {title}",
        "newbatch.list": "Jobs im Batch",
        "newbatch.empty": "Noch keine Jobs im Batch.",
        "newbatch.remove": "Entfernen",
        "newbatch.remove_row": "Zeile {row} entfernen",
        "newbatch.clear": "Liste leeren",
        "newbatch.import": "Datei importieren (CSV oder JSON)",
        "newbatch.import_help": (
            "Ein Job pro Zeile, vom oben gewählten Job-Typ; die Kopfzeile (CSV) oder die Schlüssel "
            "(JSON) nennen die Parameter."
        ),
        "newbatch.import_done": "{count} Zeilen importiert.",
        "newbatch.import_errors": "{count} Zeilen haben Fehler; nichts wurde gesendet.",
        "newbatch.unreadable": "Die Datei kann nicht gelesen werden",
        "newbatch.row": "Zeile",
        "newbatch.start": "Batch starten",
        "newbatch.started": "Batch gestartet",
        "newbatch.failed": "Der Batch konnte nicht gestartet werden",
        "newbatch.invalid": "Bitte die markierten Zeilen korrigieren oder entfernen.",
        "newbatch.no_jobs": "Bitte mindestens einen Job hinzufügen.",
        "newbatch.name_required": "Bitte einen Namen angeben.",
        "newbatch.more_rows": "… und {count} weitere Zeilen ohne Fehler (nicht angezeigt)",
        "select.all": "Alle auf dieser Seite auswählen",
        "select.one": "Auswählen: {title}",
        "select.count": "{count} ausgewählt",
        "select.restart": "Neu starten",
        "select.cancel": "Abbrechen",
        "select.archive": "Archivieren",
        "select.confirm.restart": "{count} Jobs neu starten?",
        "select.confirm.restart_text": (
            "Jeder beendete Job läuft als neuer Versuch; wartende und laufende werden übersprungen."
        ),
        "select.confirm.cancel": "{count} Jobs abbrechen?",
        "select.confirm.cancel_text": (
            "Laufende Prozesse werden beendet; beendete Jobs bleiben, wie sie sind."
        ),
        "select.confirm.archive": "{count} Jobs archivieren?",
        "select.confirm.archive_text": (
            "Sie verschwinden aus der Standardliste; nichts wird gelöscht."
        ),
        "select.result": "{ok} erledigt, {failed} nicht möglich",
        "job.attempt": "Versuch",
        "job.attempts": "Versuche",
        "job.batch": "Batch",
        "job.batch_index": "Platz im Batch",
        "job.superseded": "Es gibt einen neueren Versuch.",
        # Field errors of POST /api/jobs, by code; the API's own sentence follows.
        "field.REQUIRED": "Pflichtfeld",
        "field.PATTERN_MISMATCH": "Passt nicht zum erwarteten Format",
        "field.OUT_OF_RANGE": "Außerhalb des erlaubten Bereichs",
        "field.INVALID_TYPE": "Ungültiger Wert",
        "field.INVALID_CHOICE": "Keine erlaubte Auswahl",
        "field.DUPLICATE_CHOICE": "Eine Auswahl ist doppelt",
        "field.TOO_LONG": "Zu lang",
        "field.LEADING_DASH": "Darf nicht mit einem Bindestrich beginnen",
        "field.INVALID_CHARACTER": "Enthält unerlaubte Zeichen",
        "field.UNKNOWN_PARAMETER": "Unbekannter Parameter",
    },
    "en": {
        "app.title": "Jobrunner",
        "nav.jobs": "Jobs",
        "nav.panel": "Activity",
        "nav.language": "Language",
        "nav.skip": "Skip to content",
        "jobs.title": "Jobs",
        "jobs.new": "New job",
        "jobs.running": "Running job",
        "jobs.none_running": "No job is running.",
        "jobs.recent": "Recent jobs",
        "jobs.none": "No jobs yet.",
        "col.type": "Type",
        "col.status": "Status",
        "col.started": "Started",
        "col.duration": "Duration",
        "col.action": "Action",
        "job.started": "Started",
        "job.created": "Created",
        "job.finished": "Finished",
        "job.elapsed": "Elapsed",
        "job.duration": "Duration",
        "job.exit_code": "Exit code",
        "job.error": "Error",
        "job.result": "Result",
        "webhooks.title": "Latest webhook logs",
        "webhooks.delivered": "delivered",
        "webhooks.failed": "failed",
        "webhooks.retrying": "retrying",
        "webhooks.attempt": "Attempt",
        "webhooks.time": "Time",
        "webhooks.status_code": "HTTP status",
        "webhooks.error": "Error",
        "webhooks.delivery": "Delivery id",
        "job.parameters": "Parameters",
        "job.no_parameters": "No parameters",
        "job.logs": "Show logs",
        "job.log": "Log output",
        "job.lines": "lines",
        "job.cancel": "Cancel",
        "job.cancel_confirm": "Really cancel this job?",
        "job.cancel_confirm_text": "The process is stopped; results already written stay.",
        "job.cancel_yes": "Yes, cancel",
        "job.cancel_no": "Keep running",
        "job.cancel_requested": "Cancel requested …",
        "job.download": "Download log",
        "artifacts.title": "Artifacts",
        "artifacts.archive": "Download all as ZIP",
        "artifacts.none": "No artifacts.",
        "artifacts.pending": (
            "Files the job leaves in JOBRUNNER_OUTPUT_DIR appear here once it ends."
        ),
        "artifacts.name": "File",
        "artifacts.size": "Size",
        "artifacts.download": "Download {name}",
        "job.back": "Back to the overview",
        "job.autoscroll": "Auto-scroll",
        "job.waiting": "Waiting for output …",
        "job.progress": "Progress",
        "job.entries": "entries",
        "job.id": "Job ID",
        "job.external": (
            "This job is done elsewhere: its worker reports progress, log lines and the result "
            "to the job's callback address."
        ),
        "job.external_waiting": "Waiting for the external worker's first report …",
        "log.search": "Search the log",
        "log.search_button": "Search",
        "log.matches": "matches",
        "log.no_matches": "No matches",
        "log.prev": "Previous match",
        "log.next": "Next match",
        "log.top": "To the start",
        "log.end": "To the end",
        "log.loading": "Loading …",
        "log.empty": "No log lines.",
        "log.unavailable": "The log cannot be loaded right now.",
        "new.title": "Start a new job",
        "new.type": "Job type",
        "new.parameters_for": "Parameters for",
        "new.start": "Start job",
        "new.cancel": "Cancel",
        "new.close": "Close",
        "new.busy": "A job is already running",
        "new.busy_holder": "The lock is held by",
        "new.busy_open": "View the running job",
        "new.invalid": "Please correct the marked fields.",
        "new.failed": "The job could not be started",
        "new.started": "Job started",
        "new.external_title": "External job started",
        "new.external_text": "A worker outside jobrunner does this work. Give it the address and "
        "the token: the token is shown only now and stored nowhere.",
        "new.callback_url": "Address for reports (callback_url)",
        "new.callback_token": "Token (callback_token)",
        "new.copy": "Copy",
        "new.copied": "Copied to the clipboard.",
        "new.copy_by_hand": "Selected: copy it with Ctrl+C.",
        "new.external_open": "Open the job",
        "new.none_selected": "Please choose a job type.",
        "new.required": "required",
        "new.range": "range",
        "new.pattern": "must match",
        "status.pending": "Pending",
        "status.running": "Running",
        "status.completed": "Completed",
        "status.failed": "Failed",
        "status.cancelled": "Cancelled",
        "status.label": "Status",
        "panel.title": "Activity",
        "panel.close": "Close panel",
        "panel.older": "Load older",
        "panel.empty": "No jobs.",
        "panel.end": "No older jobs.",
        "conn.lost": "Connection lost \u2013 reconnecting …",
        "conn.back": "Connected again.",
        "live.finished": "Job {title} finished: {status}",
        "live.started": "Job {title} started",
        "bool.true": "yes",
        "bool.false": "no",
        "error.not_found": "There is no such job.",
        "notfound.title": "Not found",
        "notfound.page": "There is nothing at this address.",
        "notfound.back_jobs": "Back to the jobs",
        "notfound.back_batches": "Back to the batches",
        "login.title": "Sign in",
        "login.intro": "Sign in with an API token. <code>jobrunner up</code> printed the admin "
        "token on its first start; <code>jobrunner token create</code> makes more.",
        "login.signed_in_as": "Signed in as",
        "login.token": "Token",
        "login.submit": "Sign in",
        "login.unknown_token": "That token is unknown, revoked or expired.",
        # Batches, the job center (issue 13).
        "nav.batches": "Batches",
        "nav.main": "Sections",
        "batches.title": "Batches",
        "batches.new": "New batch",
        "batches.none": "No batches found.",
        "batches.filters": "Filters",
        "batches.any": "All",
        "batches.archived": "Archive",
        "batches.archived_false": "Not archived",
        "batches.archived_true": "Archived only",
        "batches.archived_all": "All",
        "batches.search": "Search",
        "batches.search_placeholder": "Name or ID",
        "batches.created_from": "Created from",
        "batches.created_to": "Created until",
        "batches.apply": "Apply",
        "batches.reset": "Reset",
        "filters.bad_choice": "“{value}” is not a possible {name}: choose one of {choices}.",
        "filters.search_too_long": "The {name} is longer than {max} characters: shorten it.",
        "filters.search_nul": (
            "The {name} contains a NUL character (%00), which no name or id holds: remove it."
        ),
        "filters.bad_date": "“{value}” is not a date for {name}: write it as YYYY-MM-DD.",
        "filters.bad_range": (
            "created_from {start} is later than created_to {end}: nothing could match; swap them."
        ),
        "filters.fix": "The list stays empty until the filter is fixed (or Reset).",
        "batches.more": "Load more",
        "batches.end": "No more batches.",
        "batches.unavailable": "The batches cannot be loaded right now.",
        "batches.shown": "{count} batches shown",
        "col.name": "Name",
        "col.progress": "Progress",
        "col.jobs": "Jobs",
        "col.created": "Created",
        "col.index": "No.",
        "col.attempt": "Attempt",
        "col.parameters": "Parameters",
        "col.select": "Selection",
        "count.pending": "pending",
        "count.running": "running",
        "count.completed": "completed",
        "count.failed": "failed",
        "count.cancelled": "cancelled",
        "count.total": "{done} of {total} ended",
        "batch.id": "Batch ID",
        "batch.back": "Back to the batches",
        "batch.jobs": "Jobs of the batch",
        "batch.jobs_more": "Load more jobs",
        "batch.jobs_end": "All jobs loaded.",
        "batch.jobs_none": "No jobs.",
        "batch.archived": "Archived",
        "batch.requested_by": "Created by",
        "batch.reason": "Reason",
        "batch.job_types": "Job types",
        "batch.not_found": "There is no such batch.",
        "batch.live": "Batch {name}: {status}",
        "batch.actions": "Actions",
        "batch.action.restart": "Restart all",
        "batch.action.pending": "Restart unfinished",
        "batch.action.fail": "Fail the batch",
        "batch.action.archive": "Archive",
        "batch.action.unarchive": "Unarchive",
        "batch.confirm.restart": "Restart every job of the batch?",
        "batch.confirm.restart_text": (
            "Every job runs again as a new attempt; running ones are cancelled first."
        ),
        "batch.confirm.pending": "Restart the unfinished jobs?",
        "batch.confirm.pending_text": (
            "Failed and cancelled jobs run again as a new attempt; completed, running and pending "
            "ones stay."
        ),
        "batch.confirm.fail": "End this batch as failed?",
        "batch.confirm.fail_text": "Pending jobs never start, running ones are cancelled.",
        "batch.confirm.archive": "Archive this batch?",
        "batch.confirm.archive_text": "It leaves the default list; nothing is deleted.",
        "batch.confirm.unarchive": "Unarchive this batch?",
        "batch.confirm.unarchive_text": "It shows in the default list again.",
        "confirm.yes": "Yes, go ahead",
        "confirm.no": "Go back",
        "confirm.reason": "Reason",
        "confirm.reason_required": "Please give a reason.",
        "action.done": "{action}: {count} jobs affected",
        "newbatch.title": "Compose a new batch",
        "newbatch.name": "Batch name",
        "newbatch.add": "Add to the batch",
        "newbatch.added": "Job added: {title}",
        "newbatch.list": "Jobs in the batch",
        "newbatch.empty": "No jobs in the batch yet.",
        "newbatch.remove": "Remove",
        "newbatch.remove_row": "Remove row {row}",
        "newbatch.clear": "Clear the list",
        "newbatch.import": "Import a file (CSV or JSON)",
        "newbatch.import_help": (
            "One job per row, of the job type chosen above; the header row (CSV) or the keys "
            "(JSON) name the parameters."
        ),
        "newbatch.import_done": "{count} rows imported.",
        "newbatch.import_errors": "{count} rows have errors; nothing was sent.",
        "newbatch.unreadable": "The file cannot be read",
        "newbatch.row": "Row",
        "newbatch.start": "Start the batch",
        "newbatch.started": "Batch started",
        "newbatch.failed": "The batch could not be started",
        "newbatch.invalid": "Please fix or remove the marked rows.",
        "newbatch.no_jobs": "Please add at least one job.",
        "newbatch.name_required": "Please give the batch a name.",
        "newbatch.more_rows": "… and {count} more rows without errors (not shown)",
        "select.all": "Select all on this page",
        "select.one": "Select: {title}",
        "select.count": "{count} selected",
        "select.restart": "Restart",
        "select.cancel": "Cancel",
        "select.archive": "Archive",
        "select.confirm.restart": "Restart {count} jobs?",
        "select.confirm.restart_text": (
            "Every ended job runs again as a new attempt; pending and running ones are skipped."
        ),
        "select.confirm.cancel": "Cancel {count} jobs?",
        "select.confirm.cancel_text": "Running processes are stopped; ended jobs stay as they are.",
        "select.confirm.archive": "Archive {count} jobs?",
        "select.confirm.archive_text": "They leave the default list; nothing is deleted.",
        "select.result": "{ok} done, {failed} not possible",
        "job.attempt": "Attempt",
        "job.attempts": "Attempts",
        "job.batch": "Batch",
        "job.batch_index": "Place in the batch",
        "job.superseded": "There is a newer attempt.",
        "field.REQUIRED": "Required",
        "field.PATTERN_MISMATCH": "Does not match the expected format",
        "field.OUT_OF_RANGE": "Out of range",
        "field.INVALID_TYPE": "Not a valid value",
        "field.INVALID_CHOICE": "Not one of the choices",
        "field.DUPLICATE_CHOICE": "A choice is repeated",
        "field.TOO_LONG": "Too long",
        "field.LEADING_DASH": "Must not start with a dash",
        "field.INVALID_CHARACTER": "Contains characters that are not allowed",
        "field.UNKNOWN_PARAMETER": "Unknown parameter",
    },
}


def negotiate(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The page language: explicit choice, then the remembered one, then the browser's."""
    for choice in (query, cookie):
        if choice in LANGUAGES:
            return choice
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            ranked.append((-quality, i, primary))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


def language_of(request: Request[Any, Any, Any]) -> str:
    """The language of a page (the UI's and the sign-in page's alike)."""
    return negotiate(
        request.query_params.get("lang"),
        request.cookies.get(COOKIE),
        request.headers.get("accept-language"),
    )


def remembered_choice(request: Request[Any, Any, Any]) -> list[Cookie]:
    """The cookie that keeps a ``?lang=`` choice for the next requests (a form's POST has no
    ``?lang=``), or none when the request made no choice."""
    chosen = request.query_params.get("lang")
    if chosen not in LANGUAGES:
        return []
    return [Cookie(key=COOKIE, value=chosen, max_age=COOKIE_MAX_AGE, samesite="lax")]


def translator(lang: str):  # type: ignore[no-untyped-def]
    table = TEXT[lang]

    def t(key: str, **values: str) -> str:
        text = table.get(key) or TEXT[DEFAULT_LANGUAGE].get(key, key)
        return text.format(**values) if values else text

    return t
