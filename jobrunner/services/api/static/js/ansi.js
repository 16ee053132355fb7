// Log text with ANSI colours, rendered safely: the text only ever becomes text nodes
// (textContent), and colour codes become CSS classes; a tool's output can never become markup.
const SGR = /\x1b\[([0-9;]*)m/g;
// Every other escape sequence (cursor moves, OSC titles, ...) is dropped.
const OTHER = /\x1b\[[0-9;?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f]/g;

function applyCodes(state, codes) {
  const list = codes === "" ? [0] : codes.split(";").map(Number);
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === 0) { state.fg = null; state.bg = null; state.bold = state.dim = state.italic = state.underline = false; }
    else if (c === 1) state.bold = true;
    else if (c === 2) state.dim = true;
    else if (c === 3) state.italic = true;
    else if (c === 4) state.underline = true;
    else if (c === 22) state.bold = state.dim = false;
    else if (c === 23) state.italic = false;
    else if (c === 24) state.underline = false;
    else if (c >= 30 && c <= 37) state.fg = c - 30;
    else if (c >= 90 && c <= 97) state.fg = c - 90;
    else if (c === 39) state.fg = null;
    else if (c >= 40 && c <= 47) state.bg = c - 40;
    else if (c >= 100 && c <= 107) state.bg = c - 100;
    else if (c === 49) state.bg = null;
    else if (c === 38 || c === 48) {
      // 256-colour and true-colour: the 8 base colours map, the rest keep the default.
      const key = c === 38 ? "fg" : "bg";
      if (list[i + 1] === 5) { const n = list[i + 2]; state[key] = n < 8 ? n : n < 16 ? n - 8 : null; i += 2; }
      else if (list[i + 1] === 2) { state[key] = null; i += 4; }
    }
  }
}

function classesOf(state) {
  const cls = [];
  if (state.fg !== null) cls.push(`ansi-fg-${state.fg}`);
  if (state.bg !== null) cls.push(`ansi-bg-${state.bg}`);
  if (state.bold) cls.push("ansi-bold");
  if (state.dim) cls.push("ansi-dim");
  if (state.italic) cls.push("ansi-italic");
  if (state.underline) cls.push("ansi-underline");
  return cls;
}

/** Append ``text`` to ``parent`` as text nodes and class-only spans. */
export function renderAnsi(parent, text) {
  if (!text.includes("\x1b")) {
    parent.append(text.replace(OTHER, ""));
    return;
  }
  const state = { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
  let last = 0;
  const push = (chunk) => {
    const clean = chunk.replace(OTHER, "");
    if (!clean) return;
    const cls = classesOf(state);
    if (!cls.length) { parent.append(clean); return; }
    const span = document.createElement("span");
    span.className = cls.join(" ");
    span.textContent = clean;
    parent.append(span);
  };
  SGR.lastIndex = 0;
  let match;
  while ((match = SGR.exec(text))) {
    push(text.slice(last, match.index));
    applyCodes(state, match[1]);
    last = SGR.lastIndex;
  }
  push(text.slice(last));
}
