// ctran annotate: the library page. Plain JavaScript, no dependencies, talks only to this server's /api.
// Flow: GET /api/labels and /api/images (the list, with progress and filters) -> open an image:
// GET /api/image?id= (its answers, the predictions conditioned on them, "Ask next") and /api/file?id=.
// Every answer is POST /api/answers, sent one at a time in the order given (a queue), and answered with the
// image's new view. The image to go to next comes from GET /api/next, asked as soon as an image is shown so
// that the server encodes it meanwhile. The image shown is kept in the address (#image=...), so a reload
// comes back to it; the annotator's name is kept in localStorage.
"use strict";

const NAME_KEY = "ctran-annotator";
const REFRESH_MS = 2000; // how often the list is refreshed while the server is still predicting images
const RECENT = 50; // images visited lately, not offered again by "least certain first"

const page = {
  labels: [], // [{name, kind, trained, threshold}]
  view: null, // the image shown (the API's ImageView)
  rows: new Map(), // label -> {li, fill, prob, radios}
  skipped: new Set(), // labels the annotator skipped on this image
  back: [], // images shown before, for "previous"
  recent: [], // the same, newest last, bounded: skipped by "least certain first"
  upcoming: null, // the image "next" goes to
  limit: 200, // images listed
  progress: null,
};
let queue = Promise.resolve(); // answers, one at a time
let listTimer = null;
let nextSequence = 0;
let openSequence = 0;

