// rnnserve demo page: plain JavaScript, no build step, no requests beyond this server.
"use strict";

// The server's limits (GET /v1/metadata `limits`, read at start; these are its defaults):
// longer prompts send their last maxTextChars characters, the length input stops at the limit.
let maxTextChars = 2000;
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- API
// A bearer token (when the server requires one) comes from #token=... once, then localStorage.
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (hashToken) localStorage.setItem("rnnserve-token", hashToken);
const token = localStorage.getItem("rnnserve-token");

// A refusal as an Error: its message is the server's `error`; `status` lets a caller tell a
// refused carried state (a 400 about `state`) from other failures.
async function failure(response) {
  const data = await response.json().catch(() => ({ error: response.statusText }));
  const error = new Error(data.error || `HTTP ${response.status}`);
  error.status = response.status;
  return error;
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// A multipart upload (the picture routes); errors as api().
async function apiForm(path, form) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method: "POST", headers, body: form });
  if (!response.ok) throw await failure(response);
  return response.json();
}

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

// ---------------------------------------------------------------- drawing pad
const pad = $("pad");
const pen = pad.getContext("2d");
let drawing = false;

function clearPad() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, pad.width, pad.height);
}

function padPoint(event) {
  const box = pad.getBoundingClientRect(); // the pad may be drawn smaller than 280 px
  return [
    ((event.clientX - box.left) * pad.width) / box.width,
    ((event.clientY - box.top) * pad.height) / box.height,
  ];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  if ($("photo-view").src) clearPhoto();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  const [x, y] = padPoint(event);
  pen.strokeStyle = "#fff";
  pen.fillStyle = "#fff";
  pen.lineWidth = Number($("pen").value);
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.beginPath();
  pen.arc(x, y, pen.lineWidth / 2, 0, 2 * Math.PI);
  pen.fill();
  pen.beginPath();
  pen.moveTo(x, y);
  schedulePrediction();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = padPoint(event);
  pen.lineTo(x, y);
  pen.stroke();
  schedulePrediction();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    drawing = false;
    schedulePrediction();
  });
}
$("clear").addEventListener("click", () => {
  clearPad();
  renderPreview(null);
  renderModels(null);
  clearPhoto();
});

// ---------------------------------------------------------------- MNIST-style 28x28
// As the service does for uploads (service/imaging/photo.py, fit_to_field): crop to the ink, fit it into a
// 20x20 box keeping the aspect ratio (area averaging), centre the box in 28x28, then shift so
// the centre of mass sits at (14, 14). Returns 28 rows of 0..255 values, or null when blank.
function toMnist(canvas) {
  const width = canvas.width;
  const height = canvas.height;
  const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  const gray = new Float32Array(width * height);
  let top = height, bottom = -1, left = width, right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const value = rgba[(y * width + x) * 4] / 255;
      gray[y * width + x] = value;
      if (value > 0.1) {
        top = Math.min(top, y); bottom = Math.max(bottom, y);
        left = Math.min(left, x); right = Math.max(right, x);
      }
    }
  }
  if (bottom < 0) return null;
  const h = bottom - top + 1;
  const w = right - left + 1;
  const scale = 20 / Math.max(h, w);
  const boxH = Math.max(1, Math.round(h * scale));
  const boxW = Math.max(1, Math.round(w * scale));
  const image = new Float32Array(28 * 28);
  const offY = Math.floor((28 - boxH) / 2);
  const offX = Math.floor((28 - boxW) / 2);
  for (let ty = 0; ty < boxH; ty++) {
    const y0 = top + Math.floor((ty * h) / boxH);
    const y1 = Math.max(y0 + 1, top + Math.floor(((ty + 1) * h) / boxH));
    for (let tx = 0; tx < boxW; tx++) {
      const x0 = left + Math.floor((tx * w) / boxW);
      const x1 = Math.max(x0 + 1, left + Math.floor(((tx + 1) * w) / boxW));
      let sum = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) sum += gray[y * width + x];
      image[(offY + ty) * 28 + offX + tx] = sum / ((y1 - y0) * (x1 - x0));
    }
  }
  let mass = 0, cy = 0, cx = 0;
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const v = image[y * 28 + x];
      mass += v; cy += y * v; cx += x * v;
    }
  }
  const dy = Math.round(14 - cy / mass);
  const dx = Math.round(14 - cx / mass);
  const rows = [];
  for (let y = 0; y < 28; y++) {
    const row = [];
    for (let x = 0; x < 28; x++) {
      const sy = y - dy, sx = x - dx;
      const inside = sy >= 0 && sy < 28 && sx >= 0 && sx < 28;
      row.push(inside ? Math.round(Math.min(1, image[sy * 28 + sx]) * 255) : 0);
    }
    rows.push(row);
  }
  return rows;
}

