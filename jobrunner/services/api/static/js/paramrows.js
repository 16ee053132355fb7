// Parameter rows from a file (CSV or JSON), checked against a job type's schema in the browser
// before anything is sent. Pure functions, no page access: tests run them in Node as well.
// The checks mirror jobrunner/common/jobtypes.py (validate_parameters): same codes, same
// English sentences, so a row the browser lets through is one the API accepts.

export const MAX_ROWS = 10000;
export const MAX_FILE_BYTES = 16 * 1024 * 1024;
const MAX_STRING_LENGTH = 4096;

/** A file-level problem (unreadable, bad header): nothing in it is imported. */
export class FileProblem extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function pickDelimiter(text) {
  // The first line decides, counted outside quotes: German spreadsheets write ";".
  const counts = { ",": 0, ";": 0, "\t": 0 };
  let quoted = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    else if (!quoted && (ch === "\n" || ch === "\r")) break;
    else if (!quoted && ch in counts) counts[ch] += 1;
  }
  const [best, count] = Object.entries(counts).sort((a, b) => b[1] - a[1])[0];
  return count > 0 ? best : ",";
}

/** RFC 4180 records: [{line, cells}], ``line`` being where the record starts (1-based). */
export function parseCsv(text) {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const delimiter = pickDelimiter(text);
  const records = [];
  let cells = [];
  let cell = "";
  let quoted = false;
  let line = 1;
  let start = 1;
  let i = 0;
  const endRecord = () => {
    cells.push(cell);
    records.push({ line: start, cells });
    cells = [];
    cell = "";
  };
  while (i < text.length) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"') {
        if (text[i + 1] === '"') { cell += '"'; i += 2; continue; }
        quoted = false;
      } else {
        if (ch === "\n") line += 1;
        cell += ch;
      }
      i += 1;
      continue;
    }
    if (ch === '"' && cell === "") quoted = true;
    else if (ch === delimiter) { cells.push(cell); cell = ""; }
    else if (ch === "\r" || ch === "\n") {
      if (ch === "\r" && text[i + 1] === "\n") i += 1;
      endRecord();
      line += 1;
      start = line;
    } else cell += ch;
    i += 1;
  }
  if (quoted) throw new FileProblem("UNCLOSED_QUOTE", `a quoted cell starting in line ${start} is never closed`);
  if (cell !== "" || cells.length) endRecord();
  // Blank lines (a trailing newline, an empty line between rows) are no rows.
  return records.filter((r) => r.cells.some((c) => c.trim() !== ""));
}

const TRUE = new Set(["true", "1", "yes", "ja", "wahr", "x"]);
const FALSE = new Set(["false", "0", "no", "nein", "falsch"]);

/** A CSV cell as the parameter's type; what cannot be converted stays text for the check. */
export function fromCell(param, raw) {
  const text = raw.trim();
  switch (param.type) {
    case "integer":
      return /^-?\d+$/.test(text) ? Number(text) : raw;
    case "bool":
      if (TRUE.has(text.toLowerCase())) return true;
      if (FALSE.has(text.toLowerCase())) return false;
      return raw;
    case "enum":
      return text;
    case "multi_enum":
      return text.split(/[;,|]/).map((v) => v.trim()).filter((v) => v !== "");
    default:
      return raw;
  }
}

const patterns = new Map(); // one compilation per pattern, not one per row

function compiled(pattern) {
  if (!patterns.has(pattern)) {
    let re = null; // a Python-only construct: the API checks it
    try {
      re = new RegExp(`^(?:${pattern})$`);
    } catch { /* keep null */ }
    patterns.set(pattern, re);
  }
  return patterns.get(pattern);
}