// ------------------------------------------------------------------------------------------ helpers
function post(path, body) {
  return api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

function annotator() {
  const input = el("annotator");
  const name = input.value.trim();
  if (!name) {
    input.focus();
    throw new Error("Enter your name first (top right): every answer is kept with it.");
  }
  return name;
}

function filters() {
  const params = new URLSearchParams({ show: el("filter-show").value, order: el("order").value });
  if (el("filter-label").value) params.set("label", el("filter-label").value);
  return params;
}

// ------------------------------------------------------------------------------------------- labels
function buildRow(label, index) {
  const { name, kind, trained } = label;
  const li = document.createElement("li");
  li.className = "row";
  li.dataset.label = name;
  li.classList.toggle("untrained", !trained);

  const title = document.createElement("span");
  title.className = "name";
  title.textContent = name;
  li.append(title);

  let fill = null;
  let prob = null;
  if (kind === "target") {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    fill = document.createElement("div");
    fill.className = "fill";
    bar.append(fill);
    if (label.threshold !== null) {
      const cut = document.createElement("div");
      cut.className = "cut";
      cut.style.left = `${100 * label.threshold}%`;
      bar.append(cut);
    }
    prob = document.createElement("span");
    prob.className = "prob";
    li.append(bar, prob);
  } else {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = trained ? "input only" : "not trained yet";
    li.append(note);
  }

  const { group, radios } = triState(name, `label-${index}`, (value) =>
    answer(name, value === "unknown" ? null : value === "yes"),
  );
  li.append(group);
  page.rows.set(name, { li, fill, prob, radios });
  return li;
}

async function loadLabels() {
  const { labels } = await api("/api/labels");
  page.labels = labels;
  page.rows.clear();
  const targets = labels.filter((l) => l.kind === "target");
  const extras = labels.filter((l) => l.kind === "extra");
  el("targets").replaceChildren(...targets.map((l, i) => buildRow(l, i)));
  el("extras").replaceChildren(...extras.map((l, i) => buildRow(l, targets.length + i)));
  el("extras-block").hidden = extras.length === 0;
  const filter = el("filter-label");
  const chosen = filter.value;
  const options = labels.map((l) => new Option(l.name, l.name));
  filter.replaceChildren(new Option("any", ""), ...options);
  filter.value = chosen;
  const untrained = labels.filter((l) => !l.trained).length;
  el("model").textContent =
    `${targets.length} target labels${extras.length ? `, ${extras.length} extra` : ""}` +
    (untrained ? ` (${untrained} not trained yet)` : "");
}

// Given yes, given no, then by probability; labels without one (not trained yet) last.
function ranked(names) {
  const { known, predictions } = page.view;
  const score = (name) => (name in known ? (known[name] ? 3 : 2) : (predictions[name] ?? -1));
  return [...names].sort((a, b) => score(b) - score(a) || names.indexOf(a) - names.indexOf(b));
}

function renderLabels() {
  const { known, predictions, predicted } = page.view;
  const focused = document.activeElement;
  const targets = page.labels.filter((l) => l.kind === "target").map((l) => l.name);
  for (const name of ranked(targets)) {
    const row = page.rows.get(name);
    const given = name in known ? known[name] : null;
    const p = predictions[name];
    row.li.classList.toggle("given-yes", given === true);
    row.li.classList.toggle("given-no", given === false);
    row.li.classList.toggle("predicted", given === null && predicted.includes(name));
    if (given !== null) {
      row.fill.style.width = given ? "100%" : "0%";
      row.prob.textContent = given ? "yes" : "no";
    } else if (p !== undefined) {
      row.fill.style.width = `${100 * p}%`;
      row.prob.textContent = percent(p);
    } else {
      row.fill.style.width = "0%";
      row.prob.textContent = "not trained yet";
    }
    row.prob.dataset.p = given === null && p !== undefined ? String(p) : "";
    el("targets").append(row.li); // moving an attached node: this is the re-ranking
  }
  for (const label of page.labels.filter((l) => l.kind === "extra")) {
    const given = label.name in known ? known[label.name] : null;
    page.rows.get(label.name).li.classList.toggle("given-yes", given === true);
    page.rows.get(label.name).li.classList.toggle("given-no", given === false);
  }
  for (const [name, row] of page.rows) {
    const given = name in known ? known[name] : null;
    row.radios[given === null ? "unknown" : given ? "yes" : "no"].checked = true;
  }
  if (focused && focused !== document.activeElement && document.contains(focused)) focused.focus();
}

// ---------------------------------------------------------------------------------------- ask next
function asked() {
  return page.view ? page.view.ask.find((s) => !page.skipped.has(s.label)) : undefined;
}

function renderAsk() {
  const best = asked();
  el("ask").hidden = !page.view;
  el("ask").dataset.label = best ? best.label : "";
  for (const id of ["ask-question", "ask-yes", "ask-no", "ask-skip"]) el(id).hidden = !best;
  el("ask-done").hidden = Boolean(best);
  if (!best) {
    const left = Object.keys(page.view.predictions).length;
    el("ask-done").textContent = left
      ? "No more questions for now: answer any label below, or go to the next image (→)."
      : "Every trained label of this image is answered.";
    return;
  }
  el("ask-label").textContent = best.label;
  el("ask-why").textContent =
    best.information === null
      ? `(now ${percent(best.probability)}: the most uncertain label)`
      : `(now ${percent(best.probability)}; expected to settle ${best.information.toFixed(2)} bits of the others)`;
}

function answerAsked(value) {
  const best = asked();
  if (best) answer(best.label, value);
}

function skipAsked() {
  const best = asked();
  if (!best) return;
  page.skipped.add(best.label);
  renderAsk();
}

// ----------------------------------------------------------------------------------------- answers
function answer(label, value) {
  if (!page.view) return;
  let name;
  try {
    name = annotator();
  } catch (error) {
    say(error.message, true);
    renderLabels(); // put the control back
    return;
  }
  const image = page.view.id;
  queue = queue.then(async () => {
    try {
      const body = await post("/api/answers", { image, label, value, annotator: name });
      if (page.view && page.view.id === image) showView(body.image);
      const word = value === null ? "cleared" : value ? "yes" : "no";
      say(`${label}: ${word}, saved. ${Object.keys(body.image.predictions).length} labels re-predicted.`);
      refreshAfterAnswer();
    } catch (error) {
      say(`Not saved: ${error.message}`, true);
      if (page.view && page.view.id === image) renderLabels();
    }
  });
}

function accept() {
  if (!page.view) return;
  const image = page.view.id;
  queue = queue.then(async () => {
    try {
      const body = await post("/api/accept", { image, annotator: annotator() });
      if (page.view && page.view.id === image) showView(body.image);
      say(`Accepted ${body.answers.length} predictions, saved.`);
      refreshAfterAnswer();
    } catch (error) {
      say(`Not saved: ${error.message}`, true);
    }
  });
}

function undo() {
  queue = queue.then(async () => {
    try {
      const body = await post("/api/undo", { annotator: annotator() });
      if (!body.answer) {
        say("Nothing of yours left to undo.");
        return;
      }
      if (!page.view || page.view.id !== body.image.id) {
        if (page.view) remember(page.view.id);
        showPicture(body.image.id);
      }
      showView(body.image);
      say(`Undone: ${body.answer.label} on ${body.image.id} is ${word(body.answer.value)} again.`);
      refreshAfterAnswer();
    } catch (error) {
      say(`Could not undo: ${error.message}`, true);
    }
  });
}

function word(value) {
  return value === null ? "unknown" : value ? "yes" : "no";
}

function refreshAfterAnswer() {
  clearTimeout(listTimer);
  listTimer = setTimeout(loadList, 300);
  findNext();
}

// -------------------------------------------------------------------------------------------- images
function imageHash(id) {
  return `#image=${encodeURIComponent(id)}`;
}

function remember(id) {
  page.back.push(id);
  page.recent = [...page.recent.filter((r) => r !== id), id].slice(-RECENT);
}

async function openImage(id, { pushBack = true } = {}) {
  const previous = page.view ? page.view.id : null;
  const mine = ++openSequence; // of two quick "next"s, only the last one is shown
  try {
    const view = await api(`/api/image?id=${encodeURIComponent(id)}`);
    if (mine !== openSequence) return;
    if (pushBack && previous && previous !== id) remember(previous);
    showPicture(id);
    showView(view);
    say(`${id}: ${view.predicted.length} labels predicted, ${Object.keys(view.known).length} answered.`);
    findNext();
  } catch (error) {
    say(`Could not open ${id}: ${error.message}`, true);
  }
}

// A different image: its file, its address (#image=...), and the questions skipped start over.
function showPicture(id) {
  page.skipped.clear();
  el("picture").src = `/api/file?id=${encodeURIComponent(id)}`;
  el("picture").alt = `The image ${id}`;
  history.replaceState(null, "", imageHash(id));
}

function showView(view) {
  page.view = view;
  document.body.dataset.image = view.id;
  el("viewer").hidden = false;
  el("empty").hidden = true;
  el("accept").disabled = Object.keys(view.predictions).length === 0;
  const total = page.progress ? page.progress.total : "?";
  el("caption").textContent = `${view.id} · ${view.width} × ${view.height} · ${view.index + 1} of ${total}`;
  renderLabels();
  renderAsk();
  renderHistory();
  markCurrent();
}

function renderHistory() {
  const items = page.view.history.map((a) => {
    const li = document.createElement("li");
    const when = new Date(a.time * 1000).toLocaleTimeString();
    li.textContent = `${when} ${a.annotator}: ${a.label} ${word(a.value)} (${a.source})`;
    return li;
  });
  el("history").replaceChildren(...items);
}

async function findNext() {
  if (!page.view) return;
  const mine = ++nextSequence;
  const params = filters();
  params.set("after", page.view.id);
  for (const id of page.recent) params.append("skip", id);
  try {
    const { id } = await api(`/api/next?${params}`);
    if (mine === nextSequence) page.upcoming = id;
  } catch (error) {
    if (mine === nextSequence) page.upcoming = null;
  }
}

async function goNext() {
  if (!page.upcoming) await findNext();
  if (page.upcoming && (!page.view || page.upcoming !== page.view.id)) openImage(page.upcoming);
  else say("No other image passes the filters.");
}

function goBack() {
  const id = page.back.pop();
  if (id) openImage(id, { pushBack: false });
  else say("This is the first image you opened.");
}

// ---------------------------------------------------------------------------------------------- list
async function loadList() {
  clearTimeout(listTimer);
  const params = filters();
  params.set("limit", String(page.limit));
  try {
    const body = await api(`/api/images?${params}`);
    page.progress = body;
    const scored = body.scored < body.total ? ` · predicting ${body.scored} of ${body.total}…` : "";
    el("progress").textContent =
      `${body.answered} of ${body.total} images answered, ${body.untouched} untouched${scored}`;
    el("image-list").replaceChildren(...body.images.map(listItem));
    el("more").hidden = body.matched <= body.images.length;
    markCurrent();
    if (body.scored < body.total) listTimer = setTimeout(loadList, REFRESH_MS);
    return body;
  } catch (error) {
    say(`Could not list the images: ${error.message}`, true);
    return null;
  }
}

function listItem(entry) {
  const li = document.createElement("li");
  li.classList.toggle("answered", entry.answers > 0);
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.id = entry.id;
  button.textContent = entry.id;
  button.title = entry.error || (entry.uncertainty === null ? "" : `uncertainty ${entry.uncertainty.toFixed(2)} bits`);
  button.addEventListener("click", () => openImage(entry.id));
  const count = document.createElement("span");
  count.className = "count";
  count.textContent = entry.error ? "!" : String(entry.answers);
  count.setAttribute("aria-label", entry.error ? "unreadable" : `${entry.answers} answers`);
  li.append(button, count);
  return li;
}

function markCurrent() {
  const current = page.view ? page.view.id : null;
  for (const button of el("image-list").querySelectorAll("button")) {
    button.setAttribute("aria-current", String(button.dataset.id === current));
  }
}

// ------------------------------------------------------------------------------------------ set-up
function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  const typing = target.matches("input[type=text], select, textarea");
  const radio = target.matches("input[type=radio]");
  if (typing && event.key === "Escape") target.blur(); // back to the keys below
  if (typing || (radio && event.key.startsWith("Arrow"))) return;
  const actions = {
    y: () => answerAsked(true),
    n: () => answerAsked(false),
    s: skipAsked,
    j: goNext,
    ArrowRight: goNext,
    k: goBack,
    ArrowLeft: goBack,
    u: undo,
  };
  const action = actions[event.key];
  if (!action) return;
  event.preventDefault();
  action();
}

