// One log line as a row: time prefix, level colour, ANSI-coloured text.
import { renderAnsi } from "./ansi.js";
import { lang } from "./text.js";

const clock = new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const LEVELS = new Set(["DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]);

export function lineTime(line) {
  const raw = line.timestamp ?? line.ts;
  const d = typeof raw === "number" ? new Date(raw * 1000) : new Date(raw);
  return Number.isNaN(d.getTime()) ? "" : clock.format(d);
}

export function buildRow(line, row = document.createElement("div")) {
  const level = LEVELS.has(line.level) ? line.level : "INFO";
  row.className = `log-row lvl-${level}${line.stream === "stderr" ? " stderr" : ""}`;
  row.dataset.seq = line.seq;
  row.replaceChildren();
  const ts = document.createElement("span");
  ts.className = "ts";
  ts.textContent = lineTime(line);
  const text = document.createElement("span");
  text.className = "txt";
  text.dir = "auto"; // the tool's text, isolated: a bidirectional override in it stops at its end
  renderAnsi(text, line.text ?? "");
  row.append(ts, text);
  return row;
}