function checkValue(param, value) {
  const values = new Set((param.choices ?? []).map((c) => c.value));
  const sorted = [...values].sort().join(", ");
  switch (param.type) {
    case "string": {
      if (typeof value !== "string") return ["INVALID_TYPE", "must be a string"];
      const limit = Math.min(param.max_length ?? 256, MAX_STRING_LENGTH);
      if ([...value].length > limit) return ["TOO_LONG", `must be at most ${limit} characters`];
      if (/[\0\n\r]/.test(value)) return ["INVALID_CHARACTER", "must not contain NUL bytes or line breaks"];
      if (value.startsWith("-") && !param.allow_leading_dash) return ["LEADING_DASH", "must not start with '-'"];
      if (param.pattern) {
        const re = compiled(param.pattern);
        if (re && !re.test(value)) {
          // The type's words first, as the server says it (few read a regex).
          const rule = `must match ${param.pattern}`;
          return ["PATTERN_MISMATCH", param.pattern_help ? `must be ${param.pattern_help} (${rule})` : rule];
        }
      }
      return null;
    }
    case "bool":
      return typeof value === "boolean" ? null : ["INVALID_TYPE", "must be true or false"];
    case "integer":
      if (typeof value !== "number" || !Number.isInteger(value)) return ["INVALID_TYPE", "must be a whole number"];
      if (!Number.isSafeInteger(value)) return ["OUT_OF_RANGE", "is too large"];
      if (param.minimum != null && value < param.minimum) return ["OUT_OF_RANGE", `must be at least ${param.minimum}`];
      if (param.maximum != null && value > param.maximum) return ["OUT_OF_RANGE", `must be at most ${param.maximum}`];
      return null;
    case "enum":
      return typeof value === "string" && values.has(value) ? null : ["INVALID_CHOICE", `must be one of ${sorted}`];
    case "multi_enum": {
      if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) return ["INVALID_TYPE", "must be a list of strings"];
      const bad = value.find((v) => !values.has(v));
      if (bad !== undefined) return ["INVALID_CHOICE", `'${bad}' is not one of ${sorted}`];
      if (new Set(value).size !== value.length) return ["DUPLICATE_CHOICE", "must not repeat a choice"];
      return null;
    }
    default:
      return null;
  }
}

/** Field errors [{field, code, message}] of ``given`` against ``schema`` (name -> parameter). */
export function checkParameters(typeName, schema, given) {
  if (given === null || typeof given !== "object" || Array.isArray(given)) {
    return [{ field: "parameters", code: "INVALID_TYPE", message: "must be an object" }];
  }
  const errors = [];
  for (const name of Object.keys(given)) {
    if (!Object.hasOwn(schema, name)) {
      errors.push({ field: `parameters.${name}`, code: "UNKNOWN_PARAMETER", message: `${typeName} has no parameter '${name}'` });
    }
  }
  for (const [name, param] of Object.entries(schema)) {
    const field = `parameters.${name}`;
    if (!Object.hasOwn(given, name) || given[name] === null) {
      if (param.required) errors.push({ field, code: "REQUIRED", message: "is required" });
      continue;
    }
    const error = checkValue(param, given[name]);
    if (error) errors.push({ field, code: error[0], message: error[1] });
  }
  return errors;
}

function rowsFromCsv(text, schema) {
  const records = parseCsv(text);
  if (!records.length) throw new FileProblem("EMPTY_FILE", "has no header row");
  const header = records[0].cells.map((c) => c.trim());
  const seen = new Set();
  for (const name of header) {
    if (name === "") throw new FileProblem("BAD_HEADER", "the header row has an empty column name");
    if (seen.has(name)) throw new FileProblem("BAD_HEADER", `the header row names '${name}' twice`);
    seen.add(name);
  }
  return records.slice(1).map(({ line, cells }) => {
    const parameters = {};
    const errors = [];
    if (cells.length !== header.length) {
      errors.push({ field: "row", code: "INVALID_ROW", message: `has ${cells.length} cells, the header has ${header.length}` });
    }
    header.forEach((name, i) => {
      const raw = cells[i] ?? "";
      if (raw.trim() === "") return; // an empty cell takes the default
      parameters[name] = Object.hasOwn(schema, name) ? fromCell(schema[name], raw) : raw;
    });
    return { source: line, parameters, errors };
  });
}

function rowsFromJson(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new FileProblem("INVALID_JSON", `is not JSON (${error.message})`);
  }
  if (!Array.isArray(data)) throw new FileProblem("INVALID_JSON", "must be a list of parameter objects");
  return data.map((parameters, i) => ({ source: i + 1, parameters, errors: [] }));
}

/**
 * The rows of a file for one job type: [{source, parameters, errors}], ``source`` being the CSV
 * line or the JSON list position (1-based). Throws FileProblem when the file as a whole is bad.
 */
export function rowsOfFile(name, text, typeName, schema) {
  const json = /\.json$/i.test(name) || /^\s*[[{]/.test(text);
  const rows = json ? rowsFromJson(text) : rowsFromCsv(text, schema);
  if (!rows.length) throw new FileProblem("EMPTY_FILE", "has no rows");
  if (rows.length > MAX_ROWS) throw new FileProblem("TOO_MANY_ROWS", `has ${rows.length} rows, at most ${MAX_ROWS} fit in one batch`);
  for (const row of rows) row.errors.push(...checkParameters(typeName, schema, row.parameters));
  return rows;
}