function wire() {
  const name = el("annotator");
  name.value = localStorage.getItem(NAME_KEY) || `annotator-${Math.random().toString(36).slice(2, 6)}`;
  localStorage.setItem(NAME_KEY, name.value);
  name.addEventListener("change", () => localStorage.setItem(NAME_KEY, name.value.trim()));
  for (const id of ["filter-show", "filter-label", "order"]) {
    el(id).addEventListener("change", () => {
      loadList();
      findNext();
    });
  }
  el("more").addEventListener("click", () => {
    page.limit += 200;
    loadList();
  });
  el("prev").addEventListener("click", goBack);
  el("next").addEventListener("click", goNext);
  el("ask-yes").addEventListener("click", () => answerAsked(true));
  el("ask-no").addEventListener("click", () => answerAsked(false));
  el("ask-skip").addEventListener("click", skipAsked);
  el("accept").addEventListener("click", accept);
  el("undo").addEventListener("click", undo);
  el("add-label").addEventListener("submit", addLabel);
  el("retrain").addEventListener("click", retrain);
  document.addEventListener("keydown", onKey);
}

async function addLabel(event) {
  event.preventDefault();
  const input = el("new-label");
  const name = input.value.trim();
  if (!name) return;
  try {
    await post("/api/labels", { name });
    input.value = "";
    await loadLabels();
    if (page.view) showView(await api(`/api/image?id=${encodeURIComponent(page.view.id)}`));
    say(`Added ${name}: unknown on every image until answered, not predicted until a retrain.`);
  } catch (error) {
    say(`Could not add ${name}: ${error.message}`, true);
  }
}

