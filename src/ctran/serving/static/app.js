// ctran serve: the tagging page. Plain JavaScript, no dependencies, talks only to this server's /api.
// Flow: upload (or pick an example) -> POST /api/images -> id + probabilities; each change of a label's
// state -> (debounced) POST /api/images/{id}/condition -> every probability again; clicking a label's
// name -> GET /api/images/{id}/attention/{label} (PNG heat-map); after every answer, "Ask next" shows the
// label most worth telling (GET /api/images/{id}/suggest) with Yes/No buttons; "Because you told it" lists
// the labels the known ones moved most (the condition answer's moved_by_known). Only the latest answer is
// shown.
"use strict";

const DEBOUNCE_MS = 120;

const page = {
  labels: null, // {targets, extras, thresholds}
  image: null, // {id, name, width, height, src}
  known: new Map(), // target label -> bool
  extra: new Map(), // extra label -> bool
  probs: {}, // unknown target label -> probability
  previous: {}, // the probabilities shown before the last update, for the change markers
  moved: null, // how far the known labels moved the others ({overall, by_label}), or null
  predicted: new Set(),
  heatmap: null, // label whose heat-map is shown, or null for the image
  rows: new Map(), // label -> {li, fill, prob, note, radios, name}
};
let timer = null;
let inFlight = null; // AbortController of the running condition request
let sequence = 0; // increases with every condition request; older answers are dropped
let heatmapUrl = null;
let askSequence = 0; // the same for suggestions

// ------------------------------------------------------------------------------------------ helpers
function imageUrl(path) {
  return `/api/images/${encodeURIComponent(page.image.id)}${path}`;
}

function spec(map) {
  return [...map].map(([name, value]) => `${name}=${value ? 1 : 0}`).join(",");
}

// ------------------------------------------------------------------------------------------- labels
function buildRow(name, kind, index) {
  const li = document.createElement("li");
  li.className = "row";
  li.dataset.label = name;
  li.dataset.kind = kind;

  const button = document.createElement("button");
  button.type = "button";
  button.className = "name";
  button.textContent = name;
  button.title = `Show where the model looks for ${name}`;
  button.setAttribute("aria-pressed", "false");
  button.addEventListener("click", () => toggleHeatmap(name));
  li.append(button);

  let fill = null;
  let prob = null;
  let note = null;
  if (kind === "target") {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    fill = document.createElement("div");
    fill.className = "fill";
    const cut = document.createElement("div");
    cut.className = "cut";
    cut.style.left = `${100 * page.labels.thresholds[name]}%`;
    cut.title = "threshold";
    bar.append(fill, cut);
    prob = document.createElement("span"); // not <output>: 16 live regions would flood a screen reader
    prob.className = "prob";
    prob.setAttribute("aria-label", `probability of ${name}`);
    li.append(bar, prob);
  } else {
    note = document.createElement("span");
    note.className = "note";
    note.textContent = "input only";
    li.append(note);
  }

  const { group, radios } = triState(name, `${kind}-${index}`, (value) => setState(name, kind, value));
  radios.unknown.checked = true;
  li.append(group);
  page.rows.set(name, { li, fill, prob, note, radios, name: button });
  return li;
}

function buildLabels() {
  const targets = el("targets");
  const extras = el("extras");
  page.labels.targets.forEach((name, i) => targets.append(buildRow(name, "target", i)));
  page.labels.extras.forEach((name, i) => extras.append(buildRow(name, "extra", i)));
}

function setState(name, kind, value) {
  const map = kind === "target" ? page.known : page.extra;
  if (value === "unknown") map.delete(name);
  else map.set(name, value === "yes");
  render();
  scheduleCondition();
}

function ranked() {
  const { targets } = page.labels;
  if (el("sort").value === "name") return [...targets].sort((a, b) => a.localeCompare(b));
  const score = (name) => (page.known.has(name) ? (page.known.get(name) ? 3 : 2) : (page.probs[name] ?? 0));
  return [...targets].sort((a, b) => score(b) - score(a) || targets.indexOf(a) - targets.indexOf(b));
}