function renderPreview(rows) {
  const preview = $("preview").getContext("2d");
  const pixels = preview.createImageData(28, 28);
  for (let i = 0; i < 28 * 28; i++) {
    const v = rows ? rows[Math.floor(i / 28)][i % 28] : 0;
    pixels.data.set([v, v, v, 255], i * 4);
  }
  preview.putImageData(pixels, 0, 0);
}

// ---------------------------------------------------------------- digit predictions
let digitModels = [];
let predicting = false;
let predictAgain = false;

function schedulePrediction() {
  $("models").dataset.busy = "true"; // until the answer to the latest drawing is shown
  if (predicting) {
    predictAgain = true;
    return;
  }
  predicting = true;
  requestAnimationFrame(predict);
}

async function predict() {
  const rows = toMnist(pad);
  renderPreview(rows);
  try {
    if (rows && digitModels.length) {
      // one request, one image per model: every classifier answers the same drawing
      const answers = await api("/classify_pixels", {
        images: digitModels.map((model) => ({ pixels: rows, model })),
      });
      renderModels(answers);
    }
  } catch (error) {
    setStatus(`prediction failed: ${error.message}`, true);
  } finally {
    predicting = false;
    if (predictAgain) {
      predictAgain = false;
      schedulePrediction();
    } else {
      $("models").dataset.busy = "false";
    }
  }
}

