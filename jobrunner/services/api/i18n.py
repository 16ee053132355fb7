"""The web UI's words, in German (the default, as the source documents are) and English.

The language comes from ``?lang=`` (remembered in a cookie), then the cookie, then the browser's
``Accept-Language``. Dates and durations are formatted in the browser with ``Intl`` for the same
language and the reader's time zone.
"""

from __future__ import annotations

LANGUAGES = ("de", "en")
DEFAULT_LANGUAGE = "de"
COOKIE = "lang"

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
        "new.none_selected": "Bitte einen Job-Typ wählen.",
        "new.required": "Pflichtfeld",
        "new.range": "Bereich",
        "new.pattern": "Format",
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
        "new.none_selected": "Please choose a job type.",
        "new.required": "required",
        "new.range": "range",
        "new.pattern": "format",
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


def translator(lang: str):  # type: ignore[no-untyped-def]
    table = TEXT[lang]

    def t(key: str, **values: str) -> str:
        text = table.get(key) or TEXT[DEFAULT_LANGUAGE].get(key, key)
        return text.format(**values) if values else text

    return t