function render() {
  const focused = document.activeElement;
  const list = el("targets");
  for (const name of ranked()) {
    const row = page.rows.get(name);
    const given = page.known.has(name) ? page.known.get(name) : null;
    const p = page.probs[name];
    row.li.classList.toggle("given-yes", given === true);
    row.li.classList.toggle("given-no", given === false);
    row.li.classList.toggle("predicted", given === null && page.predicted.has(name));
    if (given !== null) {
      row.fill.style.width = given ? "100%" : "0%";
      row.prob.textContent = given ? "given yes" : "given no";
      row.prob.dataset.p = "";
    } else if (p !== undefined) {
      row.fill.style.width = `${100 * p}%`;
      row.prob.textContent = percent(p);
      row.prob.dataset.p = String(p);
      const before = page.previous[name];
      if (before !== undefined && Math.abs(p - before) >= 0.005) {
        const delta = document.createElement("span");
        delta.className = `delta ${p > before ? "up" : "down"}`;
        delta.textContent = `${p > before ? "+" : "−"}${(100 * Math.abs(p - before)).toFixed(1)}`;
        delta.setAttribute("aria-label", `changed by ${delta.textContent} points`);
        row.prob.append(delta);
      }
    } else {
      row.fill.style.width = "0%";
      row.prob.textContent = "…"; // just un-marked: its probability comes with the next answer
      row.prob.dataset.p = "";
    }
    row.radios[given === null ? "unknown" : given ? "yes" : "no"].checked = true;
    list.append(row.li); // appending an attached node moves it: this is the re-ranking
  }
  for (const name of page.labels.extras) {
    const given = page.extra.has(name) ? page.extra.get(name) : null;
    page.rows.get(name).radios[given === null ? "unknown" : given ? "yes" : "no"].checked = true;
  }
  for (const [name, row] of page.rows) {
    row.li.classList.toggle("selected", name === page.heatmap);
    row.name.setAttribute("aria-pressed", String(name === page.heatmap));
  }
  if (focused && focused !== document.activeElement && document.contains(focused)) focused.focus();
  el("reset").disabled = !page.image || (page.known.size === 0 && page.extra.size === 0);
}

function applyPredictions(body) {
  page.previous = { ...page.probs };
  page.probs = body.predictions;
  page.predicted = new Set(body.predicted);
  page.moved = body.moved_by_known ?? null;
  render();
  showMoved();
  askNext();
}

// ---------------------------------------------------------------------------------- because you told it
function changes(list) {
  const signed = (d) => `${d >= 0 ? "+" : "−"}${(100 * Math.abs(d)).toFixed(1)}`;
  return list.map((c) => `${signed(c.delta)} ${c.label}`).join(", ") || "no other label to move";
}

function showMoved() {
  const { moved } = page;
  el("moved").hidden = !moved;
  if (!moved) return;
  el("moved-overall").textContent = changes(moved.overall);
  const each = Object.entries(moved.by_label);
  const items = each.map(([name, list]) => {
    const li = document.createElement("li");
    li.textContent = `${name}, given the others: ${changes(list)}`;
    return li;
  });
  el("moved-by").replaceChildren(...(each.length > 1 ? items : [])); // with one label it repeats the line
}

// ---------------------------------------------------------------------------------------- ask next
async function askNext() {
  const mine = ++askSequence;
  const query = new URLSearchParams({ known: spec(page.known), extra: spec(page.extra), k: "1" });
  try {
    const body = await api(imageUrl(`/suggest?${query}`));
    if (mine !== askSequence) return;
    const [best] = body.suggestions;
    el("ask").hidden = false;
    el("ask").removeAttribute("aria-busy");
    el("ask").dataset.label = best ? best.label : "";
    for (const id of ["ask-question", "ask-yes", "ask-no"]) el(id).hidden = !best;
    el("ask-done").hidden = Boolean(best);
    if (!best) return;
    el("ask-label").textContent = best.label;
    el("ask-why").textContent =
      best.information === null
        ? `(now ${percent(best.probability)}: the most uncertain label, ` +
          `${best.uncertainty.toFixed(2)} bits)`
        : `(now ${percent(best.probability)}; the answer is expected to settle ` +
          `${best.information.toFixed(2)} bits of the other labels' uncertainty)`;
  } catch (error) {
    if (mine === askSequence) el("ask").hidden = true;
  }
}

function answerAsked(present) {
  const name = el("ask").dataset.label;
  if (!name) return;
  el("ask").dataset.label = ""; // answered: the next suggestion comes with the next predictions
  el("ask").setAttribute("aria-busy", "true");
  setState(name, "target", present ? "yes" : "no");
}

// ------------------------------------------------------------------------------------ conditioning
function scheduleCondition() {
  clearTimeout(timer);
  timer = setTimeout(condition, DEBOUNCE_MS);
}

async function condition() {
  if (!page.image) return;
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  const mine = ++sequence;
  el("targets").setAttribute("aria-busy", "true");
  const started = performance.now();
  try {
    const body = await api(imageUrl("/condition"), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ known: Object.fromEntries(page.known), extra: Object.fromEntries(page.extra) }),
      signal: controller.signal,
    });
    if (mine !== sequence) return;
    applyPredictions(body);
    const given = page.known.size + page.extra.size;
    const ms = Math.round(performance.now() - started);
    say(`Re-predicted ${Object.keys(body.predictions).length} labels knowing ${given} in ${ms} ms.`);
    if (page.heatmap) showHeatmap(page.heatmap);
  } catch (error) {
    if (error.name === "AbortError") return;
    say(error.status === 404 ? "This image is no longer cached on the server: choose it again." : error.message, true);
  } finally {
    if (mine === sequence) {
      el("targets").removeAttribute("aria-busy");
      inFlight = null;
    }
  }
}

