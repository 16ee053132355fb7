// Runs the browser's row checks (static/js/paramrows.js) for the Python tests: one JSON request
// per stdin line ({"op": "csv"|"file"|"check", ...}), one JSON answer per stdout line.
import { createInterface } from "node:readline";
import { parseCsv, rowsOfFile, checkParameters, FileProblem } from "../../jobrunner/services/api/static/js/paramrows.js";

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const request = JSON.parse(line);
  let answer;
  try {
    if (request.op === "csv") answer = { ok: parseCsv(request.text).map((r) => r.cells) };
    else if (request.op === "file") answer = { ok: rowsOfFile(request.name, request.text, request.type, request.schema) };
    else answer = { ok: checkParameters(request.type, request.schema, request.given) };
  } catch (error) {
    answer = error instanceof FileProblem ? { problem: error.code, message: error.message } : { crash: String(error?.stack ?? error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