// ------------------------------------------------------------------------------------------ retrain
const RETRAIN_POLL_MS = 2000;

async function retrain() {
  try {
    await post("/api/retrain", {});
  } catch (error) {
    say(`Could not start a retrain: ${error.message}`, true);
    return;
  }
  el("retrain").disabled = true;
  watchRetrain();
}

async function watchRetrain(quiet = false) {
  let status;
  try {
    status = await api("/api/retrain");
  } catch (error) {
    say(`Retrain status unavailable: ${error.message}`, true);
    el("retrain").disabled = false;
    return;
  }
  if (status.state === "running") {
    const epoch = status.epochs ? ` (epoch ${status.epoch || 0} of ${status.epochs})` : "";
    say(`Retraining on the answers: ${status.stage}${epoch}; keep annotating.`);
    setTimeout(watchRetrain, RETRAIN_POLL_MS);
    return;
  }
  el("retrain").disabled = false;
  if (quiet) return; // the page just opened: an earlier run's outcome is old news
  if (status.state === "failed") {
    say(`Retrain failed: ${status.error}`, true);
  } else if (status.state === "done") {
    await loadLabels();
    if (page.view) showView(await api(`/api/image?id=${encodeURIComponent(page.view.id)}`));
    const learnt = status.new_labels && status.new_labels.length ? `; now predicted: ${status.new_labels.join(", ")}` : "";
    say(`Retrained in ${Math.round(status.seconds)} s, the new model is in use${learnt}.`);
  }
}

async function start() {
  try {
    await loadLabels();
  } catch (error) {
    say(`The server does not answer: ${error.message}`, true);
    return;
  }
  wire();
  watchRetrain(true); // a retrain started before a reload is followed again
  const listed = await loadList();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("image");
  const first = wanted || (listed && listed.images.length ? listed.images[0].id : null);
  if (first) await openImage(first, { pushBack: false });
  else el("empty").textContent = "No image in this library passes the filters.";
  document.body.dataset.ready = "true";
}

start();