function renderModels(answers) {
  const box = $("models");
  box.replaceChildren();
  digitModels.forEach((model, index) => {
    const answer = answers ? answers[index] : null;
    const card = document.createElement("article");
    card.className = "model";
    card.dataset.model = model;
    const title = document.createElement("h3");
    title.textContent = model;
    const version = document.createElement("small");
    version.className = "version";
    // the version that computed this answer (the newest served, unless a rollout holds two)
    version.textContent = answer ? ` v${answer.model_version}` : "";
    title.append(version);
    const digit = document.createElement("div");
    digit.className = "digit";
    digit.textContent = answer ? String(answer.digit) : "–";
    const unsure = document.createElement("div");
    unsure.className = "unsure";
    if (answer && answer.confident === false) {
      unsure.textContent = "not sure";
      unsure.title = "the top probability is below this model's calibrated threshold";
    }
    const bars = document.createElement("div");
    bars.className = "bars";
    for (let d = 0; d < 10; d++) {
      const p = answer ? answer.probabilities[d] : 0;
      const label = document.createElement("span");
      label.textContent = String(d);
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${(p * 100).toFixed(1)}%`;
      bar.append(fill);
      const value = document.createElement("span");
      value.textContent = `${(p * 100).toFixed(0)}%`;
      if (answer && d === answer.digit) label.className = value.className = "top";
      bars.append(label, bar, value);
    }
    card.append(title, digit, unsure, bars);
    box.append(card);
  });
}

// ---------------------------------------------------------------- photos
// The service reads the digit out of the photo (service/imaging/photo.py); the first answer also
// carries the 28x28 it saw, shown in the preview. A picture without a digit is a 422.
let photoRequest = 0;

function clearPhoto() {
  photoRequest++;
  const view = $("photo-view");
  if (view.src) URL.revokeObjectURL(view.src);
  view.removeAttribute("src");
  view.hidden = true;
  $("photo-error").textContent = "";
  $("photo").value = "";
}

async function classifyPhoto(file) {
  const request = ++photoRequest;
  const view = $("photo-view");
  if (view.src) URL.revokeObjectURL(view.src);
  view.src = URL.createObjectURL(file);
  view.hidden = false;
  $("photo-error").textContent = "";
  clearPad();
  try {
    const answers = await Promise.all(
      digitModels.map((model, index) => {
        const form = new FormData();
        form.append("image", file, file.name || "photo");
        form.append("model", model);
        if (index === 0) form.append("show_input", "true");
        return apiForm("/classify_image", form);
      }),
    );
    if (request !== photoRequest) return; // a newer photo or drawing took over
    renderPreview(answers[0].seen);
    renderModels(answers);
  } catch (error) {
    if (request !== photoRequest) return;
    renderPreview(null);
    renderModels(null);
    $("photo-error").textContent = error.message;
  }
}

$("photo").addEventListener("change", () => {
  const file = $("photo").files[0];
  if (file) classifyPhoto(file);
});

// ---------------------------------------------------------------- next character
// Carried state. With its suggestions the server answers an opaque `state` that has read the
// text, and a later request may carry that state with only the characters that follow what it
// has read. Typing at the end of a 2,000-character text then sends one character instead of
// 2,000, and the answer comes as fast as for a short text.
// A state stands for exactly the text it has read, so the page keeps the last few, keyed by
// that text ("checkpoints"): after a backspace or an edit near the end, reading resumes from
// the longest checkpoint that is still a prefix of the text. A server that answers no state
// (an older one) gets whole texts, their last maxTextChars characters, as it always did.
const CHECKPOINTS = 32; // the last 32 answers: an edit up to ~32 characters back stays cheap
let checkpoints = []; // {text, state, context}, least recently used first
let carriesState = null; // null: not known yet; true/false: whether the last answer had a state

const shown = (char) => (char === " " ? "␣" : char === "\n" ? "↵" : char);
const count = (n) => n.toLocaleString("en-US");
let textTimer = 0;
let textRequest = 0;

function remember(text, state, context) {
  checkpoints = checkpoints.filter((c) => c.text !== text);
  checkpoints.push({ text, state, context });
  if (checkpoints.length > CHECKPOINTS) checkpoints.shift();
}

// The longest checkpoint that is a prefix of `text` (or null); it becomes the most recently
// used, so that a checkpoint an edit keeps returning to is not pushed out by newer ones.
function checkpointFor(text) {
  let best = null;
  for (const c of checkpoints) {
    if (text.startsWith(c.text) && (!best || c.text.length > best.text.length)) best = c;
  }
  if (best) checkpoints = [...checkpoints.filter((c) => c !== best), best];
  return best;
}

// The server refuses a state it cannot continue (its model changed, the state is malformed)
// with a 400 whose error names the state: the page then forgets its states and reads again.
const refusedState = (error) => error.status === 400 && /state/i.test(error.message);

// Asks /next_char about `text`, the whole text of the page: resumes from the longest checkpoint
// that is a prefix of it and sends only what follows; with none, reads the text from its start.
// The server reads at most maxTextChars characters per request, so a longer rest is sent in
// pieces chained through their states: the suggestions then follow the whole text (its last
// maxTextChars characters alone would be another context, and another answer). `stale()` says
// whether a newer keystroke took over; reading stops between pieces then (the pieces read are
// checkpoints the newer keystroke resumes from). Answers {answer, sent, pieces}, or null.
async function readText(text, stale) {
  let from = checkpointFor(text);
  let sent = 0;
  let pieces = 0;
  let retried = false;
  for (;;) {
    let body;
    let read; // the text the answer's state will have read from the start (null: a tail only)
    if (from) {
      const piece = text.slice(from.text.length, from.text.length + maxTextChars);
      body = { text: piece, state: from.state };
      read = from.text + body.text;
    } else if (carriesState === false) {
      body = { text: text.slice(-maxTextChars) }; // the old way: the last characters
      read = body.text === text ? text : null;
    } else {
      body = { text: text.slice(0, maxTextChars) };
      read = body.text;
    }
    let answer;
    try {
      answer = await api("/next_char", body);
    } catch (error) {
      if (body.state && !retried && refusedState(error)) {
        checkpoints = []; // every state is of the same kind: none is usable any more
        from = null;
        retried = true;
        continue;
      }
      throw error;
    }
    sent += body.text.length;
    pieces += 1;
    if (!answer.state) {
      // This server carries no state: its answer is about the characters it was sent only.
      // Unless that was the text's tail without a state, ask again the old way.
      carriesState = false;
      if (!body.state && body.text === text.slice(-maxTextChars)) return { answer, sent, pieces };
      checkpoints = [];
      from = null;
      continue;
    }
    carriesState = true;
    // An answer for an older text is still a checkpoint when that text is a prefix of what the
    // page shows now (the person typed on); otherwise it would only push out useful ones.
    if (read !== null && $("prompt").value.startsWith(read)) {
      remember(read, answer.state, answer.context_chars);
    }
    if (read === text || read === null) return { answer, sent, pieces };
    if (stale()) return null;
    from = { text: read, state: answer.state };
  }
}

function scheduleCandidates() {
  $("candidates").dataset.busy = "true"; // until the answer to the latest text is shown
  clearTimeout(textTimer);
  textTimer = setTimeout(updateCandidates, 120);
}

async function updateCandidates() {
  clearTimeout(textTimer);
  const text = $("prompt").value;
  const request = ++textRequest;
  const stale = () => request !== textRequest; // a newer keystroke already asked
  const list = $("candidates");
  list.dataset.busy = "true";
  if (!text) {
    list.replaceChildren();
    $("text-error").textContent = "";
    $("keystroke").textContent = "";
    list.dataset.busy = "false";
    return;
  }
  const started = performance.now();
  try {
    const result = await readText(text, stale);
    if (!result || stale()) return;
    $("text-error").textContent = "";
    renderCandidates(result.answer.candidates);
    showKeystroke(performance.now() - started, result);
  } catch (error) {
    if (stale()) return;
    list.replaceChildren();
    $("keystroke").textContent = "";
    $("text-error").textContent = error.message;
  } finally {
    if (!stale()) list.dataset.busy = "false";
  }
}

// The keystroke's round trip (from the request to the answer: the 120 ms debounce before it is
// left out) and what it cost, e.g. "3 ms · 1 new character sent · 2,013 in context": with a
// carried state a long text stays as quick as a short one.
function showKeystroke(ms, { answer, sent, pieces }) {
  const line = $("keystroke");
  const plural = sent === 1 ? "" : "s";
  const inPieces = pieces > 1 ? ` in ${pieces} pieces` : "";
  if (answer.state) {
    const context = answer.context_chars;
    line.textContent = `${Math.round(ms)} ms · ${count(sent)} new character${plural} sent` +
      `${inPieces} · ${typeof context === "number" ? count(context) : "?"} in context`;
  } else {
    line.textContent = `${Math.round(ms)} ms · ${count(sent)} character${plural} sent ` +
      "(the whole text: this server carries no state)";
  }
}

function renderCandidates(candidates) {
  const list = $("candidates");
  list.replaceChildren();
  for (const { char, probability } of candidates) {
    const item = document.createElement("li");
    item.title = "click to add this character";
    const glyph = document.createElement("span");
    glyph.className = "char";
    glyph.textContent = shown(char);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.textContent = `${(probability * 100).toFixed(1)}%`;
    item.append(glyph, bar, value);
    item.addEventListener("click", () => {
      $("prompt").value += char; // the checkpoint of the text before it: sends just this char
      updateCandidates();
    });
    list.append(item);
  }
}

$("prompt").addEventListener("input", scheduleCandidates);
$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = $("temperature").value;
});
// Generation streams (Server-Sent Events over a POST, read with fetch): characters appear as
// the server's decode loop produces them; Stop aborts the request, which ends the sequence.
let generation = null; // the AbortController of the running generation

async function* serverEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield { name, data: JSON.parse(data) };
    }
  }
}

async function generate() {
  const base = $("prompt").value; // the text the generation continues
  const body = {
    length: Number($("length").value) || Number($("length").max),
    temperature: Number($("temperature").value),
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  generation = new AbortController();
  $("continue").hidden = true;
  $("stop").hidden = false;
  document.body.dataset.generating = "true";
  let generated = "";
  // The suggestions are asked again when the generation ends: a read for them pending or under
  // way now would read the same text as this one (it stops after its current piece).
  clearTimeout(textTimer);
  textRequest++;
  try {
    // As typing does: a checkpoint's state and what follows it. A rest longer than one
    // request allows is read first (readText leaves a checkpoint for the whole text).
    let from = checkpointFor(base);
    if (carriesState !== false && base.length - (from ? from.text.length : 0) > maxTextChars) {
      await readText(base, () => false);
      from = checkpointFor(base);
    }
    if (from) {
      body.state = from.state;
      body.prompt = base.slice(from.text.length);
    } else {
      body.prompt = base.slice(-maxTextChars);
    }
    let response;
    for (;;) {
      response = await fetch("/v1/generate/stream", {
        method: "POST", headers, body: JSON.stringify(body), signal: generation.signal,
      });
      if (response.ok) break;
      const error = await failure(response);
      if (!body.state || !refusedState(error)) throw error;
      checkpoints = []; // a refused state: forget them all and send the whole text, once
      delete body.state;
      body.prompt = base.slice(-maxTextChars);
    }
    $("text-error").textContent = "";
    for await (const { name, data } of serverEvents(response)) {
      if (name === "end") {
        setStatus(`generated ${data.chars} characters with seed ${data.seed} ` +
          `(first after ${data.first_char_ms} ms, ${Math.round(data.chars_per_s)} chars/s)`);
        // The end state has read the prompt and the generated text: a checkpoint for the text
        // shown now, so the next keystroke sends only itself. (A state that read only the
        // prompt's tail, with no state sent, stands for no text of the page.)
        const read = base + generated;
        if (data.state && (body.state || body.prompt === base) &&
            $("prompt").value.startsWith(read)) {
          carriesState = true;
          remember(read, data.state, data.context_chars);
        }
      } else if (name === "error") {
        throw new Error(data.error);
      } else {
        $("prompt").value += data.text;
        generated += data.text;
      }
    }
  } catch (error) {
    if (error.name === "AbortError") setStatus(`stopped after ${generated.length} characters`);
    else $("text-error").textContent = error.message;
  } finally {
    generation = null;
    $("continue").hidden = false;
    $("stop").hidden = true;
    delete document.body.dataset.generating;
    updateCandidates();
  }
}

$("continue").addEventListener("click", generate);
$("stop").addEventListener("click", () => generation && generation.abort());

// ---------------------------------------------------------------- start
function applyLimits(limits) {
  if (!limits) return;
  maxTextChars = limits.max_text_chars;
  const length = $("length");
  length.max = String(limits.max_generate_chars);
  if (Number(length.value) > limits.max_generate_chars) length.value = length.max;
}

async function start() {
  clearPad();
  renderPreview(null);
  try {
    const meta = await api("/v1/metadata");
    applyLimits(meta.limits);
    const classifiers = meta.models.filter((m) => m.task === "digit-classification");
    const preferred = meta.default_digit_model;
    digitModels = [...new Set(classifiers.map((m) => m.name))] // one card per model
      .sort((a, b) => (b === preferred) - (a === preferred) || a.localeCompare(b));
    const char = meta.models.find((m) => m.task === "next-character"); // its newest version
    const providers = [...new Set(meta.models.map((m) => m.provider))].join(", ");
    const text = char ? `${char.name} v${char.version}` : "no text model";
    setStatus(`${digitModels.length} digit models · ${text} · ` +
      `${meta.device} (${providers}) · rnnserve ${meta.version}`);
    document.body.dataset.ready = "true";
  } catch (error) {
    setStatus(`cannot reach the service: ${error.message}`, true);
  }
  renderModels(null);
  updateCandidates();
}

start();
