// The page's words (from the JSON block the server renders) and Intl formatting for its language.
const table = JSON.parse(document.getElementById("ui-text")?.textContent || "{}");
export const lang = document.documentElement.lang || "de";

export function t(key, values = {}) {
  const text = table[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => values[name] ?? "");
}

const dateTime = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "medium" });
const timeOnly = new Intl.DateTimeFormat(lang, { timeStyle: "medium" });
const dayTime = new Intl.DateTimeFormat(lang, { weekday: "short", hour: "2-digit", minute: "2-digit" });
const shortDate = new Intl.DateTimeFormat(lang, { dateStyle: "short", timeStyle: "short" });
const relative = new Intl.RelativeTimeFormat(lang, { numeric: "auto", style: "short" });
const relativeDay = new Intl.RelativeTimeFormat(lang, { numeric: "auto" });
const number = new Intl.NumberFormat(lang);

export const formatNumber = (n) => number.format(n);
export const formatTime = (d) => timeOnly.format(d);
export const formatDateTime = (d) => dateTime.format(d);

// "Heute 12:15" / "Gestern 09:30" / a short date: how PRD-005 shows recent jobs.
export function formatRelativeDay(d) {
  const now = new Date();
  const startOf = (x) => new Date(x.getFullYear(), x.getMonth(), x.getDate()).getTime();
  const days = Math.round((startOf(d) - startOf(now)) / 86400000);
  const hm = d.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
  if (days === 0 || days === -1) {
    const word = relativeDay.format(days, "day");
    return `${word.charAt(0).toUpperCase()}${word.slice(1)} ${hm}`;
  }
  if (days > -7) return dayTime.format(d);
  return shortDate.format(d);
}

export function formatRelative(d) {
  const seconds = (d.getTime() - Date.now()) / 1000;
  const abs = Math.abs(seconds);
  if (abs < 45) return relative.format(Math.round(seconds), "second");
  if (abs < 2700) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 79200) return relative.format(Math.round(seconds / 3600), "hour");
  return relative.format(Math.round(seconds / 86400), "day");
}

// 00:05:23, with days in front once a job runs that long.
export function formatDuration(totalSeconds) {
  const s = Math.max(0, Math.floor(totalSeconds));
  const pad = (n) => String(n).padStart(2, "0");
  const hms = `${pad(Math.floor((s % 86400) / 3600))}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
  const days = Math.floor(s / 86400);
  return days ? `${days} d ${hms}` : hms;
}

// Server-rendered <time data-fmt> and [data-duration] elements, formatted for the reader.
export function formatIn(root) {
  for (const el of root.querySelectorAll("time[data-fmt]")) {
    const d = new Date(el.getAttribute("datetime"));
    if (Number.isNaN(d.getTime())) continue;
    const fmt = el.dataset.fmt;
    el.textContent = fmt === "time" ? formatTime(d) : fmt === "relday" ? formatRelativeDay(d) : fmt === "relative" ? formatRelative(d) : formatDateTime(d);
    el.title = formatDateTime(d);
  }
  for (const el of root.querySelectorAll("[data-duration]")) {
    el.textContent = formatDuration(Number(el.dataset.duration));
  }
}

// Live clocks: every [data-elapsed][data-since] shows the time since its start.
export function tickClocks(root = document) {
  for (const el of root.querySelectorAll("[data-elapsed][data-since]")) {
    el.textContent = formatDuration((Date.now() - Date.parse(el.dataset.since)) / 1000);
  }
}

let announceTimer = 0;
// A name a user or a tool gave, inside plain text no element can isolate (the page's title, an
// announcement): its own bidirectional controls dropped, then wrapped in FIRST STRONG ISOLATE ...
// POP DIRECTIONAL ISOLATE, so it cannot turn the text after it around.
const BIDI_CONTROLS = /[\u202a-\u202e\u2066-\u2069]/g;
export function isolated(text) {
  return `\u2068${withoutBidiControls(text)}\u2069`;
}

// ``text`` without the bidirectional embeddings, overrides and isolates the API refuses in names
// and reasons (U+202A-U+202E, U+2066-U+2069).
export function withoutBidiControls(text) {
  return String(text).replace(BIDI_CONTROLS, "");
}

// ``parts`` (strings, and {value} for text a user or a tool gave) into ``element``: each value
// in a <bdi>, so an override in it cannot turn the text after it around.
export function fillIsolated(element, parts) {
  element.replaceChildren(...parts.map((part) => {
    if (typeof part === "string") return part;
    const bdi = document.createElement("bdi");
    bdi.textContent = part.value;
    return bdi;
  }));
}

// Polite announcements for screen readers (finishes, starts), never one per log line.
export function announce(message) {
  const region = document.getElementById("announcer");
  if (!region) return;
  clearTimeout(announceTimer);
  region.textContent = "";
  announceTimer = setTimeout(() => { region.textContent = message; }, 50);
}

// Headers for a request that changes something: the browser session's CSRF token.
export function writeHeaders(extra = {}) {
  const token = document.querySelector('meta[name="csrf-token"]')?.content;
  return { Accept: "application/json", ...(token ? { "X-CSRF-Token": token } : {}), ...extra };
}