// -------------------------------------------------------------------------------------------- images
async function upload(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  await openImage(() => api("/api/images", { method: "POST", body: form }), URL.createObjectURL(file), file.name);
}

async function useExample(name, button) {
  document.querySelectorAll("#example-list button").forEach((b) => b.setAttribute("aria-current", "false"));
  button.setAttribute("aria-current", "true");
  const path = `/api/examples/${encodeURIComponent(name)}`;
  await openImage(() => api(path, { method: "POST" }), path, name);
}

async function openImage(request, src, name) {
  say(`Encoding ${name}…`);
  clearTimeout(timer);
  sequence++; // answers for the previous image are stale now
  try {
    const body = await request();
    if (page.image && page.image.src.startsWith("blob:")) URL.revokeObjectURL(page.image.src);
    page.image = { id: body.id, name: body.name, width: body.width, height: body.height, src };
    page.known.clear();
    page.extra.clear();
    page.heatmap = null;
    page.probs = {};
    el("ask").hidden = true;
    applyPredictions(body);
    showImage();
    for (const id of ["targets", "extras-block", "viewer"]) el(id).hidden = false;
    el("extras-block").hidden = page.labels.extras.length === 0;
    el("empty").hidden = true;
    el("download").disabled = false;
    say(`${body.name} (${body.width} × ${body.height}): ${body.predicted.length} labels above threshold.`);
  } catch (error) {
    say(`Could not use ${name}: ${error.message}`, true);
  }
}

function showImage() {
  page.heatmap = null;
  const picture = el("picture");
  picture.src = page.image.src;
  picture.alt = `The image ${page.image.name}`;
  el("caption").textContent = `${page.image.name} · ${page.image.width} × ${page.image.height}`;
  el("show-image").hidden = true;
  render();
}

function toggleHeatmap(name) {
  if (!page.image) return;
  if (page.heatmap === name) showImage();
  else showHeatmap(name);
}

async function showHeatmap(name) {
  page.heatmap = name;
  render();
  const query = new URLSearchParams({ known: spec(page.known), extra: spec(page.extra) });
  const mine = sequence;
  el("picture-busy").hidden = false;
  try {
    const response = await fetch(imageUrl(`/attention/${encodeURIComponent(name)}?${query}`));
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    const blob = await response.blob();
    if (page.heatmap !== name || mine !== sequence) return;
    if (heatmapUrl) URL.revokeObjectURL(heatmapUrl);
    heatmapUrl = URL.createObjectURL(blob);
    const picture = el("picture");
    picture.src = heatmapUrl;
    picture.alt = `Attention heat-map of ${name} over the image`;
    el("caption").textContent = `Where the model looks for ${name} (red: most attention)`;
    el("show-image").hidden = false;
  } catch (error) {
    say(`No heat-map for ${name}: ${error.message}`, true);
  } finally {
    el("picture-busy").hidden = true;
  }
}

// ------------------------------------------------------------------------------------------ download
function download() {
  const result = {
    image: page.image.name,
    id: page.image.id,
    known: Object.fromEntries(page.known),
    extra: Object.fromEntries(page.extra),
    predictions: page.probs,
    predicted: [...page.predicted],
    moved_by_known: page.moved,
    thresholds: page.labels.thresholds,
    saved: new Date().toISOString(),
  };
  const blob = new Blob([JSON.stringify(result, null, 2) + "\n"], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${page.image.name.replace(/\.[^.]+$/, "") || "image"}.ctran.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// -------------------------------------------------------------------------------------------- set-up
function wireDrop() {
  const drop = el("drop");
  el("file").addEventListener("change", (event) => upload(event.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    upload(event.dataTransfer.files[0]);
  });
  window.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) upload(file);
  });
}

async function loadExamples() {
  const { examples } = await api("/api/examples");
  if (!examples.length) return;
  const list = el("example-list");
  for (const name of examples) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button small";
    button.textContent = name;
    button.setAttribute("aria-current", "false");
    button.addEventListener("click", () => useExample(name, button));
    item.append(button);
    list.append(item);
  }
  el("examples").hidden = false;
}

async function start() {
  try {
    page.labels = await api("/api/labels");
  } catch (error) {
    say(`The server does not answer: ${error.message}`, true);
    return;
  }
  const { targets, extras } = page.labels;
  el("model").textContent = `${targets.length} target labels${extras.length ? `, ${extras.length} extra` : ""}`;
  buildLabels();
  wireDrop();
  el("sort").addEventListener("change", render);
  el("reset").addEventListener("click", () => {
    page.known.clear();
    page.extra.clear();
    render();
    scheduleCondition();
  });
  el("download").addEventListener("click", download);
  el("ask-yes").addEventListener("click", () => answerAsked(true));
  el("ask-no").addEventListener("click", () => answerAsked(false));
  el("show-image").addEventListener("click", showImage);
  await loadExamples().catch((error) => say(error.message, true));
  document.body.dataset.ready = "true";
}

start();
